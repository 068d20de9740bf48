#!/usr/bin/env python
"""Train an HViT model: `hvit train` (this file: `python train_hvit.py`, `accelerate launch train_hvit.py`).

With no arguments it runs the embedded demo (built-in shapes dataset, tiny ViT from scratch, CPU).
`python train_hvit.py --help` lists the hvit flags by group; `--help-all` adds the TrainingArguments.
"""

from modeling_hvit.cli import command_main

if __name__ == "__main__":
    command_main("train")
