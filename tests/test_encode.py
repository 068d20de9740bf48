# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`HViTModel.encode` against the evaluation's own embedding, the pipeline and the plain forward."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import BLOCK_HVIT_IMPORT
from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.data import build_dataset
from modeling_hvit.encoding import EncodeResult, ImageReadError
from modeling_hvit.errors import UserError
from modeling_hvit.evaluation import embed_dataset
from modeling_hvit.data.transforms import EvalTransform, normalization_from_processor, transforms_for_model, with_image_transform

TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8}
N, BATCH = 24, 8


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model, its reload, the first N demo test images and their PNG files."""
    root = tmp_path_factory.mktemp("encode")
    torch.manual_seed(0)
    HViTModel(HViTConfig(backbone_config=TINY_VIT, embedding_dim=16, curvature=0.1)).save_pretrained(root / "model")
    model = HViTModel.from_pretrained(root / "model").eval()
    ds = build_dataset("demo")["test"].select(range(N))
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, image in enumerate(ds["image"]):  # lossless PNG: the same pixels as the dataset's images
        path = folder / ("sub" if i % 2 else "") / f"{i:03d}.png"
        image.save(path)
        paths.append(str(path))
    return model, root / "model", ds, paths, folder


def _evaluation(model, ds):
    """What eval_hvit.py computes for these images: its transform and `embed_dataset`."""
    tf = transforms_for_model(model, "demo")[1]
    emb, enc, _ = embed_dataset(model, with_image_transform(ds, tf), BATCH, "cpu")
    return emb, enc


@pytest.fixture(scope="module")
def evaluation(saved):
    return _evaluation(saved[0], saved[2])


def _check_equal(result: EncodeResult, evaluation):
    emb, enc = evaluation
    assert result.embeddings.dtype == result.encoder_embeddings.dtype == torch.float32
    assert torch.equal(result.embeddings, emb) and torch.equal(result.encoder_embeddings, enc)


def test_encode_dataset_pil_and_paths_bit_equal_to_evaluation(saved, evaluation):
    model, _, ds, paths, _ = saved
    out = model.encode(ds, batch_size=BATCH, output="both", device="cpu")
    _check_equal(out, evaluation)
    assert out.ids == list(range(N)) and out.skipped == []
    _check_equal(model.encode(list(ds["image"]), batch_size=BATCH, output="both", device="cpu"), evaluation)
    out = model.encode(paths, batch_size=BATCH, output="both", device="cpu", num_workers=2)
    _check_equal(out, evaluation)
    assert out.ids == paths
    path_ds = datasets.Dataset.from_dict({"file": paths})  # a column of path strings
    _check_equal(model.encode(path_ds, image_column="file", batch_size=BATCH, output="both"), evaluation)


def test_encode_folder_is_recursive_and_sorted(saved):
    model, _, ds, paths, folder = saved
    (folder / "notes.txt").write_text("not an image")  # other files are ignored in a folder
    (folder / ".hidden.png").write_bytes(b"")
    out = model.encode(str(folder), batch_size=BATCH, output="both")
    order = sorted(range(N), key=lambda i: paths[i])
    assert out.ids == [paths[i] for i in order]
    _check_equal(out, _evaluation(model, ds.select(order)))  # same batches as the evaluation's


def test_outputs_match_the_forward_pass_and_pipeline(saved):
    model, model_dir, ds, _, _ = saved
    images = list(ds["image"])[:6]
    mean, std = normalization_from_processor(model.image_processor)
    pixels = torch.stack([EvalTransform(32, mean, std)(im) for im in images])
    with torch.no_grad():
        ref = model(pixel_values=pixels)
    enc_only = model.encode(images, batch_size=6, output="encoder")
    assert enc_only.embeddings is None and torch.equal(enc_only.encoder_embeddings, ref.encoder_embeddings)
    head = model.encode(images, batch_size=6)
    assert head.encoder_embeddings is None and torch.equal(head.embeddings, ref.embeddings)

    pipe = pipeline("image-feature-extraction", model=str(model_dir), device="cpu")
    head_pipe = torch.tensor(pipe(images, return_tensors=False)).reshape(6, -1)
    enc_pipe = torch.tensor(pipe(images, pool=True)).reshape(6, -1)
    torch.testing.assert_close(head_pipe, head.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc_pipe, enc_only.encoder_embeddings, atol=1e-5, rtol=1e-4)


def test_reduced_precision_keeps_the_head_fp32(saved):
    model, _, ds, _, _ = saved
    images = list(ds["image"])[:4]
    full = model.encode(images)
    half = model.encode(images, precision="bf16")
    assert half.embeddings.dtype == torch.float32
    assert not torch.equal(half.embeddings, full.embeddings)  # the encoder really ran in bf16
    torch.testing.assert_close(half.embeddings, full.embeddings, atol=0.05, rtol=0.05)
    norms = half.embeddings.norm(dim=1)
    assert bool((norms < 1 / 0.1 ** 0.5).all())  # still inside the ball of curvature 0.1


def test_bad_inputs(saved, tmp_path):
    model, _, ds, paths, _ = saved
    folder = tmp_path / "mixed"
    folder.mkdir()
    ds[0]["image"].save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds[1]["image"].save(folder / "c.png")
    with pytest.raises(ImageReadError, match=r"b\.jpg: cannot read the image"):
        model.encode(folder)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 3, first .*b\.jpg"):
        out = model.encode(folder, skip_bad=True, output="both")
    assert out.ids == [str(folder / "a.png"), str(folder / "c.png")]
    assert [s[0] for s in out.skipped] == [str(folder / "b.jpg")] and out.embeddings.shape == (2, 16)
    reference = model.encode([folder / "a.png", folder / "c.png"], output="both")
    assert torch.equal(out.embeddings, reference.embeddings)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files in this folder"):
        model.encode(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match=r"notes\.txt: cannot read the image \(UnidentifiedImageError"):
        model.encode(str(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match="missing.png: no such file or folder"):
        model.encode(str(tmp_path / "missing.png"))
    with pytest.raises(ImageReadError, match="missing.png"):  # inside a list: a per-image failure
        model.encode([paths[0], str(tmp_path / "missing.png")])
    with pytest.raises(UserError, match="input #1 is a int"):
        model.encode([paths[0], 3])
    with pytest.raises(UserError, match="output must be one of"):
        model.encode(paths, output="logits")
    empty = model.encode([], output="both")
    assert empty.embeddings.shape == (0, 16) and empty.encoder_embeddings.shape == (0, 32) and len(empty) == 0


def test_bad_row_of_a_dataset_is_named(saved, tmp_path):
    model, _, _, paths, _ = saved
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = datasets.Dataset.from_dict({"image": [paths[0], str(bad)]}).cast_column("image", datasets.Image())
    with pytest.raises(ImageReadError, match=r"dataset row 1 \(.*bad\.png\)"):
        model.encode(ds)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert model.encode(ds, skip_bad=True).ids == [0]


REMOTE_SCRIPT = BLOCK_HVIT_IMPORT + textwrap.dedent("""
    from PIL import Image
    from transformers import AutoModel, pipeline
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    image = Image.new("RGB", (40, 32), (200, 10, 10))
    feats = pipeline("image-feature-extraction", model=model, image_processor=sys.argv[1])(image, pool=True)
    assert len(feats[0]) == 32, len(feats[0])
    try:
        model.encode([image])
    except ImportError as err:
        print(err)
""")


@pytest.mark.slow  # a fresh interpreter imports transformers (~10 s)
def test_remote_code_encode_says_pip_install(saved, tmp_path):
    _, model_dir, _, _, _ = saved
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(model_dir)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HViTModel.encode needs the hvit package (`pip install hvit`)" in proc.stdout
