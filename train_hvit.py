#!/usr/bin/env python
"""Train an HViT model (= `hvit train`): `python train_hvit.py` or `accelerate launch train_hvit.py [--config ...]`.

With no arguments it runs the embedded demo (built-in shapes dataset, tiny ViT from scratch, CPU).
`python train_hvit.py --help` lists the hvit flags by group; `--help-all` adds the TrainingArguments.
"""

from modeling_hvit.cli import command_main

if __name__ == "__main__":
    command_main("train")
