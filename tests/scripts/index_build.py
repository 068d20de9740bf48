"""`HViTIndex.build` / `add` under `accelerate launch`, with a slow embedder (so a test can kill it midway).

    accelerate launch ... index_build.py MODEL_DIR SOURCE INDEX SECONDS_PER_BATCH {build|add} SHARD_SIZE

Writes INDEX.world-<rank> (the world size each rank saw) and INDEX.pid-<rank> (the launcher starts each
rank in its own session, so killing the launcher's process group leaves the ranks running).
"""

import os
import sys
import time
from pathlib import Path

from modeling_hvit.distributed import exit_launched_process
from modeling_hvit.search import Embedder, HViTIndex
from modeling_hvit.search.sharding import ProcessGroup

model_dir, source, index, delay, action, shard_size = sys.argv[1:7]
group = ProcessGroup()
Path(f"{index}.world-{group.rank}").write_text(str(group.world))
Path(f"{index}.pid-{group.rank}").write_text(str(os.getpid()))
inner = Embedder.from_model(model_dir)


def slow(images):
    time.sleep(float(delay))
    return inner.embed_fn(images)


emb = Embedder(slow, inner.geometry, inner.curvature, inner.fingerprint, inner.model_id, inner.processor)
if action == "build":
    HViTIndex.build(source, index, embedder=emb, shard_size=int(shard_size), batch_size=3)
else:
    HViTIndex.add(index, source, embedder=emb, shard_size=int(shard_size), batch_size=3)
print(f"rank {group.rank} done")

exit_launched_process(0)  # as the CLIs end: no interpreter finalization under the launcher
