"""``npstream.torch.dataset``: any source as a PyTorch ``IterableDataset`` of ready batches.

Use it with ``DataLoader(ds, batch_size=None)`` (or torchdata's ``StatefulDataLoader``): every
element is already a whole batch, so PyTorch does no per-row ``__getitem__`` and no collate.

How it is built, and why:

* The neutral core does the work (:class:`~npstream._core.batches.Batches`): windows of many
  batches read with large reads, the next ones read ahead on npstream's threads. Batches are
  ``torch.from_numpy`` of writable, 64-byte aligned buffers: no copy, no read-only warning.
* Epochs advance by themselves. Each ``iter()`` of the dataset (each ``iter(loader)``) is the
  next epoch, also with worker processes. Workers hold copies of the dataset, so the epoch
  counters live in a small shared-memory tensor (as Hugging Face ``datasets`` shares its epoch
  with persistent workers), one counter per worker of each worker count: a fresh set of workers
  (``persistent_workers=False``) continues from the epoch the previous set reached, and
  ``set_epoch`` in the main process reaches running persistent workers too.
* Workers split an epoch by windows: with ``W`` workers, worker ``i`` reads windows ``i, i+W,
  ...`` (:class:`~npstream._core.batches.Share`), so no window is read twice, and the
  ``DataLoader`` takes one batch from each worker in turn. The batches are those of
  ``npstream.batches`` with the same arguments, in that interleaved order.
* Checkpoints follow torchdata's ``Stateful`` protocol (``state_dict``/``load_state_dict``),
  which ``StatefulDataLoader`` calls in the process that iterates (each worker saves its own
  share's position). A state is a few integers; restoring reads only the window that holds the
  next batch. A state taken after the last batch of an epoch restores to the end of that epoch
  (the restored iteration yields nothing more, the next one is the next epoch), as
  ``StatefulDataLoader`` expects.
* Shards default to ``torch.distributed``'s rank and world size when a process group is
  initialised, with ``drop_remainder=True`` there: every rank then yields the same number of
  full batches, since a rank with one batch more waits forever in its last all-reduce.

Worker processes cost more than they give for plain reads: each batch a worker yields is copied
into a new shared-memory segment and unpickled in the main process (measured about 1 ms per
256 KiB batch on a 2-core machine), while npstream's reads already run on threads that release
the GIL. ``num_workers=0`` is the fast default; use workers for heavy per-batch Python work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._core.batches import Batches, map_arrays
from ._core.stream import StreamSpec, make_stream
from ._errors import UsageError

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npstream.torch needs PyTorch: pip install 'npstream[torch]' (or torch)") from exc

__all__ = ["MAX_WORKERS", "dataset"]

MAX_WORKERS = 64
"""Most DataLoader workers one dataset serves (one shared epoch counter per worker)."""

# Counter ``_slot(i, W)`` is the next epoch of worker i of W (0 of 1: the main process).
_SLOTS = MAX_WORKERS * (MAX_WORKERS + 1) // 2
_TORCH_KINDS = "biufc"


def _slot(index: int, count: int) -> int:
    return count * (count - 1) // 2 + index


def _as_tensor(array: np.ndarray) -> Any:
    # Aligned, writable buffers: from_numpy shares them (strings stay numpy arrays).
    return torch.from_numpy(array) if array.dtype.kind in _TORCH_KINDS else array


def _as_tensors(element: Any) -> Any:
    return map_arrays(_as_tensor, element)


class NpstreamDataset(IterableDataset):
    """Batches of ``npstream`` as tensors; see the module docstring. Built by :func:`dataset`."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self._epochs = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()
        self._resume: tuple[dict[str, Any], bool] | None = None  # for the next iter() here
        self._local: tuple[int, tuple[int, int], Batches] | None = None

    # -- the batches of this process -----------------------------------------------------------
    def _batches(self) -> Batches:
        """This process's :class:`Batches`: the whole shard, or this worker's share of it."""
        info = get_worker_info()
        share = (0, 1) if info is None else (info.id, info.num_workers)
        if share[1] > MAX_WORKERS:
            raise UsageError(
                f"npstream.torch supports up to {MAX_WORKERS} DataLoader workers, got {share[1]}"
            )
        key = (os.getpid(), share)
        if self._local is None or self._local[:2] != key:
            self._local = (*key, Batches(self.spec, share=share))
        return self._local[2]

    def _counter(self, batches: Batches) -> int:
        return _slot(batches.share.index, batches.share.count)

    def __len__(self) -> int:
        """Batches per epoch of this shard (all workers together): ``len(loader)`` is exact."""
        return self.spec.num_batches

    @property
    def memory_budget(self) -> int:
        """The memory budget in force per process, in bytes (``"auto"`` resolved)."""
        return self.spec.memory_budget

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` in this process yields."""
        return int(self._epochs[self._counter(self._batches())])

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` (in this process and in every worker) start epoch ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise UsageError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._epochs.fill_(int(epoch))
        self._resume = None

    def __iter__(self) -> Iterator[Any]:
        batches = self._batches()
        counter = self._counter(batches)
        if self._resume is not None:
            state, ended = self._resume
            self._resume = None
            batches.restore(state)
            if ended:  # the restored epoch has no batch left
                self._epochs[counter] = batches.epoch
                return iter(())
        else:
            batches.set_epoch(int(self._epochs[counter]))
        self._epochs[counter] = batches.epoch + 1
        return map(_as_tensors, iter(batches))

    # -- checkpoints (torchdata's Stateful protocol) -------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this process's iteration stands: a small JSON-able dict for :meth:`load_state_dict`."""
        batches = self._batches()
        if self._resume is not None:
            return self._resume[0]
        position = batches.position
        if position is None:
            batches.set_epoch(int(self._epochs[self._counter(batches)]))
        state = batches.state()
        state["epoch_ended"] = position is not None and position[1] >= len(batches)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue exactly where ``state`` was taken."""
        batches = self._batches()
        try:
            batches.restore(state)  # checks the state now, where the caller can see the error
        except UsageError as exc:
            if isinstance(state, dict) and "share" in str(exc):
                share = state.get("dataset", {}).get("share")
                raise UsageError(
                    f"{exc}; this state was saved by DataLoader worker {share[0]} of {share[1]}: "
                    f"restore it through torchdata's StatefulDataLoader with num_workers={share[1]}"
                    if share
                    else f"{exc}; it was saved without DataLoader workers: restore it with num_workers=0"
                ) from None
            raise
        self._resume = (state, bool(state.get("epoch_ended", False)))

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the description, the shared counters and a pending restore, never the
        # readers, threads or buffers (sources pickle as their path).
        return {"spec": self.spec, "_epochs": self._epochs, "_resume": self._resume, "_local": None}

    def __repr__(self) -> str:
        plan = self.spec.plan
        return (
            f"npstream.torch.dataset({len(self)} batches of {plan.batch_size} rows per epoch, "
            f"shuffle={plan.shuffle!r}, shard {plan.shard_index} of {plan.num_shards})"
        )


def _distributed() -> tuple[int, int] | None:
    """``(world size, rank)`` of the initialised default process group, else None."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size(), distributed.get_rank()
    return None


def dataset(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool | str = False,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    num_shards: int | None = None,
    shard_index: int | None = None,
    memory_budget: int | str = "auto",
) -> NpstreamDataset:
    """Stream ``data`` as a PyTorch ``IterableDataset`` of batches (use ``batch_size=None`` in
    the ``DataLoader``).

    The arguments are those of :func:`npstream.batches`, and the batches are the same (as
    tensors, or tuples/dicts of tensors; string fields stay numpy arrays). Defaults: under an
    initialised ``torch.distributed`` process group, ``num_shards``/``shard_index`` are the world
    size and rank and ``drop_remainder`` is True, so every rank takes as many (full) batches
    as the others; otherwise one shard and ``drop_remainder=False``. Each ``iter()`` is the
    next epoch (``set_epoch`` picks one); ``state_dict``/``load_state_dict`` resume exactly.
    """
    if num_shards is None and shard_index is None:
        num_shards, shard_index = _distributed() or (1, 0)
    elif num_shards is None or shard_index is None:
        raise UsageError("give both num_shards and shard_index, or neither (torch.distributed decides)")
    if drop_remainder is None:
        drop_remainder = isinstance(num_shards, int) and num_shards > 1
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
    return NpstreamDataset(spec)
