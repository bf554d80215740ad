"""One rank of the two-process ``torch.distributed`` test (``test_torch.py``).

Run as ``python torch_worker.py PATH OUT PORT RANK WORLD SEED EPOCHS``. Joins a gloo process group
on 127.0.0.1, builds ``npstream.torch.dataset`` without shard arguments (they must come from the
process group), trains a one-layer DDP model for ``EPOCHS`` epochs with an all-reduce per step
(a rank with more steps than the other would hang: the test's timeout catches it), and writes
what it saw to ``OUT`` as JSON: per epoch, the row ids in order and the step count.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    port, rank, world, seed, epochs = map(int, sys.argv[3:8])
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    import npstream.torch as nt

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = nt.dataset(path, batch_size=8, shuffle=True, seed=seed, memory_budget="64KB")
        loader = DataLoader(ds, batch_size=None)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
        seen = []
        for _ in range(epochs):
            rows, steps = [], 0
            for batch in loader:
                assert batch.shape == (8, 2), batch.shape
                rows += batch[:, 0].long().tolist()
                optimizer.zero_grad()
                model(batch).sum().backward()  # DDP all-reduces the gradients: steps must match
                optimizer.step()
                steps += 1
            seen.append({"rows": rows, "steps": steps, "len": len(loader)})
        with open(out, "w") as fp:
            json.dump({"epochs": seen, "shard": [ds.spec.plan.shard_index, ds.spec.plan.num_shards]}, fp)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
