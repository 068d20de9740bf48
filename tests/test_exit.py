# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`distributed.exit_launched_process`: a launched process ends without interpreter finalization.

The failure it avoids, reproduced deterministically: a thread still inside torch C++ code (here a
matmul with the GIL released; in a 2-process run, a process-group thread) when the interpreter
finalizes cannot take the GIL back and aborts the finished process: "terminate called without an
active exception", SIGABRT. That is the abort CI saw at the end of complete 2-process runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, multiprocessing, os, sys, threading, time
    import torch
    from modeling_hvit.distributed import exit_launched_process

    def sleeper():
        time.sleep(120)

    if __name__ == "__main__":
        child = multiprocessing.get_context("fork").Process(target=sleeper, daemon=True)
        child.start()
        open(sys.argv[1], "w").write(str(child.pid))
        atexit.register(lambda: print("finalized", flush=True))
        a = torch.randn(300, 300)
        busy = threading.Event()

        def work():  # short C++ calls with the GIL released, until the process ends: the thread is nearly
            busy.set()  # always inside one, and takes the GIL back within milliseconds of finalization starting
            while True:
                torch.mm(a, a)

        threading.Thread(target=work, daemon=True).start()
        busy.wait()
        time.sleep(0.05)
        print("work written", end="")  # left in the stdout buffer: a pipe is block-buffered
        exit_launched_process(int(sys.argv[2]))
        print(" / returned", end="")
    """)


def _run(tmp_path, world_size: str | None, code: int = 0) -> tuple[subprocess.CompletedProcess, int]:
    script = tmp_path / "ends.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env.update(OMP_NUM_THREADS="1", **({"WORLD_SIZE": world_size} if world_size else {}))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "child.pid"), str(code)], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, int((tmp_path / "child.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] if os.path.exists(f"/proc/{pid}") else "X"
    return status not in ("Z", "X")  # a zombie has ended


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="3.14 parks such threads instead of unwinding them")
def test_a_busy_torch_thread_aborts_finalization(tmp_path):
    """The precondition: without the exit (one process), finalization aborts a run whose work is done."""
    proc, child = _run(tmp_path, None)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr)
    assert "terminate called without an active exception" in proc.stderr
    assert proc.stdout.startswith("work written / returned")


@pytest.mark.parametrize("code", [0, 2])
def test_launched_process_exits_with_its_code_flushed_and_children_stopped(tmp_path, code):
    proc, child = _run(tmp_path, "2", code)
    assert proc.returncode == code, proc.stderr
    assert "terminate called" not in proc.stderr
    assert proc.stdout == "work written"  # flushed, and nothing ran after the exit: no finalization (atexit)
    assert not _alive(child)  # the daemonic child was stopped, as the interpreter's exit stops it
