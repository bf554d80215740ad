"""``npstream.batches``: the framework-neutral stream of numpy batches every adapter shares.

One iteration of a :class:`Batches` is one epoch: batches as numpy arrays (or tuples/dicts of
them, exactly the structure ``npstream.tf.dataset`` gives), read a window at a time with the
next windows read ahead in the background. Epochs are numbered; the order of epoch ``e``
depends on ``(seed, e)`` alone, so a position is two integers, ``(epoch, batch)``, and resuming
one reads the window that holds the batch and skips the batches before it in memory: no replay.

Epochs advance by themselves: every ``iter()`` starts the epoch after the one the previous
``iter()`` started, whether or not that one was finished (as Keras, which takes exactly
``len()`` batches and never exhausts the iterator, and PyTorch's ``DataLoader`` expect).
``set_epoch`` and ``restore`` choose where the next ``iter()`` starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .._errors import UsageError
from .readahead import ReadAhead
from .stream import StreamSpec, make_stream
from .window import WindowReader

__all__ = ["STATE_FORMAT", "Batches", "batches"]

STATE_FORMAT = "npstream.batches/1"


class Batches:
    """One epoch of batches per iteration; see the module docstring.

    Batches are writable numpy arrays whose data start on 64-byte boundaries. They are views
    of reusable window buffers: a buffer is reused only once nothing refers to any of its
    batches any more, so keeping a batch is safe (it keeps its window's memory alive).
    """

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self._reader = WindowReader(spec, align_batches=True)
        self._ahead = ReadAhead(self._reader)
        self._next_epoch = 0
        self._next_batch = 0
        self._position: tuple[int, int] | None = None  # (epoch, batches yielded) of the latest iteration

    # -- sizes -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches in every epoch (of this shard)."""
        return self.spec.num_batches

    @property
    def memory_budget(self) -> int:
        """The memory budget in force, in bytes (``"auto"`` resolved)."""
        return self.spec.memory_budget

    @property
    def seed(self) -> int:
        return self.spec.seed

    # -- epochs ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` yields."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` yield epoch ``epoch`` from its first batch."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise UsageError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._next_epoch, self._next_batch = int(epoch), 0

    def __iter__(self) -> Iterator[Any]:
        epoch, first = self._next_epoch, self._next_batch
        self._next_epoch, self._next_batch = epoch + 1, 0
        self._position = (epoch, first)
        return self._epoch(epoch, first)

    def _epoch(self, epoch: int, first: int) -> Iterator[Any]:
        plan = self.spec.plan
        if first >= plan.num_batches:
            return
        window, skip = plan.window_of_batch(first)
        produced = first
        for w in range(window, plan.num_windows):
            leaves = self._ahead.get(epoch, w)
            assert isinstance(leaves, list)
            for k in range(skip, len(leaves[0]) if leaves else 0):
                element = self.spec.element([leaf[k] for leaf in leaves])
                produced += 1
                self._position = (epoch, produced)
                yield element
            skip = 0

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Where the latest iteration stands, as a small JSON-able dict for :meth:`restore`.

        Taken between batches it names the next batch; after an epoch's last batch, the start
        of the next epoch. Before any iteration it is where the first ``iter()`` will start.
        """
        if self._position is None:
            epoch, batch = self._next_epoch, self._next_batch
        else:
            epoch, batch = self._position
            if batch >= len(self):
                epoch, batch = epoch + 1, 0
        return {"format": STATE_FORMAT, "epoch": epoch, "batch": batch, "dataset": self.spec.identity()}

    def restore(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue exactly where ``state`` was taken."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError(
                f"not an npstream.batches state (expected a dict with format {STATE_FORMAT!r}, "
                f"got {state!r:.200})"
            )
        mine = self.spec.identity()
        theirs = state.get("dataset", {})
        differ = [key for key in mine if theirs.get(key) != mine[key]]
        if differ:
            details = ", ".join(f"{key} {theirs.get(key)!r} here {mine[key]!r}" for key in differ)
            raise UsageError(
                f"this state was saved from a different dataset ({details}); restore it into a "
                "stream built from the same files with the same batch_size, shuffle, seed, shards "
                "and memory_budget"
            )
        epoch, batch = state.get("epoch"), state.get("batch")
        for name, value in (("epoch", epoch), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"state[{name!r}] must be an integer >= 0, got {value!r}")
        assert isinstance(epoch, int) and isinstance(batch, int)
        if batch > len(self):
            raise UsageError(f"state['batch'] is {batch}, but an epoch here has {len(self)} batches")
        if batch == len(self):
            epoch, batch = epoch + 1, 0
        self._next_epoch, self._next_batch = epoch, batch
        self._position = None

    def __repr__(self) -> str:
        plan = self.spec.plan
        return (
            f"Batches({len(self)} batches of {plan.batch_size} rows per epoch, shuffle={plan.shuffle!r}, "
            f"epoch={self.epoch}, memory_budget={self.memory_budget})"
        )


def batches(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool | str = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    memory_budget: int | str = "auto",
) -> Batches:
    """Stream ``data`` as numpy batches of ``batch_size`` rows: one iteration per epoch.

    ``data`` is a path (or list/glob of shards, or an npstream source); a tuple of them gives
    tuple elements and a dict gives dict elements, aligned row by row; structured dtypes become
    dicts of their fields. ``shuffle=True`` visits ~1 MB blocks in a seeded random order and
    mixes rows within windows of many blocks; ``shuffle="global"`` is a uniform permutation.
    Epoch ``e``'s order depends on ``(seed, e)`` alone (``seed=None`` draws one at random).
    ``num_shards``/``shard_index`` pick a disjoint part of every epoch (the README states the
    exact rule, with ``drop_remainder``). ``memory_budget`` bounds npstream's buffers
    (``"auto"``: see the README).
    """
    return Batches(
        make_stream(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            num_shards=num_shards,
            shard_index=shard_index,
            memory_budget=memory_budget,
        )
    )
