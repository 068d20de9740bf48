"""The Gradio app and the Space's app.py, served locally and queried through gradio_client: the
neighbours, distances and duplicate groups it returns are the Python API's on the same index."""

import os
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

try:
    import gradio  # noqa: F401
    import gradio_client
except ImportError:  # the README's test install includes the `app` extra; CI must test the app
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("gradio / gradio_client not installed (pip install -e '.[app]')", allow_module_level=True)

from modeling_hvit.search import Embedder, HViTIndex, duplicate_mining  # noqa: E402
from modeling_hvit.search.app import build_demo  # noqa: E402
from test_modeling import tiny_model  # noqa: E402


def app_images(folder: Path, n: int = 8, copies: int = 4, seed: int = 0) -> list[Path]:
    """``n`` random smooth colour images, and edited copies (resized, JPEG q60) of the first ``copies``:
    planted near-duplicates, so the duplicate groups change along the threshold."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        im = Image.fromarray((rng.random((6, 6, 3)) * 255).astype("uint8")).resize((48, 48), Image.BILINEAR)
        paths.append(folder / f"img{i}.png")
        im.save(paths[-1])
        if i < copies:
            paths.append(folder / f"img{i}_copy.jpg")
            im.resize((40, 40)).save(paths[-1], quality=60)
    return paths


def build_app_index(root: Path) -> tuple[Path, Path, list[Path]]:
    """(index folder, model folder, image paths): a tiny random-init model over ``app_images``."""
    paths = app_images(root / "imgs")
    model_dir = root / "model"
    tiny_model().save_pretrained(model_dir)
    HViTIndex.build(root / "imgs", root / "ix", str(model_dir))
    return root / "ix", model_dir, paths


def launch(demo):
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    return gradio_client.Client(demo.local_url, verbose=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    index_dir, model_dir, paths = build_app_index(root)
    demo = build_demo(index_dir)  # the model recorded in the manifest
    client = launch(demo)
    embedder = Embedder.from_model(str(model_dir))
    yield client, HViTIndex.load(index_dir, embedder=embedder), embedder, paths, root
    demo.close()


def small(picture) -> np.ndarray:
    with Image.open(picture) as im:
        return np.asarray(im.convert("RGB").resize((12, 12), Image.BILINEAR), dtype=np.float64)


def assert_search_matches_api(client, index, embedder, query: Path, k: int, pictures: Path | None = None):
    """``/search`` returns the API's neighbours and exact distances; each gallery tile shows the
    neighbour's picture (read from ``pictures``, the images folder, when given)."""
    gallery, table = client.predict(gradio_client.handle_file(str(query)), k, api_name="/search")
    expected = index.search(str(query), k, embedder=embedder)[0]
    assert len(expected) == k
    assert table["headers"] == ["rank", "distance", "id", "label", "path"]
    assert [row[0] for row in table["data"]] == list(range(1, k + 1))
    assert [row[2] for row in table["data"]] == [h["id"] for h in expected]
    assert [row[1] for row in table["data"]] == [h["distance"] for h in expected]  # exact: the same floats
    assert [g["caption"] for g in gallery] == [f"d = {h['distance']:.4f}" for h in expected]
    for g, h in zip(gallery, expected):  # the tile is a thumbnail of that neighbour (lossy WebP: close, not equal)
        picture = pictures / Path(h["path"]).name if pictures else h["path"]
        assert np.abs(small(g["image"]) - small(picture)).mean() < 6, h["id"]


def test_search_returns_the_api_neighbours_and_distances(served):
    client, index, embedder, paths, root = served
    assert_search_matches_api(client, index, embedder, paths[0], 5)  # an indexed image: itself first
    outside = root / "outside.png"  # a new picture (not in the index): an edit of an indexed one
    with Image.open(paths[5]) as im:
        im.rotate(10).save(outside)
    assert_search_matches_api(client, index, embedder, outside, len(index))  # k = the whole index


def test_duplicate_slider_gives_the_api_groups(served):
    client, index, _, _, _ = served
    nn = np.unique(duplicate_mining(index, 0.0).nn_distance)
    thresholds = [0.0, *((nn[1:] + nn[:-1]) / 2), float(nn.max())]  # between consecutive nearest-neighbour distances
    seen = set()
    for t in thresholds:
        tiles, summary, table = client.predict(float(t), api_name="/duplicates")
        got = [row[2].split(" ") for row in table["data"]]
        want = [[index.ids[m] for m in g] for g in duplicate_mining(index, float(t)).groups]
        assert got == want, t
        assert [row[1] for row in table["data"]] == [len(g) for g in want]
        assert len(tiles) == len(want) and summary.startswith(f"**{len(want)} groups**")
        seen.add(tuple(map(tuple, got)))
    assert len(seen) >= 4  # the slider changes the groups: none, the planted pairs one by one, merged ones


def test_search_rejects_a_missing_image_and_out_of_range_k(served):
    client = served[0]
    with pytest.raises(Exception, match="Upload or pick an image"):
        client.predict(None, 3, api_name="/search")
    with pytest.raises(Exception, match="greater than maximum value 12"):  # k beyond the slider (the index size)
        client.predict(gradio_client.handle_file(str(served[3][0])), 99, api_name="/search")


def test_space_app_py_imports_and_serves(served, monkeypatch):
    _, index, embedder, paths, root = served
    moved = root / "space" / "images"  # the pictures beside the Space (mirrored: tiles must come from here)
    moved.mkdir(parents=True)
    for p in paths:
        with Image.open(p) as im:
            im.transpose(Image.FLIP_LEFT_RIGHT).save(moved / p.name)
    monkeypatch.setenv("HVIT_INDEX", str(root / "ix"))
    monkeypatch.setenv("HVIT_IMAGES", str(moved))
    monkeypatch.delenv("HVIT_MODEL", raising=False)
    demo = runpy.run_path(str(ROOT / "app.py"))["demo"]  # what a Space runs (`python app.py` → demo.launch())
    client = launch(demo)
    try:
        assert_search_matches_api(client, index, embedder, paths[2], 3, pictures=moved)
    finally:
        demo.close()


def test_a_model_folder_that_is_not_here_is_named(served, tmp_path):
    import json
    import shutil

    index_dir = shutil.copytree(served[4] / "ix", tmp_path / "ix")
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["model_id"] = str(tmp_path / "gone" / "model")  # built on another machine
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"gone/model, which is not here: give the model"):
        build_demo(index_dir)
    build_demo(index_dir, str(served[4] / "model"))  # given: it opens


def test_space_app_py_names_a_missing_index(tmp_path, monkeypatch):
    monkeypatch.setenv("HVIT_INDEX", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope is not a folder: not an hvit index"):
        runpy.run_path(str(ROOT / "app.py"))
