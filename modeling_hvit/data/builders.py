# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Dataset builders for the retrieval benchmarks, with class-disjoint splits (SPEC §6).

``build_dataset(name, data_dir)`` is the one entry point: ``cub``, ``cars``, ``sop``, ``inshop``,
``omniglot``, ``caltech101``, ``folder``, ``hub:<org/name>`` and ``demo``. Each returns a
``datasets.DatasetDict`` (``train``/``test``; In-Shop ``train``/``query``/``gallery``) with columns
``image`` (``datasets.Image``), ``label`` (``ClassLabel`` over the classes of *all* splits, so label
ids are globally unique and the splits' label sets are disjoint) and, where the source has one, a
hierarchy column: ``superclass`` (SOP, demo), ``category`` (In-Shop), ``alphabet`` (Omniglot).

``data_dir`` may be the extracted folder, a folder holding the official archives, or the archive
itself. Annotation errors (wrong field count, unknown class id, a key listed twice in an index file,
missing annotation file, wrong archive) always raise a :class:`DataError` naming the file and line;
missing, duplicate, corrupt or truncated images raise too, unless ``skip_bad_images=True`` (then they
are skipped with a warning).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import datasets

from .materialise import (
    Layout,
    Record,
    check_disjoint,
    check_unique,
    materialise,
    parse_int,
    read_table,
    split_classes,
)
from .sources import (
    IMAGE_SUFFIXES,
    DataError,
    FileTree,
    check_image,
    close_archives,
)
from .names import canonical_dataset_name

__all__ = ["DATASETS", "DataError", "build_dataset"]


def build_cub(tree: FileTree, train_fraction: float = 0.5) -> Layout:
    """CUB-200-2011: classes 1–100 train, 101–200 test, by class id from the annotation files."""
    what = "CUB-200-2011: CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/}"
    root = tree.find("image_class_labels.txt", what)
    classes: dict[int, str] = {}
    seen: dict[int, str] = {}
    for origin, (cid, name) in read_table(tree, root + "classes.txt", 2, "class_id class_name"):
        cid = parse_int(cid, origin, "class_id")
        check_unique(seen, cid, origin, "class_id")
        classes[cid] = name
    paths: dict[int, tuple[str, str]] = {}
    seen_images: dict[int, str] = {}
    for origin, (iid, path) in read_table(tree, root + "images.txt", 2, "image_id relative_path"):
        iid = parse_int(iid, origin, "image_id")
        check_unique(seen_images, iid, origin, "image_id")
        paths[iid] = (path, origin)
    if root + "train_test_split.txt" in tree:  # the per-image split (unused: the protocol splits by class)
        seen = {}
        for origin, (iid, _) in read_table(tree, root + "train_test_split.txt", 2, "image_id is_training_image"):
            check_unique(seen, parse_int(iid, origin, "image_id"), origin, "image_id")
    ids = sorted(classes)
    train, _ = split_classes(ids, train_fraction)
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    seen = {}
    for origin, (iid, cid) in read_table(tree, root + "image_class_labels.txt", 2, "image_id class_id"):
        iid, cid = parse_int(iid, origin, "image_id"), parse_int(cid, origin, "class_id")
        check_unique(seen, iid, origin, "image_id")
        if cid not in classes:
            raise DataError(f"{origin}: class id {cid} out of range (expected one of classes.txt, {ids[0]}..{ids[-1]})")
        if iid not in paths:
            raise DataError(f"{origin}: image id {iid} is not listed in images.txt")
        path, _ = paths.pop(iid)
        splits["train" if cid in train else "test"].append(Record(root + "images/" + path, classes[cid], origin))
    if paths:
        iid, (path, origin) = next(iter(paths.items()))
        raise DataError(f"{origin}: image id {iid} ({path}) has no line in image_class_labels.txt")
    return Layout(tree, splits, [classes[i] for i in ids])


def build_cars(tree: FileTree, train_fraction: float = 0.5) -> Layout:
    """Cars-196 over all 16,185 images of ``cars_annos.mat``: classes 1–98 train, 99–196 test."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("Cars-196 needs scipy to read cars_annos.mat: pip install scipy") from None
    root = tree.find("cars_annos.mat", "Cars-196: cars_annos.mat + car_ims/")
    where = tree[root + "cars_annos.mat"].describe()
    try:
        mat = loadmat(io.BytesIO(tree.read_bytes(root + "cars_annos.mat")), squeeze_me=True)
        annotations, class_names = mat["annotations"], [str(n) for n in mat["class_names"]]
        paths, labels = annotations["relative_im_path"], annotations["class"]
    except Exception as err:
        raise DataError(f"{where}: expected a MATLAB file with 'annotations' (relative_im_path, class) and "
                        f"'class_names' ({type(err).__name__}: {err})") from None
    ids = list(range(1, len(class_names) + 1))
    train, _ = split_classes(ids, train_fraction)
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    seen: dict[str, str] = {}
    names_seen: dict[str, str] = {}
    for k, name in enumerate(class_names):
        check_unique(names_seen, name, f"{where}: class_names[{k}]", "class name")
    for k, (path, cid) in enumerate(zip(paths, labels)):
        origin = f"{where}: annotations[{k}]"
        check_unique(seen, str(path), origin, "relative_im_path")
        cid = int(cid)
        if not 1 <= cid <= len(class_names):
            raise DataError(f"{origin}: class {cid} out of range (expected 1..{len(class_names)})")
        splits["train" if cid in train else "test"].append(Record(root + str(path), class_names[cid - 1], origin))
    return Layout(tree, splits, class_names)


def build_sop(tree: FileTree) -> Layout:
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt``, super-class as hierarchy."""
    root = tree.find("Ebay_train.txt", "Stanford Online Products: Ebay_train.txt, Ebay_test.txt + <super>_final/")
    fields = "image_id class_id super_class_id path"
    splits: dict[str, list[Record]] = {}
    supers: dict[int, str] = {}
    class_ids: set[int] = set()
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        splits[split] = []
        seen: dict[int, str] = {}
        for origin, (iid, cid, sid, path) in read_table(tree, root + name, 4, fields, skip=1):
            check_unique(seen, parse_int(iid, origin, "image_id"), origin, "image_id")
            cid, sid = parse_int(cid, origin, "class_id"), parse_int(sid, origin, "super_class_id")
            sname = path.split("/")[0].removesuffix("_final")
            if supers.setdefault(sid, sname) != sname:
                raise DataError(f"{origin}: super_class_id {sid} is {supers[sid]!r} elsewhere but the path says {sname!r}")
            class_ids.add(cid)
            splits[split].append(Record(root + path, str(cid), origin, sname))
    check_disjoint(splits)
    names = [supers[s] for s in sorted(supers)]
    return Layout(tree, splits, [str(c) for c in sorted(class_ids)], "superclass", names)


def build_inshop(tree: FileTree) -> Layout:
    """In-Shop: ``Eval/list_eval_partition.txt`` → train / query / gallery; category as hierarchy."""
    root = tree.find("Eval/list_eval_partition.txt", "In-Shop: Eval/list_eval_partition.txt + Img/img/...")
    rel = root + "Eval/list_eval_partition.txt"
    splits: dict[str, list[Record]] = {"train": [], "query": [], "gallery": []}
    items: set[str] = set()
    categories: set[str] = set()
    seen: dict[str, str] = {}
    for origin, fields in read_table(tree, rel, 3, "image_name item_id evaluation_status", skip=2):
        name, item, status = fields
        check_unique(seen, name, origin, "image_name")
        if status not in splits:
            raise DataError(f"{origin}: evaluation_status {status!r}, expected train, query or gallery")
        parts = name.split("/")
        if len(parts) < 4:
            raise DataError(f"{origin}: image_name {name!r}, expected img/<gender>/<category>/<item>/<file>")
        category = "/".join(parts[1:-2])
        items.add(item)
        categories.add(category)
        splits[status].append(Record(root + "Img/" + name, item, origin, category))
    header = tree.read_text(rel).splitlines()[:1]
    count = parse_int(header[0].strip(), f"{tree[rel].describe()}:1", "image count") if header else 0
    if count != sum(map(len, splits.values())):
        listed = sum(map(len, splits.values()))
        raise DataError(f"{tree[rel].describe()}:1: declares {count} images but lists {listed} (truncated file?)")
    check_disjoint({"train": splits["train"], "eval": splits["query"] + splits["gallery"]})
    return Layout(tree, splits, sorted(items), "category", sorted(categories))


def _class_folders(tree: FileTree, prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """``class → [relative image paths]`` for ``<prefix><class>/<image>``; other files are ignored."""
    classes: dict[str, list[str]] = {}
    for rel in tree.entries:
        if not rel.startswith(prefix):
            continue
        parts = rel[len(prefix):].split("/")
        if len(parts) != 2 or parts[0] in exclude or parts[1].startswith("."):
            continue
        if parts[1].lower().endswith(IMAGE_SUFFIXES):
            classes.setdefault(parts[0], []).append(rel)
    return {c: sorted(v) for c, v in sorted(classes.items())}


def _folder_split(tree: FileTree, prefix: str, train_fraction: float, exclude: tuple[str, ...] = (),
                  hierarchy: Callable[[str], str] | None = None) -> Layout:
    classes = _class_folders(tree, prefix, exclude)
    if not classes:
        raise DataError(f"{tree.root}: no images in a <class>/<image> layout under {prefix or '.'!r}")
    train, _ = split_classes(list(classes), train_fraction)
    splits: dict[str, list[Record]] = {"train": [], "test": []}
    for name, rels in classes.items():
        for rel in rels:
            hier = hierarchy(name) if hierarchy else None
            splits["train" if name in train else "test"].append(Record(rel, name, tree[rel].describe(), hier))
    return Layout(tree, splits, list(classes))


def build_caltech101(tree: FileTree, train_fraction: float = 0.5) -> Layout:
    """Caltech-101: 101 classes (no ``BACKGROUND_Google``); the first half of the sorted names train."""
    dirs = {rel.split("101_ObjectCategories/")[0] for rel in tree.entries if "101_ObjectCategories/" in rel}
    if not dirs:
        raise DataError(f"{tree.root}: no 101_ObjectCategories/ folder (expected the Caltech-101 folder or tar)")
    return _folder_split(tree, min(dirs, key=len) + "101_ObjectCategories/", train_fraction, ("BACKGROUND_Google",))


def build_omniglot(tree: FileTree) -> Layout:
    """Omniglot: ``images_background`` (964 characters) train, ``images_evaluation`` (659) test."""
    splits: dict[str, list[Record]] = {}
    alphabets: set[str] = set()
    names: list[str] = []
    for split, top in (("train", "images_background/"), ("test", "images_evaluation/")):
        prefixes = {rel.split(top)[0] for rel in tree.entries if rel.startswith(top) or "/" + top in rel}
        if not prefixes:
            raise DataError(f"{tree.root}: no {top} (expected images_background.zip and "
                            "images_evaluation.zip or their folders)")
        prefix = min(prefixes, key=len) + top
        chars: dict[str, list[str]] = {}
        for rel in tree.entries:
            if rel.startswith(prefix) and rel.lower().endswith(".png"):
                parts = rel[len(prefix):].split("/")
                if len(parts) != 3:
                    raise DataError(f"{tree[rel].describe()}: expected {top}<alphabet>/<character>/<image>.png")
                chars.setdefault(f"{parts[0]}/{parts[1]}", []).append(rel)
        splits[split] = [Record(rel, c, tree[rel].describe(), c.split("/")[0])
                         for c in sorted(chars) for rel in sorted(chars[c])]
        alphabets.update(c.split("/")[0] for c in chars)
        names += sorted(chars)
    check_disjoint(splits)
    return Layout(tree, splits, names, "alphabet", sorted(alphabets))


def build_folder(tree: FileTree, split_rule: str = "half", train_fraction: float = 0.5) -> Layout:
    """Any ``<class>/<image>`` folder or archive (a single wrapping folder is descended into).

    ``split_rule="half"``: the first ``floor(n · train_fraction)`` sorted class names train, the
    rest test. ``"given"``: ``train/<class>/…`` and ``test/<class>/…`` as provided (checked disjoint).
    """
    if split_rule == "given":
        splits = {}
        names: list[str] = []
        for split in ("train", "test"):
            classes = _class_folders(tree, split + "/")
            if not classes:
                raise DataError(f"{tree.root}: split_rule='given' expects {split}/<class>/<image>")
            splits[split] = [Record(rel, c, tree[rel].describe()) for c, rels in classes.items() for rel in rels]
            names += [c for c in classes if c not in names]
        check_disjoint(splits)
        return Layout(tree, splits, names)
    if split_rule != "half":
        raise ValueError(f"split_rule must be 'half' or 'given', got {split_rule!r}")
    prefix = ""
    while not _class_folders(tree, prefix):
        below = [rel[len(prefix):] for rel in tree.entries if rel.startswith(prefix)]
        tops = {rest.split("/")[0] for rest in below if "/" in rest}
        if len(tops) != 1:
            break
        prefix += tops.pop() + "/"
    return _folder_split(tree, prefix, train_fraction)


def build_hub(repo: str, *, hub_config: str | None = None, source_split: str | None = None,
              image_column: str = "image", label_column: str = "label", hierarchy_column: str | None = None,
              split_rule: str = "half", train_fraction: float = 0.5, verify_images: bool = False,
              skip_bad_images: bool = False, cache_dir: str | None = None) -> datasets.DatasetDict:
    """A Hub (or local ``load_dataset``-able) dataset, renamed to ``image``/``label`` and split by class.

    ``split_rule="half"``: all rows of ``source_split`` (default: every split, concatenated) are split
    by sorted label id; ``"given"``: its ``train`` and ``test`` splits are kept (checked disjoint).
    """
    loaded = datasets.load_dataset(repo, hub_config, cache_dir=cache_dir)
    parts = [loaded[source_split]] if source_split else [loaded[s] for s in loaded]
    for ds in parts:
        for col in (image_column, label_column, hierarchy_column):
            if col and col not in ds.column_names:
                raise DataError(f"{repo}: no column {col!r} (columns: {ds.column_names})")
    keep = [c for c in (image_column, label_column, hierarchy_column) if c]
    parts = [ds.select_columns(keep) for ds in parts]
    rename = {image_column: "image", label_column: "label"}
    parts = [ds.rename_columns({k: v for k, v in rename.items() if k != v}) for ds in parts]
    parts = [ds.cast_column("image", datasets.Image()) for ds in parts]
    if not isinstance(parts[0].features["label"], datasets.ClassLabel):  # ints or strings → ClassLabel
        values = {str(v) for ds in parts for v in ds.with_format(None)["label"]}
        names = sorted(values, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))
        parts = [ds.cast_column("label", datasets.Value("string")).cast_column("label", datasets.ClassLabel(names=names))
                 for ds in parts]
    if split_rule == "given":
        if source_split or not {"train", "test"} <= set(loaded):
            raise DataError(f"{repo}: split_rule='given' needs the dataset's own train and test splits (has {list(loaded)})")
        names = list(loaded)
        out = datasets.DatasetDict({s: parts[names.index(s)] for s in ("train", "test")})
        if set(out["train"].with_format(None)["label"]) & set(out["test"].with_format(None)["label"]):
            raise DataError(f"{repo}: split_rule='given' but its train and test splits share classes")
    elif split_rule == "half":
        full = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        labels = list(full.with_format(None)["label"])
        train, _ = split_classes(sorted(set(labels)), train_fraction)
        idx = {"train": [i for i, y in enumerate(labels) if y in train],
               "test": [i for i, y in enumerate(labels) if y not in train]}
        out = datasets.DatasetDict({k: full.select(v) for k, v in idx.items()})
    else:
        raise ValueError(f"split_rule must be 'half' or 'given', got {split_rule!r}")
    if verify_images:
        out = _verify_hub(repo, out, skip_bad_images)
    return out


def _verify_hub(repo: str, dsd: datasets.DatasetDict, skip: bool) -> datasets.DatasetDict:
    out = {}
    for split, ds in dsd.items():
        raw = ds.cast_column("image", datasets.Image(decode=False)).with_format(None)["image"]
        bad = [(i, r) for i, v in enumerate(raw) if (r := check_image(v.get("bytes"), v.get("path")))]
        if bad and not skip:
            raise DataError(f"{repo} [{split}] row {bad[0][0]}: {bad[0][1]} ({len(bad)} bad image(s); "
                            "pass skip_bad_images=True to skip them)")
        if bad:
            warnings.warn(f"{repo} [{split}]: skipped {len(bad)} bad image(s), first row {bad[0][0]}: {bad[0][1]}",
                          stacklevel=3)
            drop = {i for i, _ in bad}
            ds = ds.select([i for i in range(len(ds)) if i not in drop])
        out[split] = ds
    return datasets.DatasetDict(out)


DATASETS = {
    "cub": build_cub, "cars": build_cars, "sop": build_sop, "inshop": build_inshop,
    "omniglot": build_omniglot, "caltech101": build_caltech101, "folder": build_folder,
}


def build_dataset(name: str, data_dir: str | None = None, *, verify_images: bool = True,
                  skip_bad_images: bool = False, split_rule: str = "half", train_fraction: float = 0.5,
                  image_column: str = "image", label_column: str = "label", hierarchy_column: str | None = None,
                  hub_config: str | None = None, source_split: str | None = None, cache_dir: str | None = None,
                  demo_kwargs: dict | None = None) -> datasets.DatasetDict:
    """Build a class-disjoint ``DatasetDict`` by name (see the module docstring for the names).

    ``train_fraction`` applies to the datasets split by class order (CUB, Cars, Caltech-101, folder,
    hub with ``split_rule='half'``); SOP, In-Shop and Omniglot use their official partitions.
    """
    key = name.lower()
    if key.startswith("hub:"):
        return build_hub(name[4:], hub_config=hub_config, source_split=source_split, image_column=image_column,
                         label_column=label_column, hierarchy_column=hierarchy_column, split_rule=split_rule,
                         train_fraction=train_fraction, verify_images=verify_images,
                         skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    if key == "demo":
        from .demo import build_demo_dataset
        return build_demo_dataset(**(demo_kwargs or {}))
    key = canonical_dataset_name(key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}, 'demo' or 'hub:<org/name>'")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs data_dir (the extracted folder or the official archive)")
    tree = FileTree(data_dir)
    try:
        builder = DATASETS[key]
        if key == "folder":
            layout = builder(tree, split_rule=split_rule, train_fraction=train_fraction)
        elif key in ("cub", "cars", "caltech101"):
            layout = builder(tree, train_fraction=train_fraction)
        else:
            layout = builder(tree)
        return materialise(layout, verify_images=verify_images, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    finally:
        close_archives()
