# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""Building an index with several processes (``accelerate launch``): the plan, the parts, the merge.

The images still to embed (``pending``, in source order) are cut into chunks of ``shard_size``
exactly as one process would cut them; chunk ``j`` becomes shard ``base + j`` of the table, where
``base`` is the table's next shard number. Under ``accelerate launch`` rank ``r`` embeds the chunks
``j ≡ r (mod world)`` and commits each as ``table/parts/shard-<j>.arrow`` (atomic rename, as a
shard). After a barrier rank 0 merges by renaming ``parts/shard-<j>`` to ``table/shard-<base + j>``
(no copy), then builds the vector index from the table; so the merged index is the one-process
build: the same rows in the same order, the same vectors, the same manifest.

``parts/plan.json`` records (base, shard_size, count, digest of the pending ids). A rerun after an
interruption recomputes the plan from the committed table; when it is unchanged the finished parts
are kept and only the missing chunks are embedded (any number of processes), so even the order of
an interrupted-and-resumed build is the uninterrupted one. When it differs (other images given, or
a one-process run meanwhile) the leftover parts are committed first (``adopt_parts``), so no
embedded image is lost or stored twice. The index folder must be on a filesystem every process
sees (one machine, or a shared mount for several nodes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from .store import TABLE_DIR, ShardTable, _atomic_write

PARTS_DIR = f"{TABLE_DIR}/parts"
PLAN = "plan.json"

__all__ = ["PARTS_DIR", "Plan", "ProcessGroup", "adopt_parts", "launched_world_size", "parts_table",
           "prepare_plan", "process_rank"]


def parts_table(index_dir: str | os.PathLike) -> ShardTable:
    """The staging area of a multi-process build: parts named like shards, numbered by chunk."""
    return ShardTable(index_dir, sub=PARTS_DIR)


@dataclass(frozen=True)
class Plan:
    base: int          # table shard number of chunk 0
    shard_size: int
    count: int         # pending images
    digest: str        # SHA-256 of the pending ids, in order

    @property
    def chunks(self) -> int:
        return -(-self.count // self.shard_size)

    @classmethod
    def of(cls, pending_ids: Sequence[str], base: int, shard_size: int) -> "Plan":
        h = hashlib.sha256()
        for i in pending_ids:
            h.update(i.encode("utf-8", "surrogatepass") + b"\0")
        return cls(base, shard_size, len(pending_ids), h.hexdigest())


def _read_plan(index_dir: Path) -> Plan | None:
    path = index_dir / PARTS_DIR / PLAN
    if not path.exists():
        return None
    try:
        return Plan(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # damaged plan: treated as "differs" (the parts are adopted, nothing is lost)


def adopt_parts(index_dir: str | os.PathLike) -> int:
    """Commit the parts left by an interrupted multi-process run into the table, in chunk order
    (``parts/shard-<j>`` → ``table/shard-<base + j>``); returns how many. Called by the writer
    before it computes what is pending."""
    index_dir = Path(index_dir)
    parts, table = parts_table(index_dir), ShardTable(index_dir)
    parts.clean()
    paths = parts.shard_paths()
    plan = _read_plan(index_dir)
    base = plan.base if plan is not None else table.next_number()
    for p in paths:
        # base + j keeps the chunk order; never at or below a committed shard (a merge cut short)
        number = max(base + parts.number(p), table.next_number())
        side = p.with_name(p.name.replace(".arrow", ".skipped.json"))
        target = table.dir / f"shard-{number:05d}"
        if side.exists():
            os.replace(side, target.with_name(target.name + ".skipped.json"))
        os.replace(p, target.with_name(target.name + ".arrow"))  # the commit of this part
    (index_dir / PARTS_DIR / PLAN).unlink(missing_ok=True)
    if parts.dir.exists() and not any(parts.dir.iterdir()):
        parts.dir.rmdir()
    return len(paths)


def prepare_plan(index_dir: str | os.PathLike, item_ids: Sequence[str], shard_size: int) -> Plan:
    """Rank 0, holding the writer lock: the plan of the ids not yet in the table. The parts of an
    unchanged plan are kept (a resumed run embeds only the missing chunks); otherwise they are
    committed first (``adopt_parts``) and the plan is made anew."""
    index_dir = Path(index_dir)
    table = ShardTable(index_dir)

    def current() -> Plan:
        done = table.ids()
        return Plan.of([i for i in item_ids if i not in done], table.next_number(), shard_size)

    plan = current()
    if _read_plan(index_dir) == plan:
        parts_table(index_dir).clean()
        return plan
    if adopt_parts(index_dir):
        plan = current()
    (index_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    _atomic_write(index_dir / PARTS_DIR / PLAN, json.dumps(asdict(plan)))
    return plan


def launched_world_size() -> int:
    """Processes of this run: an initialised process group's size, else the launcher's WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


_OBJECT_GROUP = None


def process_rank() -> int:
    """This process's rank in an initialised process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ProcessGroup:
    """Rank, world size and the few object collectives a sharded build needs.

    Joins the launcher's process group (``accelerate.PartialState``: gloo on CPU, NCCL on GPUs) and
    adds a gloo group with a long timeout for Python objects, so rank 0's merge (which may build an
    HNSW index over millions of rows) does not time out the ranks waiting for it."""

    def __init__(self, timeout: timedelta = timedelta(hours=24)):
        import torch
        import torch.distributed as dist

        self._dist, self.group = dist, None
        if launched_world_size() == 1:  # one process: nothing to join (accelerate's state is left alone)
            self.rank, self.world, self.device = 0, 1, None
            return
        from accelerate import PartialState

        # without cpu=True accelerate starts no process group on a machine without GPUs
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
        if self.world > 1:
            global _OBJECT_GROUP
            if _OBJECT_GROUP is None:  # created once per process (a collective: every rank gets here)
                _OBJECT_GROUP = dist.new_group(backend="gloo", timeout=timeout)
            self.group = _OBJECT_GROUP

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (also a barrier)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj, group=self.group)
        return out
