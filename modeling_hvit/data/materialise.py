# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Turn a list of annotated image records into a checked ``datasets.DatasetDict``.

Every builder in :mod:`builders` produces :class:`Record` lists per split; :func:`materialise` checks
them all before anything is written (duplicates, missing files, unreadable or truncated images) and
raises one :class:`DataError` naming the annotation file and line, or, with ``skip_bad_images``,
drops the bad rows and warns with the count. Folders become a dataset of paths; archive members
become a cached Arrow dataset holding the image bytes.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
from datasets import ClassLabel, Features, Value
from datasets import Image as HFImage

from .sources import (
    DataError,
    Entry,
    FileTree,
    check_image,
    is_streaming_archive,
    iter_archive_members,
    read_entry,
    safe_text,
)

MAX_LISTED = 5  # problems spelled out in one error message


@dataclass(frozen=True)
class Record:
    """One image before materialisation: its path in the tree, class, hierarchy, and provenance."""

    rel: str
    label: str
    origin: str  # "annotation_file:line" (or the image's own location) for error messages
    hierarchy: str | None = None


@dataclass
class Layout:
    """What a builder found: records per split, ordered class names, optional hierarchy column."""

    tree: FileTree
    splits: dict[str, list[Record]]
    class_names: list[str]
    hierarchy_column: str | None = None
    hierarchy_names: list[str] = field(default_factory=list)


def read_table(tree: FileTree, rel: str, n_fields: int, expected: str, *, skip: int = 0) -> Iterator[tuple[str, list[str]]]:
    """Yield ``("file:line", fields)`` for each non-blank line of a whitespace-separated table."""
    if rel not in tree:
        raise DataError(f"{tree.root}: missing annotation file {rel} (expected {expected})")
    where = tree[rel].describe()
    for lineno, line in enumerate(tree.read_text(rel).splitlines(), start=1):
        if lineno <= skip or not line.strip():
            continue
        fields = line.split()
        if len(fields) != n_fields:
            raise DataError(f"{where}:{lineno}: expected {n_fields} fields ({expected}), got {len(fields)}: {line.strip()!r}")
        yield f"{where}:{lineno}", fields


def check_unique(seen: dict, key, origin: str, what: str) -> None:
    """Record ``key`` at ``origin``; a key listed twice in an index file is an error naming both lines."""
    first = seen.setdefault(key, origin)
    if first != origin:
        raise DataError(f"{origin}: duplicate {what} {key} (first listed at {first}); expected each {what} once")


def parse_int(text: str, origin: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{origin}: {what} must be an integer, got {text!r}") from None


def split_classes(names: list[str], train_fraction: float = 0.5) -> tuple[set[str], set[str]]:
    """Class-disjoint halves: the first ``floor(n · train_fraction)`` names in the given order train."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n_train = int(len(names) * train_fraction)
    if n_train == 0 or n_train == len(names):
        raise DataError(f"{len(names)} classes cannot be split into non-empty train/test halves "
                        f"(train_fraction={train_fraction})")
    return set(names[:n_train]), set(names[n_train:])


def check_disjoint(splits: dict[str, list[Record]], train: str = "train") -> None:
    """Retrieval is scored on unseen classes: a class in train and in another split is an error."""
    seen = {r.label: r for r in splits.get(train, [])}
    for name, records in splits.items():
        if name == train:
            continue
        for r in records:
            if r.label in seen:
                raise DataError(f"{r.origin}: class {r.label!r} of split {name!r} also appears in {train!r} "
                                f"({seen[r.label].origin}); expected class-disjoint splits")


def _screen(layout: Layout, verify_images: bool) -> list[tuple[Record, str]]:
    """(record, reason) for every duplicate, missing or unreadable image; records keep their order."""
    problems: list[tuple[Record, str]] = []
    first: dict[str, Record] = {}
    present: list[Record] = []
    for records in layout.splits.values():
        for r in records:
            if r.rel in first:
                problems.append((r, f"duplicate image path {r.rel!r} (first listed at {first[r.rel].origin})"))
            elif r.rel not in layout.tree:
                problems.append((r, f"image file {r.rel!r} not found under {layout.tree.root}"))
            else:
                first[r.rel] = r
                present.append(r)
    if verify_images:
        for r, reason in _check_all(layout.tree, present):
            problems.append((r, f"{layout.tree[r.rel].describe()}: {reason}"))
    return problems


def _check_all(tree: FileTree, records: list[Record]) -> Iterator[tuple[Record, str]]:
    streaming: dict[str, dict[str, Record]] = {}
    for r in records:
        entry = tree[r.rel]
        if entry.archive is not None and is_streaming_archive(entry.archive):
            streaming.setdefault(entry.archive, {})[entry.location] = r
            continue
        reason = check_image(path=entry.location) if entry.archive is None else check_image(read_entry(entry))
        if reason:
            yield r, reason
    for archive, wanted in streaming.items():
        for member, data in iter_archive_members(archive, set(wanted)):
            reason = check_image(data)
            if reason:
                yield wanted[member], reason


def materialise(layout: Layout, *, verify_images: bool = True, skip_bad_images: bool = False,
                cache_dir: str | None = None) -> datasets.DatasetDict:
    """Check every record, then build one ``Dataset`` per split with ``image``, ``label``, hierarchy."""
    problems = _screen(layout, verify_images)
    if problems:
        lines = "\n".join(f"  {r.origin}: {reason}" for r, reason in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        if not skip_bad_images:
            raise DataError(f"{len(problems)} bad image record(s) in {layout.tree.root}:\n{lines}{more}\n"
                            "(pass skip_bad_images=True to skip them)")
        warnings.warn(f"skipped {len(problems)} bad image record(s) in {layout.tree.root}:\n{lines}{more}", stacklevel=3)
    bad = {id(r) for r, _ in problems}
    features = {"image": HFImage(), "label": ClassLabel(names=_safe_names(layout, layout.class_names, "class"))}
    if layout.hierarchy_column:
        features[layout.hierarchy_column] = ClassLabel(names=_safe_names(layout, layout.hierarchy_names,
                                                                         layout.hierarchy_column))
    features = Features(features)
    out = {}
    for split, records in layout.splits.items():
        kept = [r for r in records if id(r) not in bad]
        if not kept:
            raise DataError(f"{layout.tree.root}: split {split!r} has no usable images")
        out[split] = _to_dataset(layout, kept, features, cache_dir)
    return datasets.DatasetDict(out)


def _safe_names(layout: Layout, names: list[str], what: str) -> list[str]:
    """Names as storable text (:func:`safe_text`), warning once when a name was not UTF-8."""
    safe = [safe_text(n) for n in names]
    changed = [(n, s) for n, s in zip(names, safe) if n != s]
    if changed:
        warnings.warn(f"{layout.tree.root}: {len(changed)} {what} name(s) are not valid UTF-8; stored with \\x "
                      f"escapes, e.g. {changed[0][1]!r}", stacklevel=4)
    if len(set(safe)) != len(safe):
        dup = next(s for s in safe if safe.count(s) > 1)
        raise DataError(f"{layout.tree.root}: two {what} names both read {dup!r} once non-UTF-8 bytes are escaped")
    return safe


def _columns(layout: Layout, r: Record) -> dict:
    row = {"label": safe_text(r.label)}
    if layout.hierarchy_column:
        row[layout.hierarchy_column] = None if r.hierarchy is None else safe_text(r.hierarchy)
    return row


def _stored_path(entry: Entry) -> str | dict:
    """A folder image as stored: its path, or its bytes when the path is not UTF-8 (Arrow cannot hold it)."""
    safe = safe_text(entry.location)
    return entry.location if safe == entry.location else {"path": safe, "bytes": read_entry(entry)}


def _to_dataset(layout: Layout, records: list[Record], features: Features, cache_dir: str | None) -> datasets.Dataset:
    entries = [layout.tree[r.rel] for r in records]
    if all(e.archive is None for e in entries):  # a folder: store paths, nothing to copy
        cols: dict[str, list] = {"image": [_stored_path(e) for e in entries]}
        for r in records:
            for k, v in _columns(layout, r).items():
                cols.setdefault(k, []).append(v)
        return datasets.Dataset.from_dict(cols, features=features)
    rows = [(r.rel, e.archive, e.location, _columns(layout, r)) for r, e in zip(records, entries)]
    digest = hashlib.sha256(repr((features, rows)).encode())
    for archive in sorted({e.archive for e in entries if e.archive}):
        st = os.stat(archive)
        digest.update(f"{archive}:{st.st_size}:{st.st_mtime_ns}".encode())
    with_index = Features({**features, "_index": Value("int64")})
    ds = datasets.Dataset.from_generator(_generate, features=with_index, cache_dir=cache_dir,
                                         gen_kwargs={"rows": tuple(rows)}, fingerprint=digest.hexdigest()[:32])
    index = list(ds.with_format(None)["_index"])
    if index != list(range(len(rows))):  # streamed archives yield in stored order: restore ours
        position = [0] * len(index)
        for pos, i in enumerate(index):
            position[i] = pos
        ds = ds.select(position)
    return ds.remove_columns("_index")


def _generate(rows: tuple[tuple, ...]):  # a tuple: from_generator would shard a list
    """Rows for ``Dataset.from_generator``; compressed tars are read in one sequential pass."""
    streamed: dict[str, dict[str, int]] = {}
    for i, (rel, archive, location, cols) in enumerate(rows):
        if archive is not None and is_streaming_archive(archive):
            streamed.setdefault(archive, {})[location] = i
            continue
        if archive is None:
            stored = _stored_path(Entry(location))
            image = stored if isinstance(stored, dict) else {"path": stored, "bytes": None}
        else:
            image = {"path": safe_text(rel), "bytes": read_entry(Entry(location, archive))}
        yield {"image": image, **cols, "_index": i}
    for archive, wanted in streamed.items():
        for member, data in iter_archive_members(archive, set(wanted)):
            i = wanted[member]
            yield {"image": {"path": safe_text(rows[i][0]), "bytes": data}, **rows[i][3], "_index": i}
