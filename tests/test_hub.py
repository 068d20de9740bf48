"""Hub publishing: the model card (metadata round trip, every metric in the model-index), the folder
check, the push through the real `HfApi` code path with its HTTP-facing methods recorded, and the pushed
files loading with trust_remote_code in a process that cannot import hvit."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.hf_api import RepoUrl
from PIL import Image

from modeling_hvit import HViTConfig, HViTModel
from modeling_hvit.hub import HubFolderError, HubPushError, main, prepare_upload, push_to_hub, render_model_card
from modeling_hvit.trainer import HViTTrainingArguments
from modeling_hvit.training import DataArguments, ModelArguments
from conftest import BLOCK_HVIT_IMPORT

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789abcdef"
REPO = "org/hvit-tiny"
TINY_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "image_size": 32, "patch_size": 8}
# What a training run leaves besides the model; none of it may reach the Hub.
JUNK = ["training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "pytorch_model.bin",
        "checkpoint-1/optimizer.pt", "checkpoint-1/model.safetensors", "checkpoint-1/trainer_state.json",
        "runs/Nov26_18-00-00/events.out.tfevents.1", "notes.txt"]
EXPECTED = {"config.json", "model.safetensors", "configuration_hvit.py", "modeling_hvit.py", "hyperbolic.py", "lorentz.py",
            "image_processing_hvit.py",
            "preprocessor_config.json", "metrics.json", "train_args.json", "poincare_disk.png"}
RUN_KEYS = {"untrained", "wall_seconds", "dataset", "curvature", "delta_rel", "world_size",
            "global_step"}  # the non-metric keys of training.py's metrics.json


def _metrics(rng: np.random.Generator) -> dict:
    """metrics.json as training.py writes it (values drawn at random: they are inputs here), plus `nmi`
    and a key no code of ours knows, which the card must still publish."""
    keys = [f"recall@{k}" for k in (1, 2, 4, 8, 16, 32)] + ["precision@1", "r_precision", "map@r", "nmi"]
    final = {k: float(rng.uniform(0.05, 0.95)) for k in keys}
    final.update({f"encoder_{k}": float(rng.uniform(0.05, 0.95)) for k in keys})
    final["mystery_score"] = 3.25
    untrained = {k: float(rng.uniform(0.0, 0.3)) for k in final if k != "mystery_score"}
    return {**final, "untrained": untrained, "wall_seconds": 321.5, "dataset": "cub", "curvature": 0.1,
            "delta_rel": None, "world_size": 2, "global_step": 140}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trained-looking output_dir: tiny HViTModel, metrics.json, train_args.json, a plot, and junk."""
    folder = tmp_path_factory.mktemp("run") / "hvit-tiny"
    torch.manual_seed(0)
    model = HViTModel(HViTConfig(backbone_config=dict(TINY_VIT), embedding_dim=16)).eval()
    with torch.no_grad():
        model.head.weight.mul_(1.3).add_(0.02)  # not the init: a re-initialised head would show
    model.save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(_metrics(np.random.default_rng(0)), indent=2))
    margs = ModelArguments(backbone="scratch:tiny", embedding_dim=16, image_size=32)
    dargs = DataArguments(dataset="cub", data_dir="/home/someone/data/CUB_200_2011")
    targs = HViTTrainingArguments(output_dir=str(folder), per_device_train_batch_size=8, learning_rate=1e-3,
                                  num_train_epochs=7, seed=5, report_to="none")
    (folder / "train_args.json").write_text(json.dumps(
        {"model": asdict(margs), "data": asdict(dargs), "training": targs.to_dict()}, indent=2, default=str))
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "poincare_disk.png")
    for name in JUNK:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\x80\x04junk")
    (folder / "README.md").write_text("---\ntags:\n- generated_from_trainer\n---\n# generic Trainer card\n")
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _front_matter(text: str) -> dict:
    """The card's YAML header, parsed by PyYAML (independent of huggingface_hub's parser)."""
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "the card does not start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def _index_metrics(meta: dict) -> dict[str, float]:
    results = meta["model-index"][0]["results"]
    return {m["type"]: m["value"] for r in results for m in r["metrics"]}


# -- the card -----------------------------------------------------------------------------------------
def test_card_metadata_round_trips_and_lists_every_metric(trained, tmp_path):
    card = render_model_card(trained, REPO)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.eval_results == card.data.eval_results and loaded.data.eval_results
    meta = _front_matter((tmp_path / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "apache-2.0" and {"hvit", "hyperbolic", "image-retrieval"} <= set(meta["tags"])
    assert "base_model" not in meta  # trained from scratch
    metrics = json.loads((trained / "metrics.json").read_text())
    final = {k: v for k, v in metrics.items() if k not in RUN_KEYS}
    published = _index_metrics(meta)
    assert set(published) == set(final)  # every final metric (head and encoder, known or not), nothing else
    for key, value in final.items():
        assert published[key] == pytest.approx(value, abs=5e-5), key
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "CUB-200-2011", "type": "cub", "split": "test"}
    assert meta["model-index"][0]["name"] == "hvit-tiny"


def test_card_body(trained):
    text = str(render_model_card(trained, REPO))
    metrics = json.loads((trained / "metrics.json").read_text())
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| metric")}
    assert rows["Recall@1"] == [f"{100 * metrics[k]:.1f}" for k in ("recall@1", "encoder_recall@1")] + [
        f"{100 * metrics['untrained'][k]:.1f}" for k in ("recall@1", "encoder_recall@1")]
    assert rows["MAP@R"][:2] == [f"{100 * metrics[k]:.1f}" for k in ("map@r", "encoder_map@r")]
    assert rows["mystery_score"][0] == "3.25"  # unknown keys are listed as they are
    assert "import modeling_hvit" in text and f'AutoModel.from_pretrained("{REPO}", trust_remote_code=True)' in text
    assert "![" in text and "(poincare_disk.png)" in text
    assert "@inproceedings{ermolov2022hyperbolic" in text and "generated_from_trainer" not in text
    # the recipe actually used, read from train_args.json
    for fragment in ("learning rate 0.001", "7 epochs", "**Seed**: 5", "8 images per device = 4 classes × 2 images; 2 processes, global batch 16",
                     "(140 optimiser steps)",
                     "τ = 0.2", "clip radius r = 2.3", "5.4 min"):
        assert fragment in text, fragment
    assert "/home/someone" not in text  # machine-local paths are not hyperparameters


def test_card_base_model_datasets_delta_and_eval_subset(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"]["_name_or_path"] = "facebook/dino-vits16"
    config["curvature"], config["delta_rel"] = 0.0731, 0.5327
    (folder / "config.json").write_text(json.dumps(config))
    args = json.loads((folder / "train_args.json").read_text())
    args["model"].update(backbone="facebook/dino-vits16", curvature="auto")
    args["data"].update(dataset="hub:someorg/birds", max_eval_samples=50)
    (folder / "train_args.json").write_text(json.dumps(args))
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(dataset="hub:someorg/birds", curvature=0.0731, delta_rel=0.5327)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = str(render_model_card(folder, REPO))
    meta = _front_matter(text)
    assert meta["base_model"] == "facebook/dino-vits16" and meta["datasets"] == ["someorg/birds"]
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["type"] == "someorg/birds" and dataset["split"] == "test[:50]"
    assert "δ_rel = 0.5327" in text and "c = 0.0731" in text
    # a backbone from a local directory is not a Hub base model
    args["model"]["backbone"] = str(tmp_path)
    (folder / "train_args.json").write_text(json.dumps(args))
    assert "base_model" not in _front_matter(str(render_model_card(folder, REPO)))


def test_card_from_eval_hvit_metrics(trained, tmp_path):
    """metrics.json as eval_hvit.py writes it (In-Shop: queries against a gallery, NMI on): every metric
    evaluate_embeddings returns is published, its run metadata is not."""
    from modeling_hvit.evaluation import evaluate_embeddings

    folder = _copy(trained, tmp_path)
    g = torch.Generator().manual_seed(0)
    q_lab, g_lab = torch.arange(12) % 4, torch.arange(20) % 4
    ball = lambda n: 0.5 * torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)  # noqa: E731
    scores = evaluate_embeddings(ball(12), torch.randn(12, 32, generator=g), q_lab, "poincare", 0.1, (1, 10),
                                 gallery=(ball(20), torch.randn(20, 32, generator=g), g_lab),
                                 include=("recall", "precision@1", "r_precision", "map@r", "nmi"))
    metrics = {**scores, "dataset": "inshop", "split": "query/gallery", "model": str(folder), "geometry": "poincare",
               "curvature": 0.1, "num_queries": 12, "num_gallery": 20, "embedding_dim": 16, "wall_seconds": 1.5}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = str(render_model_card(folder, REPO))
    meta = _front_matter(text)
    assert set(_index_metrics(meta)) == set(scores) and "encoder_nmi" in scores
    assert meta["model-index"][0]["results"][0]["dataset"] == {
        "name": "In-Shop Clothes Retrieval", "type": "inshop", "split": "query/gallery"}
    assert "12 queries" in text and "against the gallery split" in text
    assert "Wall time" not in text  # eval_hvit's wall_seconds is not the training time


def test_card_without_metrics_or_train_args(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    (folder / "metrics.json").unlink()
    (folder / "train_args.json").unlink()
    text = str(render_model_card(folder))
    assert "model-index" not in _front_matter(text) and "metrics.json` is missing" in text
    assert "train_args.json` was not found" in text


# -- the folder ---------------------------------------------------------------------------------------
def test_prepare_upload_lists_exactly_the_model_files(trained):
    assert set(prepare_upload(trained)) == EXPECTED


@pytest.mark.parametrize("breakage,expected", [
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda f: (f / "hyperbolic.py").unlink(), "hyperbolic.py is missing"),
    (lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json is missing"),
    (lambda f: _edit_config(f, auto_map=None), "'auto_map' must name AutoConfig and AutoModel"),
    (lambda f: _edit_config(f, model_type="vit"), "model_type is 'vit', expected 'hvit'"),
    (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (lambda f: (f / "metrics.json").write_text('{"recall@1": 0.5,\n "map@r": }'), "metrics.json: invalid JSON at line 2"),
])
def test_prepare_upload_names_what_is_wrong(trained, tmp_path, breakage, expected):
    folder = _copy(trained, tmp_path)
    breakage(folder)
    with pytest.raises(HubFolderError, match=re.escape(expected)):
        prepare_upload(folder)


def test_prepare_upload_sharded_weights(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"shard")
    index = {"metadata": {}, "weight_map": {"head.weight": "model-00001-of-00002.safetensors",
                                            "head.bias": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    shards = {"model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert set(prepare_upload(folder)) == EXPECTED - {"model.safetensors"} | shards
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(HubFolderError, match="shards that are missing: model-00002-of-00002.safetensors"):
        prepare_upload(folder)


def test_prepare_upload_reports_all_problems_at_once(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "modeling_hvit.py").unlink()
    with pytest.raises(HubFolderError) as err:
        prepare_upload(folder)
    assert "model.safetensors is missing" in str(err.value) and "modeling_hvit.py is missing" in str(err.value)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# -- the push -----------------------------------------------------------------------------------------
@pytest.fixture
def online(monkeypatch):
    """Online mode for this test (conftest makes the suite offline); the network is still never reached."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub_calls():
    """HfApi.create_repo / create_commit replaced by recorders; everything before them runs for real."""
    calls = {"create_repo": [], "create_commit": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        ops = list(operations)
        calls["create_commit"].append({"repo_id": repo_id, "operations": ops, **kwargs})
        return None

    with mock.patch.object(HfApi, "create_repo", autospec=True, side_effect=create_repo), \
            mock.patch.object(HfApi, "create_commit", autospec=True, side_effect=create_commit):
        yield calls


def _uploaded(op: CommitOperationAdd) -> bytes:
    src = op.path_or_fileobj
    return src if isinstance(src, bytes) else Path(src).read_bytes()


def test_push_uploads_exactly_our_files_and_card(trained, online, hub_calls, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(trained, REPO, private=True, token=FAKE_TOKEN, api=HfApi())
    assert url == f"https://huggingface.co/{REPO}"
    [repo_call], [commit] = hub_calls["create_repo"], hub_calls["create_commit"]
    assert repo_call["repo_id"] == REPO and repo_call["private"] is True and repo_call["exist_ok"] is True
    assert commit["repo_id"] == REPO and commit["token"] == FAKE_TOKEN and repo_call["token"] == FAKE_TOKEN
    files = {op.path_in_repo: _uploaded(op) for op in commit["operations"]}
    assert set(files) == EXPECTED | {"README.md"}
    for name in EXPECTED:
        assert files[name] == (trained / name).read_bytes(), name
    card = files["README.md"].decode()
    assert card == str(render_model_card(trained, REPO)) and "generated_from_trainer" not in card
    assert not any(n.endswith((".bin", ".pt", ".pth")) or "/" in n for n in files)
    out = capsys.readouterr()
    assert FAKE_TOKEN not in caplog.text + out.out + out.err
    assert "training_args.bin" in caplog.text  # the log says what was left out (by name)


def test_cli_push_with_env_token_never_prints_it(trained, online, hub_calls, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert main(["push", str(trained), REPO]) == 0
    [commit] = hub_calls["create_commit"]
    assert commit["token"] == FAKE_TOKEN and hub_calls["create_repo"][0]["private"] is None
    out = capsys.readouterr()
    assert f"https://huggingface.co/{REPO}" in out.out
    assert FAKE_TOKEN not in caplog.text + out.out + out.err


def test_push_offline_is_a_clear_error_before_any_call(trained, hub_calls, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_to_hub(trained, REPO, token=FAKE_TOKEN)
    assert hub_calls == {"create_repo": [], "create_commit": []}


def test_push_without_token_says_how_to_log_in(trained, online, hub_calls, monkeypatch, tmp_path, capsys):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    with pytest.raises(HubPushError, match="hf auth login"):
        push_to_hub(trained, REPO)
    assert main(["push", str(trained), REPO]) == 2
    assert "error: no Hugging Face token" in capsys.readouterr().err
    assert hub_calls == {"create_repo": [], "create_commit": []}


def test_push_refuses_a_folder_that_holds_the_token(trained, online, hub_calls, tmp_path):
    folder = _copy(trained, tmp_path)
    args = json.loads((folder / "train_args.json").read_text())
    args["training"]["hub_token"] = FAKE_TOKEN
    (folder / "train_args.json").write_text(json.dumps(args))
    with pytest.raises(HubPushError, match="train_args.json") as err:
        push_to_hub(folder, REPO, token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(err.value) and hub_calls["create_commit"] == []


def test_push_bad_folder_or_repo_id_fails_before_any_call(trained, tmp_path, online, hub_calls, capsys):
    assert main(["push", str(tmp_path / "nowhere"), REPO]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(HubPushError, match="repo id"):
        push_to_hub(trained, "org/bad name", token=FAKE_TOKEN)
    assert hub_calls == {"create_repo": [], "create_commit": []}


def test_cli_card_writes_the_rendered_card(trained, tmp_path):
    assert main(["card", str(trained), "--repo_id", REPO, "--output", str(tmp_path / "card.md")]) == 0
    assert (tmp_path / "card.md").read_text() == str(render_model_card(trained, REPO))


# -- what was pushed loads without hvit ---------------------------------------------------------------
USAGE_SCRIPT = BLOCK_HVIT_IMPORT + textwrap.dedent("""
    import torch
    namespace = {}
    for snippet in sys.argv[2:]:  # the card's own code blocks, run as a user would
        exec(open(snippet).read(), namespace)
    model = namespace["model"]
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    torch.save({k: namespace[k] for k in ("embeddings", "features", "distances", "ranking")}, sys.argv[1])
""")


def _mobius_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Oracle: d(x, y) = (2/√c) artanh(√c ‖(−x) ⊕ y‖) for all pairs, float64, textbook Möbius addition."""
    x, y = x.double()[:, None, :], y.double()[None, :, :]
    xy, x2, y2 = -(x * y).sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * (-x) + (1 - c * x2) * y
    add = num / (1 + 2 * c * xy + c**2 * x2 * y2)
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * add.norm(dim=-1))


def test_pushed_files_load_with_remote_code_and_the_card_code_runs(trained, online, hub_calls, tmp_path):
    push_to_hub(trained, REPO, token=FAKE_TOKEN)
    snapshot = tmp_path / "snapshot"  # the repository as the Hub would hold it after the commit
    snapshot.mkdir()
    for op in hub_calls["create_commit"][0]["operations"]:
        (snapshot / op.path_in_repo).write_bytes(_uploaded(op))
    card = (snapshot / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    usage = next(b for b in blocks if "trust_remote_code=True" in b).replace(f'"{REPO}"', repr(str(snapshot)))
    retrieve = next(b for b in blocks if "def poincare_distance" in b)
    (tmp_path / "usage.py").write_text(usage)
    (tmp_path / "retrieve.py").write_text(retrieve)
    rng = np.random.default_rng(3)
    names = ["query.jpg", "gallery_1.jpg", "gallery_2.jpg"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name, quality=95)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-c", USAGE_SCRIPT, str(tmp_path / "out.pt"), str(tmp_path / "usage.py"),
                    str(tmp_path / "retrieve.py")], check=True, env=env, cwd=tmp_path, timeout=300)
    got = torch.load(tmp_path / "out.pt")

    from transformers import AutoImageProcessor

    model = HViTModel.from_pretrained(trained).eval()
    processor = AutoImageProcessor.from_pretrained(trained)
    images = [Image.open(tmp_path / n).convert("RGB") for n in names]
    with torch.no_grad():
        out = model(**processor(images=images, return_tensors="pt"))
    torch.testing.assert_close(got["embeddings"], out.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(got["features"], torch.nn.functional.normalize(out.encoder_embeddings, dim=-1),
                               rtol=0, atol=0)
    oracle = _mobius_distance(out.embeddings[:1], out.embeddings[1:], model.config.curvature)
    torch.testing.assert_close(got["distances"], oracle, rtol=0, atol=1e-6)
    assert got["ranking"].tolist() == oracle.argsort(dim=1).tolist()


@pytest.mark.slow
def test_demo_training_run_pushes_with_our_card(tmp_path, online, hub_calls):
    """End to end: a 1-epoch demo run of train_hvit.py, then the push. The model-index holds exactly the
    retrieval metrics of its metrics.json (run metadata the trainer adds must not pass for a metric)."""
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    script = Path(__file__).resolve().parents[1] / "train_hvit.py"
    subprocess.run([sys.executable, str(script), "--num_train_epochs", "1", "--output_dir", str(out),
                    "--disable_tqdm", "true"], check=True, env=env, cwd=tmp_path, timeout=600)
    assert (out / "training_args.bin").is_file()  # the Trainer's pickle is there, and must stay local
    push_to_hub(out, REPO, token=FAKE_TOKEN)
    files = {op.path_in_repo: _uploaded(op) for op in hub_calls["create_commit"][0]["operations"]}
    assert set(files) == EXPECTED - {"poincare_disk.png"} | {"README.md"}
    metric = re.compile(r"^((encoder_)?(recall@\d+|precision@1|r_precision|map@r|nmi)|coarse_recall@\d+|coarse_map@r|"
                        r"mistake_severity@1|radius_correct_correlation)$")  # the demo has a superclass column
    metrics = json.loads((out / "metrics.json").read_text())
    published = _index_metrics(_front_matter(files["README.md"].decode()))
    assert set(published) == {k for k in metrics if metric.match(k)} and "encoder_recall@1" in published
    assert "coarse_recall@1" in published and "hierarchy_column" not in published


# -- links, token bytes, checksums (issue 12.14, 12.16) ----------------------------------------------
@pytest.mark.parametrize("target", ["outside", "inside"])
def test_prepare_upload_refuses_symlinks(trained, tmp_path, target):
    """A `plot.svg` link to a token file was uploaded with the token in it: no link is uploaded, whether
    it leaves the folder or not (a link inside can be retargeted between check and upload)."""
    folder = _copy(trained, tmp_path)
    secret = tmp_path / "token"
    secret.write_text(FAKE_TOKEN)
    (folder / "plot.svg").symlink_to(secret if target == "outside" else folder / "poincare_disk.png")
    with pytest.raises(HubFolderError, match=r"plot.svg is a symbolic link"):
        prepare_upload(folder)
    (folder / "plot.svg").unlink()
    (folder / "metrics.json").unlink()
    (folder / "metrics.json").symlink_to(trained / "metrics.json")  # an optional file too
    with pytest.raises(HubFolderError, match=r"metrics.json is a symbolic link"):
        prepare_upload(folder)


def test_prepare_upload_refuses_shards_outside_the_folder(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    (tmp_path / "stolen.safetensors").write_bytes(b"secret")
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"head.weight": "../stolen.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HubFolderError, match=r"\.\./stolen.safetensors .*leaves the folder"):
        prepare_upload(folder)


@pytest.mark.parametrize("name", ["poincare_disk.png", "model.safetensors"])
def test_push_refuses_the_token_in_any_uploaded_file(trained, online, hub_calls, tmp_path, name):
    """Every byte of every uploaded file is scanned (before: only .json/.py/.md)."""
    folder = _copy(trained, tmp_path)
    with open(folder / name, "ab") as f:
        f.write(b"\x00" + FAKE_TOKEN.encode() + b"\x00")
    with pytest.raises(HubPushError, match=re.escape(name)) as err:
        push_to_hub(folder, REPO, token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(err.value) and hub_calls["create_commit"] == []


def test_push_refuses_the_stored_token_too(trained, online, hub_calls, tmp_path, monkeypatch):
    """A file holding the login token (HF_TOKEN) is refused even when pushing with another token."""
    folder = _copy(trained, tmp_path)
    stored = "hf_STOREDtokenAlsoSecret9876543210zyx"
    monkeypatch.setenv("HF_TOKEN", stored)
    (folder / "poincare_disk.png").write_bytes((folder / "poincare_disk.png").read_bytes() + stored.encode())
    with pytest.raises(HubPushError, match="poincare_disk.png"):
        push_to_hub(folder, REPO, token=FAKE_TOKEN)
    assert hub_calls["create_commit"] == []


def test_token_scan_finds_a_token_across_read_chunks(tmp_path):
    from modeling_hvit.hub import _contains

    path = tmp_path / "blob"
    for offset in range(0, 12):
        path.write_bytes(b"x" * offset + FAKE_TOKEN.encode() + b"y" * 5)
        assert _contains(path, [FAKE_TOKEN.encode()], chunk_size=7), offset
    path.write_bytes(b"x" * 40 + FAKE_TOKEN[:-1].encode() + b"y" * 40)
    assert not _contains(path, [FAKE_TOKEN.encode()], chunk_size=7)


def test_push_verifies_the_checksum_manifest(trained, online, hub_calls, tmp_path):
    from modeling_hvit.checkpoint import write_manifest

    folder = _copy(trained, tmp_path)
    write_manifest(folder)
    (folder / "training_args.bin").unlink()  # not uploaded: need not be there
    push_to_hub(folder, REPO, token=FAKE_TOKEN)
    assert len(hub_calls["create_commit"]) == 1
    assert "checksums.sha256" not in {op.path_in_repo for op in hub_calls["create_commit"][0]["operations"]}
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-64:] = bytes(64)  # same size, zeroed tail
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(HubFolderError, match="model.safetensors differs from the saved file"):
        push_to_hub(folder, REPO, token=FAKE_TOKEN)
    assert len(hub_calls["create_commit"]) == 1


def test_card_states_a_partial_resume(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["partial_resume"] = {"checkpoint": "out/checkpoint-4", "missing": ["optimizer.pt"],
                                 "changed": ["curvature 0.05 in the checkpoint, 0.1 now"]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = str(render_model_card(folder, REPO))
    assert ("from a checkpoint without optimizer.pt; curvature 0.05 in the checkpoint, 0.1 now: "
            "not an exact continuation") in text
    assert not any("partial_resume" in k for k in _index_metrics(_front_matter(text)))


def test_card_shows_hierarchy_metrics(trained, tmp_path):
    """Issue 15: coarse Recall@K / MAP@R, mistake severity and the radius–correct correlation of the head,
    as metrics.json has them (training.py: final and untrained), in their own table and the model-index."""
    folder = _copy(trained, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    hier = {"coarse_recall@1": 0.8125, "coarse_recall@2": 0.9, "coarse_map@r": 0.4375, "mistake_severity@1": 0.625,
            "radius_correct_correlation": 0.21875}
    metrics.update(hier, hierarchy_column="alphabet")
    metrics["untrained"].update({"coarse_recall@1": 0.5, "radius_correct_correlation": -0.03125})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = str(render_model_card(folder, REPO))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| metric")}
    assert rows["Coarse Recall@1"] == ["81.2", "50.0"]  # head, head before training: no encoder column
    assert rows["Coarse Recall@2"] == ["90.0", "–"]
    assert rows["Coarse MAP@R"] == ["43.8", "–"] and rows["Mistake severity@1"] == ["62.5", "–"]
    assert rows["Radius–correct correlation"] == ["0.2188", "-0.03125"]  # a correlation, not a percentage
    assert "shares the query's alphabet" in text and "| metric | head | head before training |" in text
    assert rows["Recall@1"][0] == f"{100 * metrics['recall@1']:.1f}"  # the flat table is unchanged
    meta = _front_matter(text)
    published = _index_metrics(meta)
    for key, value in hier.items():
        assert published[key] == pytest.approx(value, abs=5e-5), key
    names = {m["type"]: m["name"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert names["coarse_recall@1"] == "Coarse Recall@1" and names["coarse_map@r"] == "Coarse MAP@R"
