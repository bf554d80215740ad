"""Rows of an array stored at a fixed offset in a byte source (``.npy``, raw binary, ``.npz`` members).

C-order rows ``[a, b)`` are one contiguous byte range: one ``read_into`` straight into the
destination. Where the bytes live (a local file, a remote object) is the byte source's business.
"""

from __future__ import annotations

import math

import numpy as np

from .._storage import ByteSource, byte_view, open_bytes
from .layout import ArrayLayout, check_fits, native_dtype
from .source import SourceBase

__all__ = ["FileSource"]


class FileSource(SourceBase):
    """Rows of an array stored at a fixed offset in a file or object.

    C-order rows ``[a, b)`` are one contiguous byte range: a single read into the destination.
    Fortran-order rows are strided through the whole file, so each of the ``prod(shape[1:])``
    columns costs one read; convert such files to C order for speed (see the README).
    Big-endian (non-native) data is byte-swapped in place after the read.
    """

    def __init__(self, layout: ArrayLayout, data: ByteSource | None = None):
        check_fits(layout)
        self.layout = layout
        self.name = layout.name
        self.shape = layout.shape
        self.dtype = native_dtype(layout.dtype)
        self._swap = self.dtype != layout.dtype
        self.data = open_bytes(layout.path) if data is None else data
        self._row_bytes = layout.row_bytes
        # Fortran and C order lay bytes out alike only when at most one dimension exceeds 1: a
        # single row of shape (2, 2) is contiguous, but its elements are still in Fortran order.
        self._strided = layout.order == "F" and sum(n > 1 for n in layout.shape) > 1

    def __reduce__(self):
        return (FileSource, (self.layout, self.data))

    def close(self) -> None:
        self.data.close()

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        if self._strided:
            self._read_fortran(start, stop, out)
            return
        self.data.read_into(self.layout.offset + start * self._row_bytes, byte_view(out))
        if self._swap:
            self._to_native(out)

    def _to_native(self, out: np.ndarray) -> None:
        stored = out.view(self.layout.dtype)
        if self.dtype.names is None and self.dtype.subdtype is None:
            stored.byteswap(inplace=True)
        else:
            # Structured or subarray dtypes: let numpy convert field by field.
            out[...] = stored.copy()

    def _read_fortran(self, start: int, stop: int, out: np.ndarray) -> None:
        rows, stored = stop - start, self.layout.dtype
        columns = math.prod(self.shape[1:])
        itemsize = stored.itemsize
        # Column j of the file holds element (i, j) for every row i, contiguously.
        gathered = np.empty(rows * columns, dtype=stored)
        view = byte_view(gathered)
        column_bytes = rows * itemsize
        base = self.layout.offset + start * itemsize
        stride = self.shape[0] * itemsize
        for column in range(columns):
            part = view[column * column_bytes : (column + 1) * column_bytes]
            self.data.read_into(base + column * stride, part)
        out[...] = np.ndarray((rows, *self.shape[1:]), dtype=stored, buffer=gathered, order="F")
