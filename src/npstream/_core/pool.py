"""Reusable output buffers that consumers may keep for a while.

Fresh multi-megabyte arrays cost a page fault per 4 KB page on first touch, and when memory is
returned and requested again at this rate, resident memory balloons (measured: a pipeline that
allocated a new 32 MB window per call ran at a third of the speed and grew RSS by ~290 MB; the
same pipeline reusing buffers grew by ~35 MB; a leak of read-ahead buffers showed up as a third
of the CPU zeroing fresh huge pages). TensorFlow's ``numpy_function`` does not copy a returned
array that is 64-byte aligned: the tensor keeps a reference to the array's memory. So a buffer
may be reused exactly when nothing but the pool refers to its memory, which the owner's
reference count tells.

Every buffer is 64-byte aligned (so the zero-copy path applies), and a caller may ask for a
*skew*: the buffer's address modulo 4096. A window read from a file with ``O_DIRECT`` lands
straight in its buffer when buffer addresses and file offsets agree modulo the page size
(``_storage/direct.py``); the pool keeps a page of slack in every owner to place the view.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

__all__ = ["ALIGN", "PAGE", "BufferPool", "aligned_batches", "aligned_empty"]

ALIGN = 64
PAGE = 4096


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGN``-byte boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    owner = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -owner.ctypes.data % ALIGN
    return owner[skip : skip + nbytes].view(dtype).reshape(shape)


def _batch_stride(shape: tuple[int, ...], dtype: np.dtype) -> int | None:
    """Bytes from one batch to the next when batches must be padded to stay aligned, else None."""
    batch_bytes = math.prod(shape[1:]) * dtype.itemsize
    if batch_bytes % ALIGN == 0 or shape[0] <= 1:
        return None
    return -(-batch_bytes // ALIGN) * ALIGN


def _layout(owner: np.ndarray, start: int, shape: tuple[int, ...], dtype: np.dtype, stride: int | None):
    nbytes = math.prod(shape) * dtype.itemsize if stride is None else shape[0] * stride
    raw = owner[start : start + nbytes]
    if stride is None:
        return raw.view(dtype).reshape(shape)
    inner = [dtype.itemsize]  # C-order strides of one batch, innermost first
    for n in reversed(shape[2:]):
        inner.insert(0, inner[0] * n)
    return np.ndarray(shape, dtype=dtype, buffer=raw, strides=(stride, *inner[: len(shape) - 1]))


def aligned_batches(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised ``(batches, batch_rows, ...)`` array in which every batch is aligned.

    Batches whose size is a multiple of ``ALIGN`` are simply consecutive (a C-contiguous
    array); otherwise each batch starts ``ALIGN``-aligned after some padding, and only each
    ``array[k]`` is contiguous.
    """
    stride = _batch_stride(shape, dtype)
    nbytes = math.prod(shape) * dtype.itemsize if stride is None else shape[0] * stride
    owner = np.empty(nbytes + ALIGN, dtype=np.uint8)
    return _layout(owner, -owner.ctypes.data % ALIGN, shape, dtype, stride)


class BufferPool:
    """Hands out arrays of a given shape and dtype, reusing memory no one else holds.

    The pool keeps *owners* (flat byte arrays) and hands out views of them. When a consumer,
    such as a TensorFlow tensor, still holds a view, the owner's reference count is above what
    it is when only the pool holds it, and the owner is skipped. At most ``keep`` owners are
    kept per size; beyond that, new arrays are simply allocated and left to the garbage
    collector.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._lock = threading.Lock()
        self._free: dict[int, list[np.ndarray]] = {}

    def get(
        self, shape: tuple[int, ...], dtype: np.dtype, align_batches: bool = False, skew: int | None = None
    ) -> np.ndarray:
        """A buffer of ``shape``: padded batches with ``align_batches`` (see
        :func:`aligned_batches`), at an address that is ``skew`` modulo ``PAGE`` if given (a
        multiple of ``ALIGN``; contiguous layouts only)."""
        stride = _batch_stride(shape, dtype) if align_batches else None
        nbytes = math.prod(shape) * dtype.itemsize if stride is None else shape[0] * stride
        size = nbytes + PAGE  # room to place the view at any skew
        with self._lock:
            owners = self._free.setdefault(size, [])
            for owner in owners:
                # Idle: referenced only by the pool's list, this loop's name and getrefcount.
                if sys.getrefcount(owner) == 3:
                    break
            else:
                owner = np.empty(size, dtype=np.uint8)
                if len(owners) < self.keep:
                    owners.append(owner)
        address = owner.ctypes.data
        placed = skew is not None and stride is None
        start = (skew - address) % PAGE if placed else -address % ALIGN  # type: ignore[operator]
        return _layout(owner, start, shape, dtype, stride)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
