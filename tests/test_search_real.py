"""Search on real images (Caltech-101 JPEGs from ../shared/data): exact search equals brute force on
real embeddings, and planted edited copies are found at the threshold calibrated on other images.
The model is a tiny random-init HViT (no trained weights offline): what is tested is the index,
not the quality of the features."""

import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import real_data
from modeling_hvit.search import Embedder, HViTIndex, calibrate_from_edits, duplicate_mining
from modeling_hvit.search.calibrate import SYNTHETIC_EDITS
from test_modeling import tiny_model
from test_search_query import brute_distances


def caltech_jpegs(dest, per_class: int = 4, n_classes: int = 40) -> list:
    tar = real_data("caltech101", "101_ObjectCategories.tar")
    out, counts = [], {}
    with tarfile.open(tar) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or not m.name.endswith(".jpg") or "BACKGROUND" in m.name:
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class or (cls not in counts and len(counts) >= n_classes):
                continue
            counts[cls] = counts.get(cls, 0) + 1
            p = dest / cls / parts[-1]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(tf.extractfile(m).read())
            out.append(p)
    return out


@pytest.mark.slow
def test_real_images_exact_search_and_planted_duplicates(tmp_path):
    files = caltech_jpegs(tmp_path / "imgs")
    assert len(files) >= 100
    model = tiny_model()
    embedder = Embedder.from_model(model)
    calib, held_out = files[: len(files) // 2], files[len(files) // 2:]
    cal = calibrate_from_edits(embedder, calib, sample=len(calib), recall=0.99)
    assert cal.recall >= 0.99
    copies = []
    for i, p in enumerate(held_out[:60]):  # one edited copy each, edits in rotation
        name, edit = list(SYNTHETIC_EDITS.items())[i % len(SYNTHETIC_EDITS)]
        q = tmp_path / "copies" / f"{p.parent.name}_{p.stem}__{name}.png"  # stems repeat across classes
        q.parent.mkdir(exist_ok=True)
        edit(Image.open(p).convert("RGB")).save(q)
        copies.append((p, q))
    index = HViTIndex.build(held_out + [q for _, q in copies], tmp_path / "ix", embedder=embedder,
                            labels_from_folders=True)
    # exact search on real embeddings equals float64 brute force
    emb = index.embeddings.numpy()
    ref = brute_distances(emb[:40], emb, "poincare")
    for r, hits in enumerate(index.search(index.embeddings[:40], 10)):
        assert [h["corpus_id"] for h in hits] == np.lexsort((np.arange(len(emb)), ref[r]))[:10].tolist()
    # planted duplicates at the calibrated threshold
    rep = duplicate_mining(index, cal.threshold)
    assert all(d <= cal.threshold for d, _, _ in rep.pairs)
    where = {p: i for i, p in enumerate(index.paths)}
    group_of = {m: g for g, members in enumerate(rep.groups) for m in members}
    found = [group_of.get(where[str(p.resolve())], -1) == group_of.get(where[str(q.resolve())], -2) for p, q in copies]
    assert np.mean(found) >= 0.95, (np.mean(found), cal.summary())
