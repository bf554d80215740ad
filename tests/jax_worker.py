"""A JAX process for ``test_jax.py``: several CPU devices, and optionally one of several processes.

Run as ``python jax_worker.py PATH OUT DEVICES [PORT PROCESS_ID PROCESSES]`` (``XLA_FLAGS`` is set
here, before JAX starts). Iterates ``npstream.jax.batches`` over a mesh of every device of every
process, sharded along the batch axis, for two epochs, and writes what it saw to ``OUT`` as JSON:
per epoch, for each step, the row ids of this process's part of the global batch (from its
addressable shards, in global row order) and, when collectives work across processes, the global
batch's row-id sum computed on the devices (every process must agree on it).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    path, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if len(sys.argv) > 4:
        port, process_id, processes = map(int, sys.argv[4:7])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import npstream.jax as nj

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    stream = nj.batches(path, sharding=sharding, batch_size=16, shuffle=True, seed=21, memory_budget="64KB")
    total = jax.jit(lambda x: x[:, 0].sum())
    epochs = []
    for _ in range(2):
        steps = []
        for batch in stream:
            assert batch.shape == (16, 2) and batch.sharding == sharding
            shards = sorted(batch.addressable_shards, key=lambda s: s.index[0].start or 0)
            rows = np.concatenate([np.asarray(s.data)[:, 0] for s in shards]).astype(np.int64).tolist()
            steps.append({"rows": rows, "sum": float(total(batch))})
        epochs.append(steps)
    result = {
        "epochs": epochs,
        "process": [jax.process_index(), jax.process_count()],
        "shard": [stream.local.spec.plan.shard_index, stream.local.spec.plan.num_shards],
        "state": stream.state(),
    }
    with open(out, "w") as fp:
        json.dump(result, fp)
    if len(sys.argv) > 4:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
