# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Command lines ``hvit index build|add``, ``hvit search`` and ``hvit dedup``: parse and print only.

Each ``*_main(argv)`` returns an exit status (0 ok, 2 a refused input, with a one-line error).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["dedup_main", "dedup_parser", "index_main", "index_parser", "search_main", "search_parser"]

_KNOWN_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError, OSError)


def _model_arg(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="HViT model: local directory or Hub id" +
                   ("" if required else " (default: the one recorded in the index manifest)"))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--labels-from-folders", action="store_true", help="Store each image's parent folder as its label.")
    g.add_argument("--split", default=None, help="Dataset split (datasets only; default test, else the first).")
    g.add_argument("--image-column", default="image", help="Dataset image column.")
    g.add_argument("--label-column", default="label", help="Dataset label column (stored when present).")
    g.add_argument("--batch-size", type=int, default=32, help="Images per forward pass.")
    g.add_argument("--shard-size", type=int, default=1024,
                   help="Images per committed shard (an interrupted run resumes from the last shard).")
    g.add_argument("--no-progress", action="store_true", help="No progress bar.")


def index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit index", description="Build or extend a persistent image index.")
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", allow_abbrev=False, help="Embed images into a new index (resumes an interrupted build).")
    b.add_argument("source", help="Folder, .txt file list, image, hub:org/name or a saved dataset folder.")
    b.add_argument("index", help="Index folder to create.")
    _model_arg(b, required=True)
    v = b.add_argument_group("vector index")
    v.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf", "ivfpq"],
                   help="flat: exact (default); hnsw / ivf / ivfpq: approximate, for large galleries.")
    v.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4·√n).")
    v.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default nlist/16, ≥ 8).")
    v.add_argument("--pq-m", type=int, default=16, help="IVF-PQ sub-quantizers.")
    v.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node.")
    v.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth.")
    _source_args(b)
    a = sub.add_parser("add", allow_abbrev=False, help="Append new images to an index (ids already present are skipped).")
    a.add_argument("index", help="Existing index folder.")
    a.add_argument("source", help="Folder, .txt file list, image, hub:org/name or a saved dataset folder.")
    _model_arg(a, required=False)
    _source_args(a)
    e = sub.add_parser("export", allow_abbrev=False, help="Write the vectors as Parquet (id, path, label, vector) for a vector database.")
    e.add_argument("index", help="Index folder.")
    e.add_argument("output", help="Parquet file to write.")
    e.add_argument("--raw", action="store_true", help="The embeddings as stored (ball points for poincare) "
                   "instead of the lifted gallery vectors that rank by inner product.")
    return p


def _model_for(args, index_dir: str | None):
    """The --model argument, else the model id recorded in the index manifest."""
    from .store import Manifest

    model = args.model
    if model is None and index_dir is not None:
        model = Manifest.read(index_dir).get("model_id")
        if not model:
            raise ValueError(f"{index_dir}: the manifest records no model id; pass --model")
    from .embedder import Embedder

    device = args.device
    if device is None and _world_size() > 1:  # accelerate launch: each process on its own device
        from .sharding import ProcessGroup

        device = ProcessGroup().device
    return Embedder.from_model(model, device=device)


def _world_size() -> int:
    from .sharding import launched_world_size

    return launched_world_size()


def _run(parser: argparse.ArgumentParser, fn, args) -> int:
    try:
        return fn(args) or 0
    except _KNOWN_ERRORS as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


def _index(args) -> int:
    from .index import HViTIndex

    if args.action == "export":
        index = HViTIndex.load(args.index)
        path = index.export_parquet(args.output, lifted=not args.raw)
        what = "embeddings" if args.raw else (f"gallery vectors ({index.geometry}; search them by inner product "
                                              "with scoring.features(q, side='query'))")
        print(f"{path}: {len(index)} rows of {what}")
        return 0
    kw = dict(batch_size=args.batch_size, shard_size=args.shard_size, progress=not args.no_progress,
              labels_from_folders=args.labels_from_folders, split=args.split, image_column=args.image_column,
              label_column=args.label_column)
    if args.action == "build":
        opts = {"nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m, "hnsw_m": args.hnsw_m,
                "ef_search": args.ef_search}
        index = HViTIndex.build(args.source, args.index, embedder=_model_for(args, None), kind=args.kind,
                                index_options={k: v for k, v in opts.items() if v is not None}, **kw)
    else:
        index = HViTIndex.add(args.index, args.source, embedder=_model_for(args, args.index), **kw)
    m = index.manifest
    world = _world_size()
    from .sharding import process_rank

    if world > 1 and process_rank() != 0:
        return 0  # rank 0 reports
    print(f"{args.index}: {m['count']} images ({m['index']['kind']}, {m['geometry']}"
          f"{'' if m.get('curvature') is None else ', c=' + str(m['curvature'])}); {m['skipped']} skipped"
          f"{f'; embedded by {world} processes' if world > 1 else ''}")
    for s in m.get("skipped_items", [])[:20]:
        print(f"  skipped: {s['reason']}")
    return 0


def index_main(argv: Sequence[str] | None = None) -> int:
    parser = index_parser()
    return _run(parser, _index, parser.parse_args(argv))


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit search", description="Nearest neighbours of query images in an index.")
    p.add_argument("index", help="Index folder (hvit index build).")
    p.add_argument("queries", nargs="+", help="Query images or folders of images.")
    _model_arg(p, required=False)
    p.add_argument("-k", "--top-k", type=int, default=10, help="Neighbours per query (clamped to the index size).")
    p.add_argument("--max-distance", type=float, default=None,
                   help="Range search instead: every image within this distance.")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["table", "json", "csv"], default="table", help="Printed result format.")
    o.add_argument("--output", default=None, help="Write the results here instead of printing them.")
    o.add_argument("--sheet", default=None, help="Write a PNG contact sheet (query, then neighbours).")
    o.add_argument("--html", default=None, help="Write an HTML page with thumbnails.")
    o.add_argument("--link-images", action="store_true", help="HTML links images by relative path (default: embeds thumbnails).")
    return p


def _search(args) -> int:
    from .index import HViTIndex
    from .query import format_hits
    from .sources import items_from

    embedder = _model_for(args, args.index)
    index = HViTIndex.load(args.index, embedder=embedder)
    queries = []
    for q in args.queries:
        if Path(q).is_dir():
            found = [it.path for it in items_from(q)]
            if not found:
                raise ValueError(f"{q}: no images in this folder")
            queries += found
        elif not Path(q).exists():
            raise FileNotFoundError(f"{q}: no such query image")
        else:
            queries.append(q)
    if args.max_distance is not None:
        results = index.range_search(queries, args.max_distance, embedder=embedder)
    else:
        results = index.search(queries, args.top_k, embedder=embedder)
    text = format_hits(results, args.format, queries)
    if args.output:
        Path(args.output).write_text(text + ("" if text.endswith("\n") else "\n"))
    else:
        print(text)
    if args.sheet or args.html:
        from .report import contact_sheet, html_page, rows_from_search

        rows = rows_from_search(queries, results, index)
        if args.sheet:
            contact_sheet(rows, args.sheet)
        if args.html:
            html_page(rows, args.html, embed=not args.link_images)
    return 0


def search_main(argv: Sequence[str] | None = None) -> int:
    parser = search_parser()
    return _run(parser, _search, parser.parse_args(argv))


def dedup_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit dedup", description="Groups of near-duplicate images in an index "
                                "(connected components of the pairs within the threshold).")
    p.add_argument("index", help="Index folder (hvit index build).")
    t = p.add_argument_group("threshold (without one: print the nearest-neighbour distance histogram)")
    t.add_argument("--threshold", type=float, default=None, help="Pairs within this distance are duplicates.")
    t.add_argument("--calibrate", action="store_true", help="Choose the threshold from synthetic edits "
                   "(resize, JPEG, crop) of a sample of the indexed images; needs the model.")
    t.add_argument("--pairs", default=None, help="Choose it from labelled pairs instead: a CSV with columns "
                   "a,b,duplicate (index ids or paths; duplicate 1/0).")
    t.add_argument("--recall", type=float, default=0.99, help="Fraction of known duplicates the threshold must catch.")
    t.add_argument("--sample", type=int, default=200, help="Images to edit for --calibrate.")
    _model_arg(p, required=False)
    o = p.add_argument_group("output")
    o.add_argument("--csv", default=None, help="Write the groups here (one row per member).")
    o.add_argument("--sheet", default=None, help="Write a PNG contact sheet, one line per group.")
    o.add_argument("--html", default=None, help="Write an HTML page of the groups.")
    o.add_argument("--max-groups", type=int, default=50, help="Groups drawn in the sheet / page.")
    o.add_argument("--bins", type=int, default=20, help="Histogram bins.")
    return p


def _labelled_pair_distances(index, path: str):
    from .scoring import distance

    where = {k: i for i, k in enumerate(index.ids)}
    where.update({p: i for i, p in enumerate(index.paths) if p})
    dup, non = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                a, b, flag = where[row["a"]], where[row["b"]], row["duplicate"].strip()
            except KeyError as err:
                raise ValueError(f"{path}:{line}: {err} is not a column or not in the index "
                                 "(expected columns a,b,duplicate with ids or paths of indexed images)") from None
            d = float(distance(index.embeddings[a], index.embeddings[b], index.geometry, index.curvature))
            (dup if flag in ("1", "true", "True", "yes") else non).append(d)
    return dup, non


def _dedup(args) -> int:
    from .calibrate import calibrate_from_edits, calibrate_from_pairs
    from .dedup import distance_histogram, duplicate_mining, format_histogram, write_groups_csv
    from .index import HViTIndex
    from .sources import Item

    index = HViTIndex.load(args.index)
    threshold = args.threshold
    if args.pairs:
        cal = calibrate_from_pairs(*_labelled_pair_distances(index, args.pairs), recall=args.recall)
        print(cal.summary())
        threshold = cal.threshold
    elif args.calibrate:
        embedder = _model_for(args, args.index)
        from .index import check_compatible

        check_compatible(index.manifest, embedder, args.index)
        items = [Item(id=i, path=p) for i, p in zip(index.ids, index.paths) if p]
        cal = calibrate_from_edits(embedder, items, recall=args.recall, sample=args.sample)
        print(cal.summary())
        threshold = cal.threshold
    report = duplicate_mining(index, threshold if threshold is not None else 0.0)
    counts, edges = distance_histogram(report.nn_distance, args.bins)
    print("nearest-neighbour distances (images per bin):")
    print(format_histogram(counts, edges, threshold=threshold))
    if threshold is None:
        print("no --threshold, --calibrate or --pairs: choose a threshold from the histogram above")
        return 0
    n_dup = sum(len(g) for g in report.groups)
    print(f"threshold {threshold:.6g}: {len(report.pairs)} pairs, {len(report.groups)} groups "
          f"(connected components), {n_dup} images of {len(index)}")
    if args.csv:
        write_groups_csv(report, args.csv, index)
    if args.sheet or args.html:
        from .report import contact_sheet, html_page, rows_from_groups

        rows = rows_from_groups(report.groups[: args.max_groups], index)
        if rows and args.sheet:
            contact_sheet(rows, args.sheet)
        if rows and args.html:
            html_page(rows, args.html, title="hvit near-duplicate groups")
    if args.csv is None:
        print(json.dumps([[index.ids[i] for i in g] for g in report.groups[:20]], indent=1))
    return 0


def dedup_main(argv: Sequence[str] | None = None) -> int:
    parser = dedup_parser()
    return _run(parser, _dedup, parser.parse_args(argv))


if __name__ == "__main__":  # python -m modeling_hvit.search.cli {index|search|dedup} ...
    commands = {"index": index_main, "search": search_main, "dedup": dedup_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m modeling_hvit.search.cli {{{','.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
