"""Raw binary files: the caller supplies what a header would (dtype, shape, offset, order)."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from .._errors import FormatError, UsageError
from .._storage import ByteSource
from .layout import ArrayLayout, check_dtype

__all__ = ["describe_raw"]


def _as_dtype(dtype: object, path: str) -> np.dtype:
    try:
        return np.dtype(dtype)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: dtype {dtype!r} is not a numpy dtype ({exc})") from exc


def _as_shape(shape: int | Sequence[int] | None, path: str) -> tuple[int, ...]:
    if shape is None:
        return (-1,)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise UsageError(f"{path}: shape {shape!r} must be a sequence of integers") from None
    if not dims:
        raise UsageError(f"{path}: shape () has no rows; give at least one dimension")
    if sum(n == -1 for n in dims) > 1 or any(n < -1 for n in dims):
        raise UsageError(
            f"{path}: shape {dims} is invalid; dimensions are >= 0, and at most one may be -1"
        )
    return dims


def describe_raw(
    data: ByteSource,
    *,
    dtype: object,
    shape: int | Sequence[int] | None = None,
    offset: int = 0,
    order: str = "C",
) -> ArrayLayout:
    """The layout of a headerless file; ``-1`` in ``shape`` is inferred from the file size."""
    path = data.name
    stored = _as_dtype(dtype, path)
    check_dtype(stored, path)
    if stored.itemsize == 0:
        raise UsageError(f"{path}: dtype {stored} has size 0; give a sized dtype such as 'S8'")
    dims = _as_shape(shape, path)
    if stored.subdtype is not None:
        # numpy expands a subarray dtype into extra dimensions, so rows could not have this dtype.
        base, sub_shape = stored.subdtype
        raise UsageError(
            f"{path}: dtype {stored} is a subarray dtype; give its element type and put the "
            f"subarray in the shape instead: dtype={base.str!r}, shape={(*dims, *sub_shape)}"
        )
    if order not in ("C", "F"):
        raise UsageError(f"{path}: order must be 'C' or 'F', got {order!r}")
    offset = operator.index(offset)
    if offset < 0:
        raise UsageError(f"{path}: offset must be >= 0, got {offset}")
    file_bytes = data.size
    if -1 in dims:
        known = math.prod(n for n in dims if n != -1) * stored.itemsize
        body = file_bytes - offset
        if body < 0:
            raise FormatError(f"{path}: offset {offset} is past the end of the {file_bytes}-byte file")
        if known == 0:
            raise UsageError(f"{path}: shape {dims} has a 0 dimension, so -1 cannot be inferred")
        if body % known:
            raise FormatError(
                f"{path}: {body} bytes after offset {offset} are not a whole number of "
                f"{known}-byte units for shape {dims} and dtype {stored} ({body // known} whole, "
                f"{body % known} bytes left over); check dtype, shape and offset"
            )
        dims = tuple(body // known if n == -1 else n for n in dims)
    return ArrayLayout(
        path=path,
        format="raw",
        dtype=stored,
        shape=dims,
        order="F" if order == "F" and sum(n != 1 for n in dims[1:]) else "C",
        offset=offset,
        file_bytes=file_bytes,
    )
