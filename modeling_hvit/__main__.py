# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`python -m modeling_hvit <command> ...` = `hvit <command> ...` (and `accelerate launch -m modeling_hvit train ...`)."""

import sys

from .cli import main

sys.exit(main())
