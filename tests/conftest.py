"""Test-wide settings: offline Hub, a private HF cache, and the real-data locator."""

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("HVIT_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def real_data(*parts: str) -> Path:
    """Path under ../shared/data; skips when absent, fails under CI=true (CI must have the data)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data missing under CI: {path}")
        pytest.skip(f"real data not available: {path}")
    return path


# Prepended to scripts run in a fresh interpreter that must behave as if hvit were not installed
# (the package is installed in editable mode here): remote-code loading is then the only way in.
BLOCK_HVIT_IMPORT = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):  # this process cannot import the installed package
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_hvit":
                raise ImportError("modeling_hvit is blocked in this process")
    sys.meta_path.insert(0, Block())
    try:
        import modeling_hvit
        raise SystemExit("modeling_hvit should not be importable here")
    except ImportError:
        pass
""")
