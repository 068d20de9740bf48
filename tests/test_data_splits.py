# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The split a run used is reported: counts per split and whether it is the benchmark's standard one."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import pytest
from test_data import build, cub_files, write_files

from modeling_hvit.data.splits import STANDARD_SPLITS, describe_splits, split_summary


def labels_only(sizes: dict[str, tuple[int, int]]) -> datasets.DatasetDict:
    """A DatasetDict with only a label column: `classes` classes spread over `images` rows per split."""
    out, offset = {}, 0
    for name, (classes, images) in sizes.items():
        out[name] = datasets.Dataset.from_dict({"label": [offset + i % classes for i in range(images)]})
        offset += classes
    return datasets.DatasetDict(out)


def test_cub_like_folder_of_100_species_is_not_the_standard_split(tmp_path):
    files, _ = cub_files(n_classes=100, per_class=1)
    dsd = build("cub", str(write_files(tmp_path / "cub100", files)), tmp_path=tmp_path)
    summary = split_summary(dsd, "CUB-200-2011")
    assert summary == {"dataset": "cub", "standard_split": False,
                       "splits": {"train": {"classes": 50, "images": 50}, "test": {"classes": 50, "images": 50}}}
    text = describe_splits(summary)
    assert text.startswith("train 50 classes / 50 images; test 50 classes / 50 images (NOT the standard cub split")
    assert "train 100 / 5,864; test 100 / 5,924" in text


@pytest.mark.parametrize("name", sorted(STANDARD_SPLITS))
def test_standard_counts_are_recognised(name):
    sizes = STANDARD_SPLITS[name]
    assert split_summary(labels_only(sizes), name)["standard_split"] is True
    first = next(iter(sizes))
    fewer = {**sizes, first: (sizes[first][0], sizes[first][1] - 1)}  # one image missing
    assert split_summary(labels_only(fewer), name)["standard_split"] is False


def test_datasets_without_a_standard_split():
    dsd = labels_only({"train": (3, 6), "test": (2, 4)})
    for name in ("folder", "demo", "caltech101", "hub:org/name"):
        summary = split_summary(dsd, name)
        assert summary["standard_split"] is None and summary["splits"]["test"] == {"classes": 2, "images": 4}
        assert describe_splits(summary).endswith("(no standard split for this dataset)")


@pytest.mark.slow
def test_training_eval_and_card_record_the_split(tmp_path):
    from modeling_hvit.evaluation import main as eval_main
    from modeling_hvit.hub_card import build_card
    from modeling_hvit.training import main as train_main

    out = tmp_path / "run"
    train_main(["--output_dir", str(out), "--max_steps", "1", "--max_eval_samples", "64", "--disable_tqdm", "true",
                "--report_to", "none"])
    trained = json.loads((out / "metrics.json").read_text())["splits"]
    assert trained["dataset"] == "demo" and trained["standard_split"] is None
    assert set(trained["splits"]) == {"train", "test"} and all(s["images"] > 0 for s in trained["splits"].values())
    eval_main(["--model", str(out), "--dataset", "demo", "--max_samples", "64", "--output_dir", str(tmp_path / "eval"),
               "--progress", "false"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["splits"] == trained
    assert f"- **Splits**: {describe_splits(trained)}" in str(build_card(out))
