"""Multi-process index builds (issue 14 item 5): parts, merge, resume, and real `accelerate launch` runs.

The oracle is a one-process build of the same images: a sharded build must give the same rows in
the same order, the same embeddings (float tolerance), the same table shards and the same manifest
fingerprint, also after an interruption (an exception here, ``kill -9`` of both processes in the
slow test) and a rerun with any number of processes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modeling_hvit.search import Embedder, HViTIndex
from modeling_hvit.search.cli import index_main
from modeling_hvit.search.sharding import PARTS_DIR, Plan, adopt_parts, parts_table
from test_modeling import tiny_model
from test_search_index import write_images

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "index_build.py"


def assert_same_index(got: HViTIndex, want: HViTIndex) -> None:
    """Same ids in the same order, same embeddings, same shards, same manifest (but timestamps)."""
    assert got.ids == want.ids and got.paths == want.paths and got.labels == want.labels
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-6, rtol=1e-5)
    shards = lambda ix: sorted(p.name for p in (ix.dir / "table").iterdir())  # noqa: E731
    assert shards(got) == shards(want) and not (got.dir / PARTS_DIR).exists()
    volatile = {"created", "updated", "vector_file"}
    assert {k: v for k, v in got.manifest.items() if k not in volatile} == \
           {k: v for k, v in want.manifest.items() if k not in volatile}
    assert got.manifest["fingerprint"] == want.manifest["fingerprint"]
    assert got.manifest["vector_file"]["ntotal"] == len(want)
    torch.testing.assert_close(got.vectors.torch_matrix(), want.vectors.torch_matrix(), atol=1e-6, rtol=1e-5)
    q = want.embeddings[::3]
    assert [[h["id"] for h in r] for r in got.search(q, 4)] == [[h["id"] for h in r] for r in want.search(q, 4)]


class FailAfter:
    """An embed_fn that raises on its n-th call: an interrupted run."""

    def __init__(self, inner: Embedder, n: int):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, images):
        self.calls += 1
        if self.calls >= self.n:
            raise KeyboardInterrupt("interrupted")
        return self.inner.embed_fn(images)


def _like(inner: Embedder, fn) -> Embedder:
    return Embedder(fn, inner.geometry, inner.curvature, inner.fingerprint, inner.model_id, inner.processor)


@pytest.fixture(scope="module")
def embedder():
    return Embedder.from_model(tiny_model())


def test_sharded_path_one_process_equals_plain_build(tmp_path, embedder):
    write_images(tmp_path / "imgs", 14, bad=1)
    want = HViTIndex.build(tmp_path / "imgs", tmp_path / "one", embedder=embedder, shard_size=4, batch_size=3)
    got = HViTIndex.build(tmp_path / "imgs", tmp_path / "two", embedder=embedder, shard_size=4, batch_size=3,
                          distributed=True)
    assert got.manifest["skipped"] == want.manifest["skipped"] == 1
    assert_same_index(got, want)


@pytest.mark.parametrize("rerun", ["sharded", "sharded_gap", "one_process"])
def test_interrupted_sharded_build_resumes_in_order(tmp_path, embedder, rerun):
    paths = write_images(tmp_path / "imgs", 17)
    want = HViTIndex.build(tmp_path / "imgs", tmp_path / "one", embedder=embedder, shard_size=4, batch_size=2)
    ix = tmp_path / "ix"
    with pytest.raises(KeyboardInterrupt):  # the 5th batch: 2 of 5 chunks committed as parts
        HViTIndex.build(tmp_path / "imgs", ix, embedder=_like(embedder, FailAfter(embedder, 5)), shard_size=4,
                        batch_size=2, distributed=True)
    assert [p.name for p in parts_table(ix).shard_paths()] == ["shard-00000.arrow", "shard-00001.arrow"]
    assert not list((ix / "table").glob("shard-*.arrow"))  # nothing merged yet
    with pytest.raises(RuntimeError, match="did not finish"):
        HViTIndex.load(ix)
    if rerun == "sharded_gap":  # as when another rank finished chunk 1 but not chunk 0
        for p in (ix / PARTS_DIR).glob("shard-00000.*"):
            p.unlink()
    counting = FailAfter(embedder, 10**9)
    got = HViTIndex.build(tmp_path / "imgs", ix, embedder=_like(embedder, counting), shard_size=4, batch_size=2,
                          distributed=rerun != "one_process")
    # only the missing images were embedded again: 9 (5 batches of ≤ 2), 13 with chunk 0 removed (7)
    assert counting.calls == (7 if rerun == "sharded_gap" else 5)
    assert sorted(got.ids) == sorted(str(p.resolve()) for p in paths)  # each image exactly once
    assert_same_index(got, want)  # and in the uninterrupted order


def test_rerun_with_other_images_adopts_parts_first(tmp_path, embedder):
    paths = write_images(tmp_path / "imgs", 12)
    ix = tmp_path / "ix"
    with pytest.raises(KeyboardInterrupt):
        HViTIndex.build(paths[:8], ix, embedder=_like(embedder, FailAfter(embedder, 3)), shard_size=2,
                        batch_size=2, distributed=True)
    assert len(parts_table(ix).shard_paths()) == 2
    got = HViTIndex.build(paths, ix, embedder=embedder, shard_size=2, batch_size=2, distributed=True)
    assert sorted(got.ids) == sorted(str(p.resolve()) for p in paths) and len(got) == 12
    assert got.ids[:4] == [str(p.resolve()) for p in paths[:4]]  # the two adopted parts come first
    assert not (ix / PARTS_DIR).exists()


def test_adopt_parts_after_a_merge_cut_short(tmp_path, embedder):
    """A merge interrupted after some renames: the remaining parts follow, never overwriting a shard."""
    paths = write_images(tmp_path / "imgs", 8)
    ix = tmp_path / "ix"
    with pytest.raises(KeyboardInterrupt):
        HViTIndex.build(paths, ix, embedder=_like(embedder, FailAfter(embedder, 4)), shard_size=1, batch_size=1,
                        distributed=True)
    parts = parts_table(ix).shard_paths()
    assert len(parts) == 3
    plan = Plan(**json.loads((ix / PARTS_DIR / "plan.json").read_text()))
    first = ix / "table" / f"shard-{plan.base:05d}"  # rank 0 died after committing one part
    os.replace(parts[0].with_name("shard-00000.skipped.json"), first.with_name(first.name + ".skipped.json"))
    os.replace(parts[0], first.with_name(first.name + ".arrow"))
    assert adopt_parts(ix) == 2
    assert sorted(p.name for p in (ix / "table").glob("shard-*.arrow")) == \
           ["shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow"]
    got = HViTIndex.build(paths, ix, embedder=embedder, shard_size=1, batch_size=1)
    want = HViTIndex.build(paths, tmp_path / "one", embedder=embedder, shard_size=1, batch_size=1)
    assert_same_index(got, want)


# -- real `accelerate launch` runs --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}


def _launch_cmd(processes: int) -> list[str]:
    # HF_NOTES 15: `--cpu --num_processes 2` starts one process; ACCELERATE_USE_CPU=1 + --multi_gpu starts two
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


def _launch(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    for _ in range(2):  # a second try on a fresh port: the free port can be taken by another job meanwhile
        proc = subprocess.run([*_launch_cmd(2), *args], env=_env(tmp), cwd=tmp, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode == 0 or not any(s in proc.stderr for s in ("EADDRINUSE", "address already in use")):
            break
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 0, "\n".join(errors) + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    tiny_model().save_pretrained(root / "model")
    paths = write_images(root / "imgs", 26, bad=1)
    return root, paths


@pytest.mark.slow  # two 2-process launches (~1 min on 2 busy cores)
def test_accelerate_launch_build_and_add_equal_one_process(saved, tmp_path):
    root, paths = saved
    emb = Embedder.from_model(str(root / "model"))
    build = ["build", str(root / "imgs"), "IX", "--model", str(root / "model"), "--shard-size", "4",
             "--batch-size", "3", "--no-progress"]
    assert index_main([str(tmp_path / "one") if a == "IX" else a for a in build]) == 0  # one process
    want = HViTIndex.load(tmp_path / "one")
    out = _launch(["-m", "modeling_hvit", "index", *[str(tmp_path / "two") if a == "IX" else a for a in build]],
                  tmp_path)
    assert "26 images" in out.stdout and "embedded by 2 processes" in out.stdout, out.stdout
    assert_same_index(HViTIndex.load(tmp_path / "two"), want)

    # add: 9 images indexed by one process, the rest added by two == the same add by one process
    HViTIndex.build(paths[:9], tmp_path / "one_add", embedder=emb, shard_size=4, batch_size=3)
    HViTIndex.build(paths[:9], tmp_path / "two_add", embedder=emb, shard_size=4, batch_size=3)
    want = HViTIndex.add(tmp_path / "one_add", root / "imgs", embedder=emb, shard_size=4, batch_size=3)
    _launch(["-m", "modeling_hvit", "index", "add", str(tmp_path / "two_add"), str(root / "imgs"),
             "--shard-size", "4", "--batch-size", "3", "--no-progress"], tmp_path)
    assert_same_index(HViTIndex.load(tmp_path / "two_add"), want)


@pytest.mark.slow  # two 2-process launches, one killed with SIGKILL midway (~1 min)
def test_accelerate_launch_kill_9_then_rerun_gives_each_image_once(saved, tmp_path):
    root, paths = saved
    ix = tmp_path / "ix"
    args = [str(SCRIPT), str(root / "model"), str(root / "imgs"), str(ix)]
    parts = ix / PARTS_DIR
    for _ in range(2):  # a second try if the launch fails at once (port taken)
        proc = subprocess.Popen([*_launch_cmd(2), *args, "0.5", "build", "3"], env=_env(tmp_path), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while len(list(parts.glob("shard-*.arrow"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None:
            break
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, then both ranks (each in its own session): no cleanup
    proc.wait()
    for rank in range(2):
        os.kill(int((tmp_path / f"ix.pid-{rank}").read_text()), signal.SIGKILL)
    assert (tmp_path / "ix.world-0").read_text() == (tmp_path / "ix.world-1").read_text() == "2"
    n_parts = len(list(parts.glob("shard-*.arrow")))
    assert 3 <= n_parts < 9 and not list((ix / "table").glob("shard-*.arrow"))
    _launch([*args, "0", "build", "3"], tmp_path)
    got = HViTIndex.load(ix)
    assert sorted(got.ids) == sorted(str(p.resolve()) for p in paths)  # each image exactly once
    want = HViTIndex.build(root / "imgs", tmp_path / "one", embedder=Embedder.from_model(str(root / "model")),
                           shard_size=3, batch_size=3)
    assert_same_index(got, want)  # in the uninterrupted order
