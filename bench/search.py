"""Search index figures (issue 14): exact query latency, approximate recall, dedup time and memory.

    python bench/search.py                 # 100k exact, 200k approximate, 100k dedup (2 CPU cores: ~5 min)
    python bench/search.py --n-approx 1000000

Points are ball points as a model makes them (Gaussian clusters → clip(2.3) → expmap0, c = 0.1), 128-d.
Exact: the flat index (FAISS inner product on the Lorentz lift, float64 re-rank) against brute-force
torch in the same run (float32 pairwise hyperbolic distance + topk). Approximate: recall@10 against
the exact result. Dedup runs in a subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from modeling_hvit.hyperbolic import clip_features, expmap0, pairwise_distance
from modeling_hvit.search.query import _Corpus, semantic_search
from modeling_hvit.search.vectors import VectorIndex

C, DIM = 0.1, 128


def ball_points(n: int, seed: int, n_clusters: int = 1000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, DIM, generator=torch.Generator().manual_seed(0)) * 0.3
    out = []
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        z = centers[torch.randint(0, n_clusters, (m,), generator=g)] + 0.15 * torch.randn(m, DIM, generator=g)
        out.append(expmap0(clip_features(z, 2.3), C))
    return torch.cat(out)


def pct(xs, p):
    return float(np.percentile(np.asarray(xs) * 1e3, p))


def rss_mb() -> float:
    """Peak RSS of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def exact(n: int, n_single: int) -> dict:
    gallery, queries = ball_points(n, 1), ball_points(1000, 2)
    t = time.perf_counter()
    corpus = _Corpus(gallery, "poincare", C)
    build = time.perf_counter() - t
    single = []
    for i in range(n_single):
        t = time.perf_counter()
        semantic_search(queries[i:i + 1], corpus, top_k=10)
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    res = semantic_search(queries, corpus, top_k=10)
    batch = time.perf_counter() - t
    brute_single = []
    for i in range(n_single):
        t = time.perf_counter()
        torch.topk(pairwise_distance(queries[i:i + 1], gallery, C, exact=False), 10, largest=False)
        brute_single.append(time.perf_counter() - t)
    t = time.perf_counter()
    ref = torch.cat([torch.topk(pairwise_distance(queries[a:a + 100], gallery, C, exact=False), 10, largest=False)[1]
                     for a in range(0, 1000, 100)])
    brute_batch = time.perf_counter() - t
    agree = np.mean([[h["corpus_id"] for h in r] == ref[i].tolist() for i, r in enumerate(res)])
    return {"n": n, "build_s": build, "single_p50_ms": pct(single, 50), "single_p99_ms": pct(single, 99),
            "batch1000_s": batch, "brute_single_p50_ms": pct(brute_single, 50),
            "brute_single_p99_ms": pct(brute_single, 99), "brute_batch1000_s": brute_batch,
            "top10_identical_to_brute_float32": float(agree)}


def approximate(n: int, kind: str, opts: dict, n_single: int) -> dict:
    gallery, queries = ball_points(n, 3), ball_points(500, 4)
    exact_ids = [[h["corpus_id"] for h in r] for r in semantic_search(queries, _Corpus(gallery, "poincare", C), 10)]
    before = current_rss_mb()
    t = time.perf_counter()
    vec = VectorIndex("poincare", C, DIM, kind, **opts)
    for s in range(0, n, 100_000):
        vec.add(gallery[s:s + 100_000])
    build = time.perf_counter() - t
    corpus = _Corpus(gallery[:1], "poincare", C)
    corpus.emb, corpus.vectors = gallery, vec  # the approximate index over the full gallery
    got = semantic_search(queries, corpus, 10)
    recall = np.mean([len(set(a) & {h["corpus_id"] for h in b}) / 10 for a, b in zip(exact_ids, got)])
    single = []
    for i in range(n_single):
        t = time.perf_counter()
        semantic_search(queries[i:i + 1], corpus, 10)
        single.append(time.perf_counter() - t)
    import faiss

    size = faiss.serialize_index(vec.faiss_index).nbytes / 2**20
    return {"n": n, "kind": kind, **opts, "build_s": build, "recall@10": float(recall),
            "single_p50_ms": pct(single, 50), "single_p99_ms": pct(single, 99), "index_mb": size,
            "rss_growth_mb": current_rss_mb() - before}


def build_rate(n: int) -> dict:
    """Index build vs the embedding step alone (decode + forward), same images, tiny random model."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_modeling import tiny_model

    from modeling_hvit.search import Embedder, HViTIndex
    from modeling_hvit.search.sources import items_from

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp / f"{i:05d}.jpg")
    emb = Embedder.from_model(tiny_model())
    items = items_from(tmp)
    out = {"images": n}
    for rep in range(2):  # alternate, so neither side gets all the cold or the busy moments
        t, cpu = time.perf_counter(), time.process_time()
        for b in range(0, n, 32):
            emb.embed_items(items[b:b + 32])
        alone, alone_cpu = time.perf_counter() - t, time.process_time() - cpu
        t, cpu = time.perf_counter(), time.process_time()
        HViTIndex.build(tmp, tmp / f"ix{rep}", embedder=emb, batch_size=32, shard_size=256)
        build, build_cpu = time.perf_counter() - t, time.process_time() - cpu
        out[f"run{rep}"] = {"embed_alone_img_s": n / alone, "index_build_img_s": n / build,
                            "build_rate_vs_embed_wall": alone / build, "build_rate_vs_embed_cpu": alone_cpu / build_cpu}
    return out


def dedup_child(n: int) -> None:
    from modeling_hvit.search.dedup import duplicate_mining

    x = ball_points(n, 5)
    x[n - 1000:] = x[:1000] + 1e-4 * torch.randn(1000, DIM)  # 1,000 planted duplicates
    base = rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    rep = duplicate_mining(x, 0.01, geometry="poincare", curvature=C)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    planted = {(i, n - 1000 + i) for i in range(1000)}
    found = {(a, b) for _, a, b in rep.pairs}
    print(json.dumps({"n": n, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb(), "rss_before_mb": base,
                      "pairs": len(rep.pairs), "planted_found": len(planted & found) / len(planted)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-exact", type=int, default=100_000)
    ap.add_argument("--n-approx", type=int, default=200_000)
    ap.add_argument("--n-dedup", type=int, default=100_000)
    ap.add_argument("--n-build", type=int, default=2000, help="images for the build-rate figure")
    ap.add_argument("--single", type=int, default=200, help="single-query repetitions")
    ap.add_argument("--skip", default="", help="comma list of exact,approx,build,dedup to skip")
    ap.add_argument("--dedup-child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.dedup_child:
        return dedup_child(a.dedup_child)
    skip = set(a.skip.split(","))
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    if "exact" not in skip:
        print(json.dumps(exact(a.n_exact, a.single)), flush=True)
    if "approx" not in skip:
        print(json.dumps(approximate(a.n_approx, "ivf", {"nlist": 1024, "nprobe": 48}, a.single)), flush=True)
        print(json.dumps(approximate(a.n_approx, "hnsw", {"hnsw_m": 16, "ef_search": 64}, a.single)), flush=True)
    if "build" not in skip:
        print(json.dumps(build_rate(a.n_build)), flush=True)
    if "dedup" not in skip:
        out = subprocess.run([sys.executable, __file__, "--dedup-child", str(a.n_dedup)], capture_output=True,
                             text=True)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
