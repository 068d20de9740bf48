"""Search index: build/add/resume (real kill -9), lock, fingerprint refusals, damaged files, bad input."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_hvit.search import (Embedder, HViTIndex, IndexFileError, IndexLockedError, IndexMismatchError,
                                  UnreadableImage)
from modeling_hvit.search.store import writer_lock
from modeling_hvit.search.vectors import faiss_available
from test_modeling import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, n: int, seed: int = 0, bad: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"class{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    for j in range(bad):
        (folder / f"broken{j}.png").write_bytes(b"not a png")
    return paths


def forward_embeddings(model, paths):
    """Independent path: the model's saved evaluation preprocessing and forward, one image at a time."""
    from modeling_hvit.data.transforms import preprocess

    with torch.no_grad():
        return torch.cat([model(preprocess([Image.open(p).convert("RGB")], model)).embeddings for p in paths])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_build_contents_manifest_and_skips(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 10, bad=2)
    index = HViTIndex.build(tmp_path / "imgs", tmp_path / "ix", model, shard_size=4, batch_size=3,
                            labels_from_folders=True)
    m = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert m["count"] == 10 and m["skipped"] == 2 and m["complete"]
    assert sorted(Path(s["path"]).name for s in m["skipped_items"]) == ["broken0.png", "broken1.png"]
    assert m["geometry"] == "poincare" and m["curvature"] == pytest.approx(0.1) and m["dim"] == 16
    assert set(m["fingerprint"]) == {"weights", "config", "processor"} and m["processor"]["image_size"] == 32
    assert m["index"]["kind"] == "flat" and m["hvit_version"]
    if faiss_available():
        assert m["vector_file"]["ntotal"] == 10 and (tmp_path / "ix" / "vectors.faiss").exists()
    assert sorted(index.ids) == sorted(str(p.resolve()) for p in paths)
    assert set(index.table.column_names) >= {"id", "path", "label", "embedding"}
    assert index.labels[index.ids.index(str(paths[4].resolve()))] == "class1"
    order = [index.ids.index(str(p.resolve())) for p in paths]
    torch.testing.assert_close(index.embeddings[order], forward_embeddings(model, paths), atol=1e-5, rtol=1e-4)
    hits = index.search(paths[5], k=3, model=model)[0]
    assert hits[0]["path"] == str(paths[5].resolve()) and hits[0]["distance"] < 1e-3


def test_add_after_build_equals_single_build(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 12)
    one = HViTIndex.build(tmp_path / "imgs", tmp_path / "one", model, shard_size=5)
    HViTIndex.build(paths[:7], tmp_path / "two", model, shard_size=5)
    two = HViTIndex.add(tmp_path / "two", tmp_path / "imgs", model, shard_size=5)  # first 7 already there
    assert len(two) == 12 and len(set(two.ids)) == 12
    a = dict(zip(one.ids, one.embeddings))
    for i, e in zip(two.ids, two.embeddings):
        torch.testing.assert_close(e, a[i], atol=1e-5, rtol=1e-4)
    q = one.embeddings[:4]
    assert [[one.ids[h["corpus_id"]] for h in r] for r in one.search(q, 5)] == \
           [[two.ids[h["corpus_id"]] for h in r] for r in two.search(q, 5)]


SLOW_BUILD = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_modeling import tiny_model
    from modeling_hvit.search import Embedder, HViTIndex
    inner = Embedder.from_model(tiny_model())
    def slow(images):
        time.sleep(float(sys.argv[3]))
        return inner.embed_fn(images)
    emb = Embedder(slow, inner.geometry, inner.curvature, inner.fingerprint, "tiny", inner.processor)
    HViTIndex.{method}({args}, embedder=emb, shard_size=3, batch_size=3)
    print("done")
""")


def _script(tmp_path, method: str) -> Path:
    args = "sys.argv[1], sys.argv[2]" if method == "build" else "sys.argv[2], sys.argv[1]"
    path = tmp_path / f"{method}.py"
    path.write_text(SLOW_BUILD.format(tests=str(ROOT / "tests"), method=method, args=args))
    return path


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.slow  # ~30 s: two interpreters start
@pytest.mark.parametrize("method", ["build", "add"])
def test_kill_9_then_rerun_gives_every_image_once(tmp_path, model, method):
    paths = write_images(tmp_path / "imgs", 18)
    ix = tmp_path / "ix"
    if method == "add":  # an existing index of 3 images, then an interrupted add of the rest
        HViTIndex.build(paths[:3], ix, embedder=_tiny_embedder(model), shard_size=3)
    script = _script(tmp_path, method)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "imgs"), str(ix), "0.4"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = ix / "table"
    deadline = time.time() + 120
    while len(list(shards.glob("shard-*.arrow"))) < (3 if method == "add" else 2) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    n_before = len(list(shards.glob("shard-*.arrow")))
    assert 2 <= n_before < 7
    with pytest.raises(RuntimeError, match="did not finish"):
        HViTIndex.load(ix)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "imgs"), str(ix), "0"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    index = HViTIndex.load(ix)
    assert sorted(index.ids) == sorted(str(p.resolve()) for p in paths)  # each exactly once
    assert len(index) == 18 and index.manifest["count"] == 18
    order = [index.ids.index(str(p.resolve())) for p in paths]
    torch.testing.assert_close(index.embeddings[order], forward_embeddings(model, paths), atol=1e-5, rtol=1e-4)
    assert not list(shards.glob("*.tmp"))


def _tiny_embedder(model):
    inner = Embedder.from_model(model)
    return Embedder(inner.embed_fn, inner.geometry, inner.curvature, inner.fingerprint, "tiny", inner.processor)


@pytest.mark.slow  # ~30 s: an interpreter starts
def test_concurrent_add_one_writer_wins(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 9)
    ix = tmp_path / "ix"
    HViTIndex.build(paths[:3], ix, embedder=_tiny_embedder(model))
    script = _script(tmp_path, "add")
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path / "imgs"), str(ix), "2"], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((ix / "table").glob("shard-00001.arrow")) and time.time() < deadline:
        time.sleep(0.05)  # the first writer is now inside its lock
    with pytest.raises(IndexLockedError, match="another process"):  # this process is the second writer
        HViTIndex.add(ix, tmp_path / "imgs", embedder=_tiny_embedder(model))
    assert first.poll() is None  # the refusal happened while the first writer was still running
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    index = HViTIndex.load(ix)
    assert sorted(index.ids) == sorted(str(p.resolve()) for p in paths)
    with writer_lock(ix), pytest.raises(IndexLockedError, match="another process"):  # same process, 2nd handle
        HViTIndex.add(ix, paths, embedder=_tiny_embedder(model))


def test_refuses_other_model_geometry_curvature(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 4)
    HViTIndex.build(paths, tmp_path / "ix", model)
    index = HViTIndex.load(tmp_path / "ix")
    torch.manual_seed(1)
    other = tiny_model()
    with torch.no_grad():
        other.head.weight.add_(0.01)
    with pytest.raises(IndexMismatchError, match="different weights"):
        HViTIndex.add(tmp_path / "ix", paths, other)
    with pytest.raises(IndexMismatchError, match="different weights"):
        index.search(paths[0], model=other)
    with pytest.raises(IndexMismatchError, match="curvature=0.1.*curvature=0.2"):
        index.search(paths[0], model=tiny_model(curvature=0.2))
    with pytest.raises(IndexMismatchError, match="geometry='poincare'.*'sphere'"):
        HViTIndex.load(tmp_path / "ix", embedder=Embedder.from_model(tiny_model(geometry="sphere")))
    emb = Embedder.from_model(model)
    emb.processor = {**emb.processor, "image_size": 64}
    emb.fingerprint = {**emb.fingerprint, "processor": "x"}
    with pytest.raises(IndexMismatchError, match="different image preprocessing"):
        HViTIndex.add(tmp_path / "ix", paths, embedder=emb)
    assert len(HViTIndex.load(tmp_path / "ix")) == 4  # nothing changed


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_damaged_files_give_clear_errors(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 6)
    HViTIndex.build(paths[:3], tmp_path / "other", model)
    HViTIndex.build(paths, tmp_path / "ix", model)
    vec = tmp_path / "ix" / "vectors.faiss"
    data = vec.read_bytes()
    vec.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        HViTIndex.load(tmp_path / "ix")
    vec.write_bytes((tmp_path / "other" / "vectors.faiss").read_bytes()[: len(data)].ljust(len(data), b"\0"))
    with pytest.raises(IndexFileError, match="foreign"):
        HViTIndex.load(tmp_path / "ix")
    vec.unlink()  # a rerun of add rebuilds a missing/damaged vector file from the table
    fixed = HViTIndex.add(tmp_path / "ix", paths, model)
    assert len(fixed) == 6 and HViTIndex.load(tmp_path / "ix").vectors.ntotal == 6
    (tmp_path / "ix" / "manifest.json").write_text("{\"format\": \"something-else\"}")
    with pytest.raises(ValueError, match="not an hvit index manifest"):
        HViTIndex.load(tmp_path / "ix")
    with pytest.raises(FileNotFoundError, match="not an hvit index"):
        HViTIndex.load(tmp_path / "imgs")
    shard = next((tmp_path / "other" / "table").glob("shard-*.arrow"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable Arrow shard"):
        HViTIndex.load(tmp_path / "other")


def test_bad_queries_and_empty_index(tmp_path, model):
    paths = write_images(tmp_path / "imgs", 3)
    index = HViTIndex.build(paths, tmp_path / "ix", model)
    broken = tmp_path / "q.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UnreadableImage, match="q.jpg"):
        index.search([paths[0], broken], model=model)
    with pytest.warns(UserWarning, match="larger than the index"):
        assert len(index.search(paths[0], k=50, model=model)[0]) == 3
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing: no images to index"):
        HViTIndex.build(tmp_path / "nothing", tmp_path / "ix0", model)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    empty = HViTIndex.build(tmp_path / "bad", tmp_path / "empty", model)
    assert len(empty) == 0 and empty.manifest["skipped"] == 1
    with pytest.raises(ValueError, match="the index is empty"):
        HViTIndex.load(tmp_path / "empty").search(paths[0], model=model)


@pytest.mark.parametrize("geometry", ["sphere", "euclidean"])
def test_other_geometries_build_and_search(tmp_path, geometry):
    m = tiny_model(geometry=geometry)
    paths = write_images(tmp_path / "imgs", 6)
    index = HViTIndex.build(paths, tmp_path / "ix", m)
    assert index.manifest["geometry"] == geometry and index.manifest["curvature"] is None
    hits = HViTIndex.load(tmp_path / "ix").search(paths[2], k=2, model=m)[0]
    assert hits[0]["path"] == str(paths[2].resolve())


def test_export_parquet_lifted_vectors_rank_by_inner_product(tmp_path, model):
    import pyarrow.parquet as pq

    from modeling_hvit.search.scoring import features
    from test_search_query import brute_distances

    paths = write_images(tmp_path / "imgs", 8)
    index = HViTIndex.build(paths, tmp_path / "ix", model)
    table = pq.read_table(index.export_parquet(tmp_path / "v.parquet"))
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)
    assert table.column("id").to_pylist() == index.ids and vectors.shape == (8, 17)
    q = features(index.embeddings[:3].double(), "poincare", 0.1, "query").numpy()
    ref = brute_distances(index.embeddings[:3].numpy(), index.embeddings.numpy(), "poincare")
    assert (np.argsort(-(q @ vectors.T), 1) == np.argsort(ref, 1)).all()


def _pixels_embed(scale: float):
    """embed_fn for tests: 16 of each image's pixels, centred (distinct random points per image)."""
    def embed(images):
        return torch.tensor(np.stack([np.asarray(im, dtype=np.float32).reshape(-1)[:16] / 255 - 0.5
                                      for im in images]) * scale)
    return embed


@pytest.mark.parametrize("geometry", ["poincare", "sphere", "euclidean"])
def test_cli_export_parquet_ranks_by_inner_product_like_the_distance(tmp_path, geometry):
    import pyarrow.parquet as pq

    from modeling_hvit.search.cli import index_main
    from modeling_hvit.search.scoring import features
    from test_search_query import brute_distances

    paths = write_images(tmp_path / "imgs", 30)
    index = HViTIndex.build(paths, tmp_path / "ix", embed_fn=_pixels_embed(0.5), geometry=geometry,
                            curvature=0.1 if geometry == "poincare" else None)
    assert index_main(["export", str(tmp_path / "ix"), str(tmp_path / "v.parquet")]) == 0
    assert index_main(["export", str(tmp_path / "ix"), str(tmp_path / "raw.parquet"), "--raw"]) == 0
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column_names == ["id", "path", "label", "vector"] and table.column("id").to_pylist() == index.ids
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)
    raw = np.asarray(pq.read_table(tmp_path / "raw.parquet").column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(raw, index.embeddings.numpy())
    q = index.embeddings[:6]
    qf = features(q.double(), geometry, index.curvature, "query").numpy()
    want = np.argsort(brute_distances(q.numpy(), raw, geometry), 1, kind="stable")
    assert (np.argsort(-(qf @ vectors.T), 1, kind="stable") == want).all()
