# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""The `hvit` command (also `python -m modeling_hvit`): one entry point, a subcommand per task.

    hvit train [--config configs/<recipe>.yaml] [--flag value ...]     # one process
    accelerate launch -m modeling_hvit train ...                       # several processes / GPUs
    hvit eval --model DIR --dataset cub --data_dir PATH
    hvit delta | push | card ...                                       # `hvit <command> --help`

Each subcommand is a function ``main(argv: list[str])`` in the module that holds its logic, with its
own parser; `COMMANDS` maps the name to it (lazily imported, so `hvit --help` stays fast). Adding a
subcommand is that function plus one line here. While a subcommand runs, ``sys.argv[0]`` is
``"hvit <name>"``, so its parser's usage line reads ``hvit <name>``. User errors (`errors.UserError`,
malformed data, missing files) print as one line, ``hvit <name>: error: …``, exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["COMMANDS", "Command", "command_main", "main", "run"]


class Command(NamedTuple):
    target: str  # "package.module:function", called with the subcommand's argv
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("modeling_hvit.training:main", "train a model (no flags: the demo recipe, on CPU in minutes)"),
    "eval": Command("modeling_hvit.evaluation:main", "score a model on a dataset: Recall@K, MAP@R, … → metrics.json"),
    "delta": Command("modeling_hvit.cli:delta_main", "δ-hyperbolicity of a model's features and the curvature it suggests"),
    "push": Command("modeling_hvit.cli:push_main", "publish a trained folder on the Hugging Face Hub with its model card"),
    "card": Command("modeling_hvit.cli:card_main", "render the model card of a trained folder (offline preview)"),
    "index": Command("modeling_hvit.search.cli:index_main", "build or extend a search index of your images (build | add)"),
    "search": Command("modeling_hvit.search.cli:search_main", "nearest neighbours of query images in an index"),
    "dedup": Command("modeling_hvit.search.cli:dedup_main", "near-duplicate groups in an index, with threshold help"),
    "app": Command("modeling_hvit.search.app:main", "a Gradio app over an index (the [app] extra)"),
    "data": Command("modeling_hvit.cli:data_main", "prepare training data: `hvit data cache` (decode-once reduced images)"),
}


def delta_main(argv: list[str]):
    from .delta_cli import main as delta

    return delta(argv, prog="hvit delta")


def push_main(argv: list[str]) -> int:
    from .hub import main as hub

    return hub(["push", *argv], prog="hvit")


def card_main(argv: list[str]) -> int:
    from .hub import main as hub

    return hub(["card", *argv], prog="hvit")


def data_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(allow_abbrev=False, prog="hvit data", description="Prepare training data.")
    p.add_argument("action", choices=["cache"], help="cache: write each split once at a reduced size (sharded "
                   "Arrow), so training decodes small images (`hvit data cache --help`)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the action's options")
    args = p.parse_args(argv)
    from .data.cache import main as cache

    cache(args.args)
    return 0


def _usage() -> str:
    from . import __version__

    width = max(map(len, COMMANDS))
    lines = [f"usage: hvit <command> [<args>]   (hvit {__version__})", "",
             "Hyperbolic Vision Transformers for image retrieval, native to Hugging Face.", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "`hvit <command> --help` lists a command's options. Several processes or GPUs:",
              "`accelerate launch [--multi_gpu --num_processes N] -m modeling_hvit train ...`."]
    return "\n".join(lines)


def run(name: str, argv: Sequence[str]) -> int:
    """Run subcommand ``name`` with ``argv``; user errors become one line on stderr and status 2."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"; training and eval bars stay
    module, function = COMMANDS[name].target.split(":")
    prog = f"hvit {name}"
    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        result = getattr(importlib.import_module(module), function)(list(argv))
    except Exception as err:
        from .errors import user_error_types

        if not isinstance(err, user_error_types()):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        sys.argv = saved
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`hvit [command] [args]`: dispatch to a subcommand; without one, list them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"hvit {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"hvit: error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)} "
              "(`hvit --help`)", file=sys.stderr)
        return 2
    return _end(run(argv[0], argv[1:]))


def command_main(name: str) -> None:
    """Entry of the script wrappers (`train_hvit.py`, `eval_hvit.py`): ``hvit <name>`` with sys.argv."""
    sys.exit(_end(run(name, sys.argv[1:])))


def _end(code: int) -> int:
    """A process started by a launcher (`accelerate launch`) ends here, without the interpreter's
    finalization (`distributed.exit_launched_process`); a single process returns ``code``."""
    from .distributed import exit_launched_process

    exit_launched_process(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
