#!/usr/bin/env python
"""Train an HViT model: `accelerate launch train_hvit.py [--config configs/<recipe>.yaml] [--flag value ...]`.

With no arguments it runs the embedded demo (built-in shapes dataset, tiny ViT from scratch, CPU).
`python train_hvit.py --help` lists every flag (model, data and HF TrainingArguments).
"""

from modeling_hvit.training import main

if __name__ == "__main__":
    main()
