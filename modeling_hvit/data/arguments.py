# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The dataset flags the command-line tools share, and reading a split's labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

from .builders import build_dataset

__all__ = ["DataArguments", "dataset_labels"]


@dataclass
class DataArguments:
    """Which dataset and how to build it: the flags `train_hvit.py`, `eval_hvit.py` and the δ tool share."""

    dataset: str = field(default="demo", metadata={"help": "cub, cars, sop, inshop, omniglot, caltech101, folder, "
                         "demo or hub:<org/name>."})
    data_dir: str | None = field(default=None, metadata={"help": "Extracted folder or official archive."})
    verify_images: bool = field(default=True, metadata={"help": "Open every image once while building."})
    skip_bad_images: bool = field(default=False, metadata={"help": "Skip unreadable images (counted) instead of failing."})
    train_fraction: float = field(default=0.5, metadata={"help": "Class fraction for train (class-order splits)."})
    split_rule: str = field(default="half", metadata={"help": "Class-disjoint split rule for folder/hub datasets."})
    image_column: str = field(default="image", metadata={"help": "Hub datasets: image column."})
    label_column: str = field(default="label", metadata={"help": "Hub datasets: label column."})
    hierarchy_column: str | None = field(default=None, metadata={"help": "Hierarchy column (hub datasets; plots)."})
    hub_config: str | None = field(default=None, metadata={"help": "Hub datasets: config name."})

    def build(self) -> datasets.DatasetDict:
        return build_dataset(self.dataset, self.data_dir, verify_images=self.verify_images,
                             skip_bad_images=self.skip_bad_images, split_rule=self.split_rule,
                             train_fraction=self.train_fraction, image_column=self.image_column,
                             label_column=self.label_column, hierarchy_column=self.hierarchy_column,
                             hub_config=self.hub_config)


def dataset_labels(ds: datasets.Dataset, column: str = "label") -> list[int]:
    """Labels of a split as a plain list, readable even after ``with_transform`` (HF_NOTES §3.1)."""
    return list(ds.with_format(None)[column])
