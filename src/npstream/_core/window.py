"""Reading one window of an epoch plan into the arrays a framework adapter hands on.

A window is read once per call: its segments into a scratch buffer (or straight into the output
when no reordering is needed), reordered by the plan's ``gather``, and split into *leaves*: one
array per field of a structured dtype (nested structs give nested paths), each shaped
``(batches, batch_rows, *leaf_row_shape)`` so the adapter can slice batches off its first axis.
Output arrays come from a :class:`~npstream._pool.BufferPool`, so a consumer may keep them
without copying and they are reused once released.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._formats.source import ArraySource
from .plan import EpochPlan
from .pool import BufferPool, aligned_empty
from .reader import gather_rows, read_segments

__all__ = ["Leaf", "WindowReader", "leaf_tree"]


@dataclass(frozen=True, slots=True)
class Leaf:
    """One array of an element: a (possibly nested) field of one source."""

    source: int
    """Index of the source the leaf comes from."""
    path: tuple[str, ...]
    """Field names from the source's dtype down to this leaf; ``()`` for a plain dtype."""
    dtype: np.dtype
    """The leaf's element type (native byte order; 'U' strings are handed on as utf-8 'S')."""
    row_shape: tuple[int, ...]
    """Shape of one row of the leaf, including subarray dimensions of its field."""


def leaf_tree(source: int, dtype: np.dtype, row_shape: tuple[int, ...], path: tuple[str, ...] = ()):
    """A :class:`Leaf`, or nested dicts of them mirroring a structured ``dtype``."""
    if dtype.names is not None:
        fields = dtype.fields
        assert fields is not None
        return {
            name: leaf_tree(source, fields[name][0], row_shape, (*path, name)) for name in dtype.names
        }
    if dtype.subdtype is not None:
        base, sub_shape = dtype.subdtype
        return leaf_tree(source, base, (*row_shape, *sub_shape), path)
    return Leaf(source, path, dtype, row_shape)


def flatten_leaves(tree) -> list[Leaf]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in flatten_leaves(value)]
    return [tree]


class WindowReader:
    """``read(epoch_seed, window)`` -> the window's leaves, for every source in order."""

    def __init__(self, sources: Sequence[ArraySource], plan: EpochPlan, keep_buffers: int = 8):
        self.sources = list(sources)
        self.plan = plan
        self.trees = [leaf_tree(i, s.dtype, tuple(s.shape[1:])) for i, s in enumerate(self.sources)]
        self.leaves = [leaf for tree in self.trees for leaf in flatten_leaves(tree)]
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

    def read(self, epoch_seed: int, window: int) -> list[np.ndarray]:
        win = self.plan.window(epoch_seed, window)
        batch_rows = min(self.plan.batch_size, win.rows)
        batches = win.rows // batch_rows if batch_rows else 0
        out: list[np.ndarray] = []
        for index, source in enumerate(self.sources):
            shape = (win.rows, *source.shape[1:])
            plain = source.dtype.names is None and source.dtype.kind != "U"
            if plain and win.gather is None:
                # Nothing to reorder or split: read straight into the array handed on.
                rows = self._pool.get((batches, batch_rows, *shape[1:]), source.dtype)
                read_segments(source, win.segments, rows.reshape(shape))
                out.append(rows)
                continue
            rows = self._scratch_for(shape, source.dtype)
            read_segments(source, win.segments, rows)
            for leaf in (leaf for leaf in self.leaves if leaf.source == index):
                values = rows
                for name in leaf.path:
                    values = values[name]
                if leaf.dtype.kind == "U":
                    # TensorFlow strings are bytes: hand on utf-8 (a new array; sizes vary).
                    encoded = np.char.encode(values if win.gather is None else values[win.gather], "utf-8")
                    out.append(encoded.reshape(batches, batch_rows, *leaf.row_shape))
                    continue
                target = self._pool.get((batches, batch_rows, *leaf.row_shape), leaf.dtype)
                flat = target.reshape(win.rows, *leaf.row_shape)
                if win.gather is None:
                    flat[...] = values
                else:
                    gather_rows(values, win.gather, flat)
                out.append(target)
        return out
