"""Search index figures (issue 14): exact query latency, approximate recall, dedup, index build.

    python bench/search.py --exact     # 100k × 128 exact: 1-query p50/p99, 1,000 queries; brute-force torch
    python bench/search.py --approx    # 1M × 128 IVF (--approx-kinds ivf,hnsw): recall@10, p50, build s, RAM
    python bench/search.py --dedup     # dedup of 100k: wall, CPU s, peak RSS (own subprocess)
    python bench/search.py --build     # index build vs model.encode alone; peak RSS at 1x and 4x the images
    python bench/search.py             # all four (2 free CPU cores: ~10 min)

Points are ball points as a model makes them (Gaussian clusters → clip(2.3) → expmap0, c = 0.1), 128-d.
Exact: the flat index (FAISS inner product on the Lorentz lift, float64 re-rank) against brute-force
torch in the same run (float32 pairwise hyperbolic distance + topk). Approximate: recall@10 against
the exact result. Dedup and each build run in a subprocess so their peak RSS is their own. Every
figure prints wall and CPU seconds: on a busy machine the CPU seconds are the comparable number.
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


def _timed(fn):
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - cpu


def exact(n: int, n_single: int) -> dict:
    gallery, queries = ball_points(n, 1), ball_points(1000, 2)
    corpus, build, _ = _timed(lambda: _Corpus(gallery, "poincare", C))
    semantic_search(queries[:8], corpus, top_k=10)  # warm-up (lazy gallery bounds)
    single, single_cpu = [], []
    for i in range(n_single):
        _, wall, cpu = _timed(lambda: semantic_search(queries[i:i + 1], corpus, top_k=10))
        single.append(wall)
        single_cpu.append(cpu)
    res, batch, batch_cpu = _timed(lambda: semantic_search(queries, corpus, top_k=10))
    brute_single = []
    for i in range(n_single):
        _, wall, _ = _timed(lambda: torch.topk(pairwise_distance(queries[i:i + 1], gallery, C, exact=False), 10,
                                               largest=False))
        brute_single.append(wall)
    ref, brute_batch, brute_batch_cpu = _timed(lambda: torch.cat([
        torch.topk(pairwise_distance(queries[a:a + 100], gallery, C, exact=False), 10, largest=False)[1]
        for a in range(0, 1000, 100)]))
    agree = np.mean([[h["corpus_id"] for h in r] == ref[i].tolist() for i, r in enumerate(res)])
    return {"n": n, "build_s": build, "single_p50_ms": pct(single, 50), "single_p99_ms": pct(single, 99),
            "single_cpu_p50_ms": pct(single_cpu, 50), "batch1000_s": batch, "batch1000_cpu_s": batch_cpu,
            "brute_single_p50_ms": pct(brute_single, 50), "brute_single_p99_ms": pct(brute_single, 99),
            "brute_batch1000_s": brute_batch, "brute_batch1000_cpu_s": brute_batch_cpu,
            "top10_identical_to_brute_float32": float(agree)}


def approximate(n: int, kind: str, opts: dict, n_single: int, n_queries: int = 500) -> dict:
    """Recall@10 of ``kind`` against the exact result; the exact pass runs first and is freed."""
    gallery, queries = ball_points(n, 3), ball_points(n_queries, 4)
    exact_corpus = _Corpus(gallery, "poincare", C)
    exact_ids = [[h["corpus_id"] for h in r] for r in semantic_search(queries, exact_corpus, 10)]
    del exact_corpus
    import gc

    gc.collect()
    before = current_rss_mb()
    vec = VectorIndex("poincare", C, DIM, kind, **opts)
    _, build, build_cpu = _timed(lambda: [vec.add(gallery[s:s + 100_000]) for s in range(0, n, 100_000)])
    corpus = _Corpus(gallery[:1], "poincare", C)
    corpus.emb, corpus.vectors = gallery, vec  # the approximate index over the full gallery
    got = semantic_search(queries, corpus, 10)
    recall = np.mean([len(set(a) & {h["corpus_id"] for h in b}) / 10 for a, b in zip(exact_ids, got)])
    single, single_cpu = [], []
    for i in range(n_single):
        _, wall, cpu = _timed(lambda: semantic_search(queries[i:i + 1], corpus, 10))
        single.append(wall)
        single_cpu.append(cpu)
    import faiss

    size = faiss.serialize_index(vec.faiss_index).nbytes / 2**20
    return {"n": n, "kind": kind, **opts, "build_s": build, "build_cpu_s": build_cpu, "recall@10": float(recall),
            "single_p50_ms": pct(single, 50), "single_p99_ms": pct(single, 99),
            "single_cpu_p50_ms": pct(single_cpu, 50), "index_mb": size,
            "rss_growth_mb": current_rss_mb() - before, "peak_rss_mb": rss_mb()}


def _images(folder, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(list(folder.glob("*.jpg"))), n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")


def build_child(mode: str, folder: str, n: int) -> None:
    """One measurement in a fresh process: ``encode`` (model.encode over the files) or ``build``."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_modeling import tiny_model

    from modeling_hvit.search import HViTIndex

    model = tiny_model()
    files = sorted(str(p) for p in Path(folder).glob("*.jpg"))[:n]
    base = rss_mb()
    if mode == "encode":
        _, wall, cpu = _timed(lambda: model.encode(files, batch_size=32, show_progress_bar=False))
    else:
        out = Path(tempfile.mkdtemp()) / "ix"
        _, wall, cpu = _timed(lambda: HViTIndex.build(files, out, model, batch_size=32, shard_size=1024))
    print(json.dumps({"mode": mode, "images": n, "wall_s": wall, "cpu_s": cpu, "img_per_s": n / wall,
                      "img_per_cpu_s": n / cpu, "peak_rss_mb": rss_mb(), "rss_before_mb": base}))


def build_rate(n: int, reps: int = 2) -> dict:
    """Index build vs ``model.encode`` alone on the same files (tiny random-init model: the index's own
    work is the largest possible share), alternating, each in a fresh process; then the build's peak
    RSS at n and 4n images (flat: one shard of 1,024 rows in memory at a time)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp()) / "imgs"
    _images(folder, 4 * n)

    def child(mode: str, k: int) -> dict:
        out = subprocess.run([sys.executable, __file__, "--build-child", mode, str(folder), str(k)],
                             capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-2000:]}

    runs = []
    for _ in range(reps):  # alternate, so neither side gets all the cold or the busy moments
        runs.append({"encode": child("encode", n), "build": child("build", n)})
    rate = [r["build"]["img_per_s"] / r["encode"]["img_per_s"] for r in runs]
    rate_cpu = [r["build"]["img_per_cpu_s"] / r["encode"]["img_per_cpu_s"] for r in runs]
    big = child("build", 4 * n)
    return {"images": n, "runs": runs, "build_rate_vs_encode_wall": rate, "build_rate_vs_encode_cpu": rate_cpu,
            "build_peak_rss_mb": {n: runs[-1]["build"]["peak_rss_mb"], 4 * n: big.get("peak_rss_mb")},
            "build_4n": big}


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    figures = ap.add_argument_group("figures (none given: all)")
    figures.add_argument("--exact", action="store_true", help="exact search latency on --n-exact points")
    figures.add_argument("--approx", action="store_true", help="approximate recall/latency on --n-approx points")
    figures.add_argument("--dedup", action="store_true", help="dedup of --n-dedup points")
    figures.add_argument("--build", action="store_true", help="index build rate vs encode, and its memory")
    ap.add_argument("--n-exact", type=int, default=100_000)
    ap.add_argument("--n-approx", type=int, default=1_000_000)
    ap.add_argument("--approx-kinds", default="ivf", help="comma list of ivf, hnsw")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    ap.add_argument("--nprobe", type=int, default=16, help="IVF lists searched")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--n-dedup", type=int, default=100_000)
    ap.add_argument("--n-build", type=int, default=1000, help="images for the build-rate figure (and 4x for memory)")
    ap.add_argument("--single", type=int, default=200, help="single-query repetitions")
    ap.add_argument("--dedup-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--build-child", nargs=3, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.dedup_child:
        return dedup_child(a.dedup_child)
    if a.build_child:
        return build_child(a.build_child[0], a.build_child[1], int(a.build_child[2]))
    every = not (a.exact or a.approx or a.dedup or a.build)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    if a.exact or every:
        print(json.dumps(exact(a.n_exact, a.single)), flush=True)
    if a.approx or every:
        for kind in a.approx_kinds.split(","):
            opts = {"nlist": a.nlist, "nprobe": a.nprobe} if kind == "ivf" else \
                {"hnsw_m": a.hnsw_m, "ef_search": a.ef_search}
            print(json.dumps(approximate(a.n_approx, kind, opts, a.single)), flush=True)
    if a.build or every:
        print(json.dumps(build_rate(a.n_build)), flush=True)
    if a.dedup or every:
        out = subprocess.run([sys.executable, __file__, "--dedup-child", str(a.n_dedup)], capture_output=True,
                             text=True)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)
    print(f"load average at the end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
