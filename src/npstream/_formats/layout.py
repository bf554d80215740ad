"""What describes an array on disk: :class:`ArrayLayout`, plain data with no open file.

A layout says where the bytes of an array are (``path``, ``offset``), how they are laid out
(``dtype`` as stored, ``shape``, ``order``) and where the description came from (``format``,
``header_version``, ``member``). Parsers in ``_npy``, ``_npz`` and ``_raw`` produce layouts;
:func:`check_fits` is the file-level consistency check every source runs at open.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._errors import FormatError

__all__ = ["ArrayLayout", "check_fits", "check_dtype", "native_dtype"]

Order = Literal["C", "F"]


@dataclass(frozen=True, slots=True)
class ArrayLayout:
    """Where an array's bytes are in a file and how to interpret them."""

    path: str
    """The file holding the bytes (for ``.npz``, the zip archive)."""
    format: str
    """``"npy"``, ``"raw"``, ``"npz"`` or ``"hdf5"``."""
    dtype: np.dtype
    """The element type as stored, including its byte order."""
    shape: tuple[int, ...]
    """The array's shape; axis 0 is the row axis."""
    order: Order
    """``"C"`` (rows are contiguous) or ``"F"`` (columns are contiguous)."""
    offset: int
    """Byte offset of element 0 within ``path``; -1 where bytes are not addressable (HDF5 chunks)."""
    file_bytes: int
    """Size of ``path`` when it was described."""
    header_version: tuple[int, int] | None = None
    """``.npy`` header version, ``None`` for other formats."""
    member: str | None = None
    """The ``.npz`` member or HDF5 dataset path, ``None`` for plain files."""

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        return self.shape[0] * self.row_bytes

    @property
    def name(self) -> str:
        """How messages name the array: the path, with the member if there is one."""
        return f"{self.path}[{self.member}]" if self.member else self.path


def check_dtype(dtype: np.dtype, name: str) -> None:
    """Refuse dtypes whose bytes are not the values: objects (pickles) and void without fields."""
    if dtype.hasobject:
        raise FormatError(
            f"{name}: dtype {dtype} holds Python objects, which would need unpickling to read; "
            "npstream never unpickles. Save the data with a fixed-size dtype (numbers, 'S'/'U' "
            "strings or a structured dtype) instead"
        )


def check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) == 0:
        raise FormatError(
            f"{name}: the array is 0-dimensional (a single value), so it has no rows to stream; "
            "load it with numpy.load instead"
        )
    bad = [n for n in shape if not isinstance(n, int) or isinstance(n, bool) or n < 0]
    if bad:
        raise FormatError(
            f"{name}: shape {shape} has invalid dimension(s) {bad}; dimensions are integers >= 0"
        )


def check_fits(layout: ArrayLayout) -> None:
    """Raise :class:`FormatError` if ``layout`` claims more bytes than its file (or any array) holds."""
    # numpy refuses to allocate even an empty array whose nonzero dimensions multiply past the
    # address space, so such a shape is corrupt, not merely truncated (and would fail on read).
    extent = math.prod(max(n, 1) for n in layout.shape) * max(layout.dtype.itemsize, 1)
    if extent > sys.maxsize:
        raise FormatError(
            f"{layout.name}: shape {layout.shape} of {layout.dtype.itemsize}-byte {layout.dtype} "
            f"items spans about 2**{extent.bit_length() - 1} bytes, more than any array or file "
            "can hold (2**63 - 1 bytes); the header (or the shape= and dtype= given) is corrupt"
        )
    end = layout.offset + layout.data_bytes
    if end <= layout.file_bytes:
        return
    present = max(layout.file_bytes - layout.offset, 0)
    row_bytes = layout.row_bytes
    rows_present = present // row_bytes if row_bytes else 0
    if layout.order == "C" or len(layout.shape) == 1:
        rows_note = f"the file holds {rows_present} complete rows"
    else:
        rows_note = "Fortran order spreads every row across the file, so no row is complete"
    raise FormatError(
        f"{layout.name}: header says {layout.shape[0]} rows x {row_bytes} bytes "
        f"({layout.data_bytes} bytes from offset {layout.offset}) but only {present} bytes are "
        f"there ({layout.data_bytes - present} missing); {rows_note}. The file is truncated "
        "(was it still being written or copied?)"
    )


def native_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` with every field in native byte order, keeping offsets and itemsize."""
    if dtype.names is not None:
        fields = dtype.fields
        assert fields is not None
        spec: dict[str, list] = {"names": [], "formats": [], "offsets": [], "titles": []}
        for field in dtype.names:
            sub, offset, *title = fields[field]
            spec["names"].append(field)
            spec["formats"].append(native_dtype(sub))
            spec["offsets"].append(offset)
            spec["titles"].append(title[0] if title else None)
        if not any(spec["titles"]):
            del spec["titles"]
        spec["itemsize"] = dtype.itemsize  # type: ignore[assignment]
        native = np.dtype(spec, align=dtype.isalignedstruct)  # type: ignore[call-overload]
        return dtype if native == dtype else native
    if dtype.subdtype is not None:
        base, sub_shape = dtype.subdtype
        native_base = native_dtype(base)
        return dtype if native_base == base else np.dtype((native_base, sub_shape))
    if dtype.byteorder in "=|":
        return dtype
    return dtype.newbyteorder("=")
