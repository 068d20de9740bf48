"""train_hvit.py: recipes parse, the trainer's optimiser settings, resume reproduces, the demo learns."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from modeling_hvit import HViTModel
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.errors import UserError
from modeling_hvit.training import DEMO_RECIPE, SCRATCH_BACKBONES, main, parse_args
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments
from modeling_hvit.transforms import TrainTransform, with_image_transform
from modeling_hvit.configuration_hvit import HViTConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_parse(recipe):
    margs, dargs, targs = parse_args(["--config", str(recipe), "--output_dir", "/tmp/x", "--use_cpu", "true",
                                      "--bf16", "false"])
    raw = yaml.safe_load(recipe.read_text())
    assert dargs.dataset == raw["dataset"] and margs.backbone == raw["backbone"]
    assert targs.per_device_train_batch_size % targs.samples_per_class == 0
    assert targs.learning_rate == raw["learning_rate"] and targs.max_grad_norm == 3.0
    assert targs.weight_decay == 0.01 and targs.lr_scheduler_type == "constant"
    assert targs.output_dir == "/tmp/x"  # command-line flags override the recipe


def test_demo_recipe_file_matches_embedded_default():
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()) == DEMO_RECIPE


def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: cub\nlearning_rat: 1e-3\n")
    with pytest.raises(UserError, match="learning_rat"):  # printed as one line by `hvit train`
        parse_args(["--config", str(bad)])
    with pytest.raises(UserError, match="no such file"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def _tiny_trainer(out_dir, max_steps=6, **kw):
    torch.manual_seed(0)
    dsd = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 6,
                                             "image_size": 16})
    model = HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES["tiny"], "image_size": 16, "hidden_size": 32,
                                                  "num_hidden_layers": 2, "intermediate_size": 64},
                                 embedding_dim=8))
    args = HViTTrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=8, samples_per_class=2,
                                 learning_rate=1e-3, max_steps=max_steps, use_cpu=True, report_to="none",
                                 seed=0, dataloader_num_workers=0, logging_steps=1, disable_tqdm=True, **kw)
    train = dsd["train"]
    return HViTTrainer(model=model, args=args, train_dataset=with_image_transform(train, TrainTransform(16)),
                       train_labels=dataset_labels(train))


def test_optimizer_decays_every_parameter_and_clips(tmp_path):
    trainer = _tiny_trainer(tmp_path, max_steps=1)
    trainer.create_optimizer()
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert all(id(p) in decayed for p in trainable)  # biases and LayerNorms too, as the original
    assert trainer.args.max_grad_norm == 3.0


def test_train_logs_loss_statistics(tmp_path):
    trainer = _tiny_trainer(tmp_path, max_steps=2)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and {"train_accuracy", "train_pos_logit_mean", "train_neg_logit_mean"} <= set(logged[0])
    assert logged[0]["train_pos_logit_mean"] <= 0  # poincaré logits are −d/τ


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Interrupt after 4 steps (an epoch boundary: 8 classes / 4 per batch), resume, compare weights."""
    full = _tiny_trainer(tmp_path / "full", save_strategy="steps", save_steps=4)
    full.train()
    resumed = _tiny_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7, msg=k)
    # and the 6 steps changed the weights (the comparison is not vacuous)
    start = load_file(tmp_path / "full" / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(v, a[k]) for k, v in start.items() if k in a)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The embedded default (`accelerate launch train_hvit.py`): trains, improves Recall@1, saves a loadable model."""
    trained = main(["--output_dir", str(tmp_path / "demo")])
    summary = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert summary["recall@1"] == trained["recall@1"]
    assert summary["recall@1"] - summary["untrained"]["recall@1"] >= 0.10
    model = HViTModel.from_pretrained(tmp_path / "demo")
    assert model.config.geometry == "poincare"
    assert (tmp_path / "demo" / "preprocessor_config.json").exists()


def test_curvature_auto_writes_estimate_into_config(tmp_path):
    """`--curvature auto` on the demo dataset: c = (0.144/δ_rel)² from the encoder features, saved."""
    main(["--output_dir", str(tmp_path / "auto"), "--curvature", "auto", "--max_steps", "1",
          "--delta_n", "300", "--delta_draws", "2", "--disable_tqdm", "true", "--max_eval_samples", "200"])
    cfg = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert 0 < cfg["delta_rel"] < 1
    assert cfg["curvature"] > 0 and abs(cfg["curvature"] - (0.144 / cfg["delta_rel"]) ** 2) < 1e-6 * cfg["curvature"]
    summary = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert summary["curvature"] == cfg["curvature"] and summary["delta_rel"] == cfg["delta_rel"]


def test_push_to_hub_fails_before_training_when_offline(tmp_path, monkeypatch):
    from modeling_hvit.hub import HubPushError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="offline"):
        main(["--output_dir", str(tmp_path / "o"), "--push_to_hub", "true", "--hub_model_id", "org/x"])
    assert not (tmp_path / "o").exists()  # nothing was trained


def test_push_to_hub_uploads_our_card_after_training(tmp_path, monkeypatch):
    from unittest import mock

    from huggingface_hub import HfApi, RepoUrl

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    commits = []
    with mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/org/x")), \
         mock.patch.object(HfApi, "create_commit", side_effect=lambda *a, **k: commits.append(k)):
        main(["--output_dir", str(tmp_path / "o"), "--push_to_hub", "true", "--hub_model_id", "org/x",
              "--hub_token", "hf_test_token_0000", "--max_steps", "1", "--max_eval_samples", "64",
              "--disable_tqdm", "true"])
    (commit,) = commits
    names = {op.path_in_repo for op in commit["operations"]}
    assert {"README.md", "model.safetensors", "config.json", "modeling_hvit.py", "metrics.json"} <= names
    assert not {"training_args.bin"} & names
    card = next(op for op in commit["operations"] if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert "pipeline_tag: image-feature-extraction" in card and "generated_from_trainer" not in card


def test_query_gallery_evaluation_in_the_trainer(tmp_path):
    """With a gallery (In-Shop), the trainer scores queries against it, as eval_hvit.py does."""
    from modeling_hvit.evaluation import embed_dataset, evaluate_embeddings
    from modeling_hvit.trainer import make_compute_metrics
    from modeling_hvit.transforms import EvalTransform

    trainer = _tiny_trainer(tmp_path, max_steps=1)
    model = trainer.model
    test = build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4, "images_per_class": 6,
                                              "image_size": 16})["test"]
    query, gallery = test.select(range(0, len(test), 2)), test.select(range(1, len(test), 2))
    tf = EvalTransform(16)
    trainer.eval_dataset, trainer.gallery_dataset = with_image_transform(query, tf), with_image_transform(gallery, tf)
    trainer.compute_metrics = make_compute_metrics("poincare", 0.1, (1, 2))
    got = trainer.evaluate()
    q, g = embed_dataset(model, trainer.eval_dataset), embed_dataset(model, trainer.gallery_dataset)
    want = evaluate_embeddings(*q, "poincare", 0.1, (1, 2), gallery=g)
    assert set(want) <= {k[len("eval_"):] for k in got}
    for k, v in want.items():
        assert abs(got[f"eval_{k}"] - v) < 1e-6, k
