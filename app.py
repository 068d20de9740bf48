# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Hugging Face Space entry point: the hvit image-search app over an index folder.

Environment: ``HVIT_INDEX`` (the index folder; default ``index`` beside this file), ``HVIT_MODEL``
(default: the model recorded in the index), ``HVIT_IMAGES`` (the folder of the indexed pictures, when
the index was built elsewhere; default ``images`` beside this file if it exists), ``HVIT_THRESHOLD``
(start of the duplicate slider).
Locally: ``HVIT_INDEX=photos-index python app.py`` (the same as ``hvit app photos-index``).
"""

import os
from pathlib import Path

from modeling_hvit.search.app import build_demo

threshold = os.environ.get("HVIT_THRESHOLD") or None
try:
    threshold = None if threshold is None else float(threshold)
except ValueError:
    raise SystemExit(f"HVIT_THRESHOLD={threshold!r}: expected a distance (a number ≥ 0)") from None
here = Path(__file__).resolve().parent
images = os.environ.get("HVIT_IMAGES") or (here / "images" if (here / "images").is_dir() else None)
demo = build_demo(os.environ.get("HVIT_INDEX") or here / "index", os.environ.get("HVIT_MODEL") or None,
                  threshold=threshold, image_root=images)

if __name__ == "__main__":
    demo.launch()
