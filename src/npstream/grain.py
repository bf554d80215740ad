"""``npstream.grain.dataset``: any source as a Grain ``MapDataset`` whose elements are batches.

Grain's cost is per element (about 0.1 ms of Python for each ``__getitem__``, plus a ``np.stack``
per batch in ``.batch()``): rows as elements of 1 KiB deliver 0.035-0.05 GiB/s here, whole
batches as elements about 1 GiB/s. So an element here is a batch, exactly as
``npstream.batches`` yields it (an array, or a tuple/dict of arrays), and Grain's own
transformations (``.map``, ``.repeat``, ``to_iter_dataset``, ``mp_prefetch``, checkpoints) work
on batches.

How it is built, and why:

* Index ``i`` is batch ``i % len(ds)`` of epoch ``i // len(ds)``: Grain's own rule for
  ``MapDataset`` (its ``shuffle`` reseeds each epoch the same way), so ``ds.repeat()`` gives epoch
  after epoch, each in the order ``npstream.batches`` gives it for ``(seed, epoch)``, and an
  iterator's state is one integer (``{"next_index": k}``) that resumes exactly.
* Random access comes from :class:`~npstream._core.batches.BatchAccess`: the window holding the
  batch is read once, with the next windows read ahead, and shared by Grain's reader threads.
  Each element is a copy of its batch, since an indexed dataset may serve an index twice.
* ``mp_prefetch`` workers: by default Grain gives worker ``i`` of ``W`` the elements ``i::W``, so
  the output order is exactly the order without workers, but every worker reads every window
  (``W`` times the reads). With ``mp_prefetch(options, sequential_slice=True)`` Grain hands each
  worker its slice through ``set_slice`` (its in-place slicing protocol), and worker ``i`` serves
  the batches of windows ``i, i+W, ...`` only: the same batches, each window read once, in an
  interleaved order. Grain's datasets above this one keep the lengths they computed before the
  slice, so use it with ``.repeat()`` (endless) or no repeat, not ``.repeat(n)``.
* Workers are spawned and receive the pipeline by pickle: the dataset pickles as its
  description (sources as paths), never as data or buffers.

Threads usually beat worker processes for plain reads (npstream reads on its own threads, and
each worker batch is copied through shared memory); ``ReadOptions(num_threads=2..4,
prefetch_buffer_size=...)`` bounds what Grain holds: its default buffer is 500 elements, which are
whole batches here.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ._core.batches import BatchAccess, Share
from ._core.stream import StreamSpec, make_stream
from ._errors import UsageError

try:
    import grain
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npstream.grain needs Grain: pip install 'npstream[grain]' (or grain)") from exc

__all__ = ["dataset"]


class NpstreamMapDataset(grain.MapDataset):
    """Batches of ``npstream`` as a Grain ``MapDataset``; see the module docstring."""

    def __init__(self, spec: StreamSpec, share: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        self.spec = spec
        self._share = share
        self._lock = threading.Lock()
        self._access: tuple[int, BatchAccess] | None = None
        self._length = len(Share(spec.plan, *share))

    def _batches(self) -> BatchAccess:
        """This process's reader (a spawned worker builds its own)."""
        with self._lock:
            if self._access is None or self._access[0] != os.getpid():
                self._access = (os.getpid(), BatchAccess(self.spec, share=self._share))
            return self._access[1]

    def __len__(self) -> int:
        """Batches per epoch (of this shard, or of this worker's share of it)."""
        return self._length

    @property
    def memory_budget(self) -> int:
        return self.spec.memory_budget

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise UsageError(f"index must be an integer >= 0, got {index!r}")
        if not self._length:
            raise UsageError(f"{self}: this shard has no batches")
        epoch, batch = divmod(int(index), self._length)
        return self._batches().get(epoch, batch)

    def _getitems(self, indices: Any) -> list[Any]:
        return [self[index] for index in indices]

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's in-place slicing for worker ``i`` of ``W`` (``slice(i, None, W)``): whole windows."""
        del sequential_slice  # either way this worker serves whole windows (module docstring)
        index, count = sl.start or 0, sl.step or 1
        if sl.stop is not None or not 0 <= index < count:
            raise UsageError(f"npstream.grain: cannot slice a dataset by {sl!r}; expected slice(i, None, W)")
        if self._share != (0, 1):
            raise UsageError("npstream.grain: this dataset is already split among workers")
        self._share = (index, count)
        with self._lock:
            self._access = None
        self._length = len(Share(self.spec.plan, index, count))

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get the description (sources pickle as paths), not readers or buffers.
        state = self.__dict__.copy()
        state["_access"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __str__(self) -> str:
        plan = self.spec.plan
        share = "" if self._share == (0, 1) else f", worker {self._share[0]} of {self._share[1]}"
        return (
            f"npstream.grain.dataset({self._length} batches of {plan.batch_size} rows per epoch, "
            f"shuffle={plan.shuffle!r}, seed={self.spec.seed}, shard {plan.shard_index} of "
            f"{plan.num_shards}{share})"
        )


def dataset(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool | str = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    memory_budget: int | str = "auto",
) -> NpstreamMapDataset:
    """Stream ``data`` as a Grain ``MapDataset`` of batches: the arguments and the batches of
    :func:`npstream.batches`; element ``i`` is batch ``i % len`` of epoch ``i // len``.

    Use ``.repeat()`` for several epochs, ``.to_iter_dataset(grain.ReadOptions(...))`` to
    iterate with a few threads, and ``.mp_prefetch(options, sequential_slice=True)`` for worker
    processes that read whole windows each. For several hosts pass
    ``num_shards=jax.process_count(), shard_index=jax.process_index()`` (and a ``seed``).
    """
    spec = make_stream(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        num_shards=num_shards,
        shard_index=shard_index,
        memory_budget=memory_budget,
    )
    return NpstreamMapDataset(spec)
