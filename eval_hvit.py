#!/usr/bin/env python
"""Evaluate an HViT model (= `hvit eval`): `python eval_hvit.py --model DIR_OR_HUB_ID --dataset cub --data_dir PATH [--plot]`.

Scores the head embeddings (in the model's geometry) and the encoder features (cosine): Recall@K
(the paper's K per dataset), Precision@1, R-Precision, MAP@R (and NMI with `--nmi`), prints a table
and writes `metrics.json` (and `poincare_disk.png` with `--plot`) to `--output_dir`.
`python eval_hvit.py --help` lists every flag.
"""

from modeling_hvit.cli import command_main

if __name__ == "__main__":
    command_main("eval")
