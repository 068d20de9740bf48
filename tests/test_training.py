"""train_hvit.py: recipes parse, the trainer's optimiser settings, resume reproduces, the demo learns."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from transformers import TrainerCallback

from modeling_hvit import HViTModel
from modeling_hvit.losses import PairwiseCrossEntropyLoss
from modeling_hvit.data import build_dataset, dataset_labels
from modeling_hvit.errors import UserError
from modeling_hvit.training import DEMO_RECIPE, SCRATCH_BACKBONES, main, parse_args
from modeling_hvit.trainer import HViTTrainer, HViTTrainingArguments, NonFiniteStepError
from modeling_hvit.data.transforms import TrainTransform, with_image_transform
from modeling_hvit.configuration_hvit import HViTConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_parse(recipe):
    margs, dargs, targs = parse_args(["--config", str(recipe), "--output_dir", "/tmp/x", "--use_cpu", "true",
                                      "--bf16", "false"])
    raw = yaml.safe_load(recipe.read_text())
    assert dargs.dataset == raw["dataset"] and margs.backbone == raw["backbone"]
    assert targs.global_batch_size == raw["global_batch_size"]  # the recipe's batch is the global one
    assert targs.per_device_train_batch_size == targs.global_batch_size  # one process here
    assert targs.global_batch_size % targs.samples_per_class == 0
    assert targs.learning_rate == raw["learning_rate"] and targs.max_grad_norm == 3.0
    assert targs.weight_decay == 0.01
    # the paper's recipes: constant, no warm-up (SPEC §5); the from-scratch CPU ones say otherwise explicitly
    assert targs.lr_scheduler_type == raw.get("lr_scheduler_type", "constant")
    assert targs.warmup_steps == raw.get("warmup_steps", 0)
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
    from modeling_hvit.data.transforms import EvalTransform

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


# --- issue 10.3: the recipe's batch is the global batch, split over the processes -----------------

@pytest.mark.parametrize("world_size, per_device", [(1, 900), (2, 450), (4, 225), (3, 300)])
def test_global_batch_is_split_over_processes(world_size, per_device):
    from modeling_hvit.trainer import resolve_train_batch

    assert resolve_train_batch(900, None, world_size, samples_per_class=9) == (per_device, 900)
    assert resolve_train_batch(900, 100, world_size, samples_per_class=2) == (100, 100 * world_size)  # explicit wins


def test_global_batch_errors_name_the_flag_and_a_valid_value():
    from modeling_hvit.trainer import resolve_train_batch

    with pytest.raises(ValueError, match=r"--global_batch_size 900 does not split evenly over 8 processes.*e\.g\. 864"):
        resolve_train_batch(900, None, 8, samples_per_class=9)
    with pytest.raises(ValueError, match=r"multiple of --samples_per_class 4.*e\.g\. 96"):
        resolve_train_batch(98, None, 2, samples_per_class=4)
    with pytest.raises(ValueError, match="--per_device_train_batch_size 3 × 3 process"):
        resolve_train_batch(None, 3, 3, samples_per_class=2)


def test_paper_step_count_does_not_depend_on_the_number_of_processes():
    """CUB: 100 train classes, m = 9, global batch 900 → 1 step per epoch (50 epochs = 50 steps) for any W."""
    from modeling_hvit.sampling import ClassPairSampler
    from modeling_hvit.trainer import resolve_train_batch

    labels = [c for c in range(100) for _ in range(30)]
    for world in (1, 2, 4):
        per_device, _ = resolve_train_batch(900, None, world, samples_per_class=9)
        sampler = ClassPairSampler(labels, 9, per_device, world_size=world)
        assert sampler.steps_per_epoch == 1 and len(sampler) == 900


def test_training_args_resolve_the_global_batch(tmp_path):
    args = HViTTrainingArguments(output_dir=str(tmp_path), global_batch_size=64, samples_per_class=2, use_cpu=True,
                                 report_to="none")
    assert args.world_size == 1 and args.per_device_train_batch_size == 64 and args.train_batch_size == 64
    with pytest.raises(ValueError, match="--samples_per_class 3"):
        HViTTrainingArguments(output_dir=str(tmp_path), global_batch_size=64, samples_per_class=3, use_cpu=True,
                              report_to="none")


def test_one_process_with_several_gpus_uses_one_not_data_parallel(tmp_path, caplog):
    """Plain `python train_hvit.py` on a multi-GPU machine: the Trainer would wrap nn.DataParallel with
    batch × n_gpu; we train on one GPU and say how to use all (n_gpu faked: no GPU here)."""
    from transformers.training_args import ParallelMode

    args = HViTTrainingArguments(output_dir=str(tmp_path), global_batch_size=8, use_cpu=True, report_to="none")
    args._n_gpu = 4
    assert args.parallel_mode == ParallelMode.NOT_DISTRIBUTED and args.train_batch_size == 32  # the fault
    args._use_one_gpu()
    assert args.n_gpu == 1 and args.parallel_mode == ParallelMode.NOT_PARALLEL and args.train_batch_size == 8
    assert "accelerate launch --multi_gpu --num_processes 4" in caplog.text


# --- issue 17.3: decoding workers per process, not per node ----------------------------------------

def test_default_workers_are_shared_by_the_processes_of_a_node(tmp_path, monkeypatch):
    from modeling_hvit.trainer import default_num_workers

    assert default_num_workers(cpus=64, local_processes=1) == 8
    assert default_num_workers(cpus=64, local_processes=8) == 8
    assert default_num_workers(cpus=32, local_processes=8) == 4
    assert default_num_workers(cpus=4, local_processes=8) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # torchrun / accelerate launch set it for every process
    args = HViTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.dataloader_num_workers == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    cpus = len(os.sched_getaffinity(0))
    args = HViTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.dataloader_num_workers == min(8, cpus)


# --- issue 10.5: half-precision evaluation flags must not make training pure half precision ------

@pytest.mark.parametrize("flag", ["bf16_full_eval", "fp16_full_eval"])
def test_full_half_precision_eval_is_rejected(tmp_path, flag):
    with pytest.raises(ValueError, match=f"--{flag} casts the whole model.*--bf16 true"):
        HViTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{flag: True})


# --- issue 12.2: a non-finite loss or gradient stops the run at its step -------------------------

class _Poison(TrainerCallback):
    """At the end of step `after`, make the model diverge: NaN head weights (→ NaN loss) or a NaN-gradient hook."""

    def __init__(self, after: int, what: str):
        self.after, self.what, self.handle = after, what, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.after:
            if self.what == "loss":
                with torch.no_grad():
                    model.head.weight.fill_(float("nan"))
            else:
                self.handle = model.head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        elif self.handle is not None:
            self.handle.remove()
            self.handle = None


class _Snapshots(TrainerCallback):
    def __init__(self):
        self.params = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("what, message", [("loss", "the training loss is not finite"),
                                           ("grad", "the gradient norm is (inf|nan)")])
def test_nonfinite_step_stops_the_run_naming_the_step(tmp_path, what, message):
    trainer = _tiny_trainer(tmp_path, max_steps=5)
    trainer.add_callback(_Poison(after=2, what=what))
    with pytest.raises(NonFiniteStepError, match=f"step 3: {message}.*--on_nonfinite skip"):
        trainer.train()
    assert trainer.state.global_step == 2  # stopped before the update of step 3
    assert not any(h.get("loss") == 0 for h in trainer.state.log_history)


def test_nonfinite_step_can_be_skipped_and_counted(tmp_path):
    trainer = _tiny_trainer(tmp_path, max_steps=4, on_nonfinite="skip")
    snapshots = _Snapshots()
    trainer.add_callback(_Poison(after=2, what="grad"))  # only step 3's gradient is inf
    trainer.add_callback(snapshots)
    trainer.train()
    assert trainer.state.global_step == 4
    for name, value in snapshots.params[2].items():  # step 3 left the weights alone, steps 2 and 4 did not
        assert torch.equal(snapshots.params[3][name], value), name
    assert any(not torch.equal(snapshots.params[4][n], v) for n, v in snapshots.params[3].items())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["nonfinite_steps_skipped"] for h in logged] == [0, 0, 1, 1]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in logged)


# --- issue 12.17: throughput in images, epochs as passes over the classes -----------------------

class _CountingTransform(TrainTransform):
    calls = 0

    def __call__(self, image):
        type(self).calls += 1
        return super().__call__(image)


def test_images_per_second_counts_the_images_trained_on(tmp_path):
    """16 classes × 6 images, m = 2, batch 8: an epoch (a pass over the classes) is 4 steps of 8 images = 32
    images, not the dataset's 96; train_samples_per_second × train_runtime must be the images decoded."""
    trainer = _tiny_trainer(tmp_path, max_steps=-1, num_train_epochs=2)
    trainer.train_dataset = with_image_transform(trainer.train_dataset.with_format(None), _CountingTransform(16))
    _CountingTransform.calls = 0
    metrics = trainer.train().metrics
    assert trainer.state.global_step == 8 and trainer.state.epoch == 2.0
    assert _CountingTransform.calls == 8 * 8  # the oracle: images actually decoded for training
    assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(64, rel=0.01)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["images_seen"] for h in logged] == [8 * (i + 1) for i in range(8)]


# --- issue 10 "Also": gradient checkpointing for large batches ------------------------------------

def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = HViTModel(HViTConfig(backbone_config={**SCRATCH_BACKBONES["tiny"], "image_size": 16, "hidden_size": 32,
                                                  "num_hidden_layers": 3, "intermediate_size": 64},
                                 embedding_dim=8, freeze_blocks=1)).train()
    x, labels = torch.randn(8, 3, 16, 16), torch.arange(4).repeat_interleave(2)
    loss_fn = PairwiseCrossEntropyLoss("poincare", curvature=0.1)

    def grads():
        model.zero_grad(set_to_none=True)
        loss_fn(model(pixel_values=x).embeddings, labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert sum(getattr(m, "gradient_checkpointing", False) for m in model.backbone.modules()) >= 3
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=0, atol=1e-7, msg=name)


def test_gradient_checkpointing_flag_reaches_the_model(tmp_path):
    plain = _tiny_trainer(tmp_path / "a", max_steps=2)
    plain.train()
    ckpt = _tiny_trainer(tmp_path / "b", max_steps=2, gradient_checkpointing=True)
    ckpt.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.model.modules())
    for (name, a), b in zip(plain.model.state_dict().items(), ckpt.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


# --- issue 11: --curvature auto measures δ on float32 features ------------------------------------

def test_curvature_auto_uses_float32_features_under_bf16(tmp_path):
    from modeling_hvit.delta import estimate_delta
    from modeling_hvit.evaluation import embed_dataset
    from modeling_hvit.training import ModelArguments, _set_curvature_from_delta
    from modeling_hvit.data.transforms import EvalTransform

    assert ModelArguments().delta_draws == 100  # the original protocol
    trainer = _tiny_trainer(tmp_path, max_steps=1, bf16=True)
    data = with_image_transform(build_dataset("demo", demo_kwargs={"num_shapes": 4, "num_colours": 4,
                                                                   "images_per_class": 6, "image_size": 16})["train"],
                                EvalTransform(16))
    margs = ModelArguments(delta_n=60, delta_draws=5)
    _set_curvature_from_delta(trainer, data, margs)
    # oracle: a plain float32 copy of the same weights (the trainer's model forward autocasts to bf16)
    reference = HViTModel(trainer.model.config)
    reference.load_state_dict(trainer.model.state_dict())
    _, features, _ = embed_dataset(reference, data)
    want = estimate_delta(features.double(), n=60, draws=5, seed=trainer.args.seed)
    assert trainer.model.config.delta_rel == pytest.approx(float(want.delta_rel_mean), rel=1e-6, abs=0)
