# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""One evaluation preprocessing per model: read from every processor type, saved with the model, and
the same pixels/embeddings through training-time evaluation, eval_hvit.py, AutoImageProcessor and
pipeline; uint8 batches from the workers normalised on the device like the float path."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    BitImageProcessor,
    DeiTImageProcessor,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    pipeline,
)

import modeling_hvit  # noqa: F401  (Auto registration)
from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.data.sources import DataError
from modeling_hvit.image_processing_hvit import EvalPreprocessing, read_preprocessing
from modeling_hvit.modeling_hvit import default_image_processor
from modeling_hvit.data.transforms import (
    EvalTransform,
    TrainTransform,
    eval_transform_for,
    normalization_from_processor,
    pixel_values_for,
    preprocess,
    to_tensor,
    transforms_for_model,
    with_image_transform,
)

TIMM_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                    "std": (0.5, 0.5, 0.5), "crop_pct": 0.9, "crop_mode": "center"}  # vit_small_patch16_224.augreg


def timm_processor(data_config=TIMM_DATA_CONFIG):
    """A TimmWrapperImageProcessor as transformers builds it, without timm (its __init__ needs timm):
    the instance keeps its settings only in `data_config`."""
    from transformers.models.timm_wrapper.image_processing_timm_wrapper import TimmWrapperImageProcessor

    proc = object.__new__(TimmWrapperImageProcessor)
    proc.data_config = dict(data_config)
    return proc


def photo(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    arr = np.clip(x + rng.integers(0, 56, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# Sizes chosen so that (resized side - crop) is odd: transformers crops at floor(d / 2), torchvision at round.
IMAGES = [photo(45, 61, 0), photo(70, 47, 1), photo(37, 37, 2), photo(52, 90, 3, "L"), photo(33, 80, 4)]


# -- reading every processor type ------------------------------------------------------------------------
def test_read_preprocessing_of_each_processor_type():
    vit = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=2)
    assert read_preprocessing(vit) == EvalPreprocessing(32, 32, 2, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    dinov2 = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    assert read_preprocessing(dinov2) == EvalPreprocessing(224, 256, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    deit = DeiTImageProcessor()  # 256 → crop 224, bicubic, ImageNet
    assert (read_preprocessing(deit).crop_size, read_preprocessing(deit).resize_size) == (224, 256)
    # timm: mean/std and the crop only in data_config; resize = floor(224 / 0.9) = 248
    assert read_preprocessing(timm_processor()) == EvalPreprocessing(224, 248, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="crop_mode 'squash'"):
        read_preprocessing(timm_processor({**TIMM_DATA_CONFIG, "crop_mode": "squash"}))


def test_timm_mean_std_are_read_not_imagenet():
    # main fell back to ImageNet mean/std here (inputs ~2.2x off the checkpoint's scale)
    assert normalization_from_processor(timm_processor()) == ((0.5,) * 3, (0.5,) * 3)


def test_timm_backbone_config_without_processor():
    from transformers import TimmWrapperConfig

    backbone = TimmWrapperConfig(architecture="vit_small_patch16_224", pretrained_cfg=dict(TIMM_DATA_CONFIG))
    proc = default_image_processor(HViTConfig(backbone_config=backbone, backbone_hidden_size=384))
    assert proc.size["shortest_edge"] == 248 and proc.crop_size == {"height": 224, "width": 224}
    assert list(proc.image_mean) == [0.5] * 3 and list(proc.image_std) == [0.5] * 3


def test_timm_processor_round_trip_same_pixels(tmp_path):
    """TimmWrapperImageProcessor.save_pretrained writes nothing; ours saves the equivalent processor."""
    from modeling_hvit.image_processing_hvit import evaluation_image_processor

    prep = read_preprocessing(timm_processor({**TIMM_DATA_CONFIG, "input_size": (3, 32, 32)}))  # resize 35
    evaluation_image_processor(timm_processor({**TIMM_DATA_CONFIG, "input_size": (3, 32, 32)})).save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert read_preprocessing(reloaded) == prep and prep.resize_size == 35
    ours = torch.stack([EvalTransform.from_preprocessing(prep, normalize=True)(im) for im in IMAGES])
    theirs = reloaded(IMAGES, return_tensors="pt")["pixel_values"]
    if reloaded.backend == "pil":  # torchvision's tensor resize rounds differently
        assert torch.equal(ours, theirs)


# -- one processor through every path ------------------------------------------------------------------
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**TINY), add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.25, 0.2],
                      resample=2).save_pretrained(path)  # resizes straight to 32x32, bilinear
    return path


def image_dataset():
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": IMAGES, "label": [0, 1, 0, 1, 0]}, features=feats)


def test_identical_embeddings_through_every_evaluation_path(tmp_path, backbone_dir):
    from modeling_hvit.evaluation import EvalArguments, _prepare, embed_dataset
    from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments

    model = HViTModel.from_backbone(backbone_dir, embedding_dim=8).eval()
    _, eval_tf = transforms_for_model(model, "cub", 32)  # training time: the CUB recipe, resize 37 then crop 32
    assert (eval_tf.resize_size, eval_tf.image_size, eval_tf.resample) == (37, 32, 3)
    ds = image_dataset()
    before = pixel_values_for(model, torch.stack([eval_tf(im) for im in IMAGES]))

    # 1. training-time evaluation: the Trainer's prediction loop on the uint8 eval set
    args = HViTTrainingArguments(output_dir=str(tmp_path / "run"), per_device_eval_batch_size=len(IMAGES),
                                 dataloader_num_workers=0, report_to="none", use_cpu=True)
    trainer = HViTTrainer(model=model, args=args)
    emb_train = torch.as_tensor(trainer.predict(with_image_transform(ds, eval_tf)).predictions[0])
    model.save_pretrained(tmp_path / "model")

    # 2. eval_hvit.py: the saved model, whatever --dataset says
    loaded = HViTModel.from_pretrained(tmp_path / "model").eval()
    _, eval_set, _ = _prepare(loaded, EvalArguments(model=str(tmp_path / "model")), "folder", ds)
    emb_eval = embed_dataset(loaded, eval_set, batch_size=len(IMAGES))[0]
    after = pixel_values_for(loaded, torch.stack([eval_transform_for(loaded)(im) for im in IMAGES]))

    # 3. AutoImageProcessor + AutoModel from the folder
    processor = AutoImageProcessor.from_pretrained(tmp_path / "model")
    auto_model = AutoModel.from_pretrained(tmp_path / "model").eval()
    auto_pixels = processor(IMAGES, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb_auto = auto_model(pixel_values=auto_pixels).embeddings

    # 4. pipeline("image-feature-extraction")
    extractor = pipeline("image-feature-extraction", model=str(tmp_path / "model"))
    emb_pipe = torch.tensor(np.stack([np.asarray(extractor(im))[0] for im in IMAGES]), dtype=torch.float32)

    assert torch.equal(before, after)
    torch.testing.assert_close(preprocess(IMAGES, loaded), before, rtol=0, atol=0)
    if processor.backend == "pil":  # the default without torchvision (torchvision resizes tensors differently)
        assert torch.equal(auto_pixels, before)
    torch.testing.assert_close(emb_eval, emb_train, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb_auto, emb_train, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb_pipe, emb_train, rtol=0, atol=1e-5)  # one image per forward pass


def test_eval_processor_is_the_models_not_the_dataset_names(tmp_path, backbone_dir):
    model = HViTModel.from_backbone(backbone_dir, embedding_dim=8)
    transforms_for_model(model, "cub", 32)
    model.save_pretrained(tmp_path)
    loaded = HViTModel.from_pretrained(tmp_path)
    tf = eval_transform_for(loaded)
    assert (tf.resize_size, tf.image_size) == (37, 32)
    # the backbone's mean/std (not 0.5, not ImageNet), the recipe's bicubic
    assert read_preprocessing(loaded.image_processor) == EvalPreprocessing(32, 37, 3, (0.1, 0.2, 0.3), (0.3, 0.25, 0.2))


# -- uint8 batches ----------------------------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean,std", [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_device_normalisation_equals_float_path(mean, std, device):
    from modeling_hvit.data.transforms import normalize_uint8

    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)) for _ in range(4)]
    ims.append(Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, 2)))
    for im in ims:
        u8 = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].to(device)
        got = normalize_uint8(u8, mean, std)[0]
        assert got.device.type == device and torch.equal(got.cpu(), to_tensor(im, mean, std))  # bit-identical


def test_workers_send_uint8_and_training_sees_the_float_pixels(backbone_dir):
    ds = with_image_transform(image_dataset(), TrainTransform(32, seed=0))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=lambda b: b)
    items = [x for batch in loader for x in batch]
    assert all(x["pixel_values"].dtype == torch.uint8 and x["pixel_values"].shape == (3, 32, 32) for x in items)
    model = HViTModel.from_backbone(backbone_dir, embedding_dim=8).eval()
    mean, std = normalization_from_processor(model.image_processor)
    u8 = torch.stack([EvalTransform(32)(im) for im in IMAGES])
    as_float = torch.stack([EvalTransform(32, mean, std)(im) for im in IMAGES])
    assert u8.dtype == torch.uint8 and torch.equal(pixel_values_for(model, u8), as_float)
    assert pixel_values_for(model, as_float) is as_float  # float batches pass through


# -- unreadable images at transform time ------------------------------------------------------------------
def test_decode_error_names_the_file_or_substitutes(tmp_path):
    paths = []
    for i, im in enumerate(IMAGES[:4]):
        paths.append(str(tmp_path / f"img{i}.png"))
        im.save(paths[-1])
    (tmp_path / "img1.png").write_bytes(b"not a png")  # class 1: its other image is img3
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}, features=feats)
    out = with_image_transform(ds, EvalTransform(16))
    assert out[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(DataError, match=r"img1\.png.*not readable.*skip_bad_images"):
        out[1]
    skipping = with_image_transform(ds, EvalTransform(16), skip_bad_images=True)
    with pytest.warns(UserWarning, match=r"img1\.png.* replaced by .*img3\.png.*1 replaced so far"):
        item = skipping[1]
    assert item["labels"] == 1 and torch.equal(item["pixel_values"], EvalTransform(16)(IMAGES[3].convert("RGB")))
