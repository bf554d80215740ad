"""Reading one window of an epoch plan into the arrays an adapter hands on.

A window is read once per call: its segments into a scratch buffer (or straight into the output
when no reordering is needed), reordered by the plan's ``gather``, and split into *leaves*: one
array per field of a structured dtype (nested structs give nested paths), each shaped
``(batches, batch_rows, *leaf_row_shape)`` so the adapter can take batches off its first axis.
Output arrays come from a :class:`~npstream._core.pool.BufferPool`, so a consumer may keep them
without copying and they are reused once released; with ``align_batches`` every batch starts on a
64-byte boundary (for frameworks that alias aligned memory instead of copying it).
"""

from __future__ import annotations

import threading

import numpy as np

from .pool import BufferPool, aligned_empty
from .reader import gather_rows, read_segments
from .stream import WINDOWS_ALIVE, StreamSpec

__all__ = ["WindowReader"]


class WindowReader:
    """``read(epoch, window)`` -> the window's leaves, for every source in order."""

    def __init__(self, spec: StreamSpec, *, align_batches: bool = False, keep_buffers: int = WINDOWS_ALIVE):
        self.spec = spec
        self.align_batches = align_batches
        self._pool = BufferPool(keep=keep_buffers)
        self._scratch = threading.local()

    def _scratch_for(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A per-thread buffer that never leaves this module, reused call after call."""
        cache = self._scratch.__dict__.setdefault("arrays", {})
        key = (shape, dtype.str if dtype.names is None else str(dtype.descr))
        if key not in cache:
            cache.clear()  # one window shape at a time per thread (the last window is smaller)
            cache[key] = aligned_empty(shape, dtype)
        return cache[key]

    def read(self, epoch: int, window: int) -> list[np.ndarray]:
        spec = self.spec
        win = spec.plan.window(spec.epoch_seed(epoch), window)
        batch_rows = min(spec.plan.batch_size, win.rows)
        batches = win.rows // batch_rows if batch_rows else 0
        out: list[np.ndarray] = []
        for index, source in enumerate(spec.sources):
            row_shape = tuple(source.shape[1:])
            if source.dtype.names is None and win.gather is None:
                # Nothing to reorder or split: read straight into the array handed on.
                target = self._pool.get((batches, batch_rows, *row_shape), source.dtype, self.align_batches)
                out.append(read_segments(source, win.segments, target))
                continue
            rows = self._scratch_for((win.rows, *row_shape), source.dtype)
            read_segments(source, win.segments, rows.reshape(1, *rows.shape))
            for leaf in (leaf for leaf in spec.leaves if leaf.source == index):
                values = rows
                for name in leaf.path:
                    values = values[name]
                shape = (batches, batch_rows, *leaf.row_shape)
                target = self._pool.get(shape, leaf.dtype, self.align_batches)
                if win.gather is None:
                    target[...] = values.reshape(batches, batch_rows, *leaf.row_shape)
                else:
                    gather_rows(values, win.gather, target)
                out.append(target)
        return out
