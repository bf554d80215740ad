"""``npstream.open``: decide what a path is and build the source that reads it."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

from .._errors import FormatError, UsageError
from .._storage import ByteSource, open_bytes, read_bytes
from .concat import ConcatSource
from .file import FileSource
from .hdf5 import HDF5_MAGIC, HDF5Source, describe_hdf5
from .layout import ArrayLayout
from .npy import MAGIC as NPY_MAGIC
from .npy import describe_npy
from .npz import describe_npz
from .raw import describe_raw
from .source import ArraySource

__all__ = ["describe", "describe_bytes", "expand_paths", "open", "sniff_format"]

PathLike = str | os.PathLike[str]
_ZIP_MAGIC = b"PK\x03\x04"
_SUFFIX_FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5"}


def sniff_format(data: ByteSource) -> str:
    """``"npy"``, ``"npz"`` or ``"hdf5"`` from the first bytes (the name's suffix as fallback)."""
    path = data.name
    head = read_bytes(data, 0, 8)
    if not head:
        raise FormatError(f"{path}: the file is empty (0 bytes); it holds no array")
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head == HDF5_MAGIC:
        return "hdf5"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]  # the format's own parser reports what is wrong
    raise FormatError(
        f"{path}: not a .npy, .npz or HDF5 file (starts with {head!r}); for raw binary data "
        "pass dtype= (and shape=, offset=, order=) to npstream.open"
    )


def _refuse_raw_arguments(path: str, shape: object, offset: int, order: str) -> None:
    if shape is not None or offset != 0 or order != "C":
        raise UsageError(f"{path}: shape=, offset= and order= describe raw files, which need dtype=")


def describe(
    path: str,
    *,
    key: str | None = None,
    dtype: Any = None,
    shape: int | Sequence[int] | None = None,
    offset: int = 0,
    order: str = "C",
) -> ArrayLayout:
    """The layout of one file without the consistency check (``npstream info`` shows both)."""
    data = open_bytes(path)
    try:
        return describe_bytes(data, key=key, dtype=dtype, shape=shape, offset=offset, order=order)
    finally:
        data.close()


def describe_bytes(
    data: ByteSource,
    *,
    key: str | None,
    dtype: Any,
    shape: int | Sequence[int] | None,
    offset: int,
    order: str,
    kind: str | None = None,
) -> ArrayLayout:
    """:func:`describe` for an already opened byte source (left open); ``kind`` if sniffed."""
    path = data.name
    if dtype is not None:
        if key is not None:
            raise UsageError(f"{path}: key= applies to .npz and HDF5 files, not raw binary data")
        return describe_raw(data, dtype=dtype, shape=shape, offset=offset, order=order)
    _refuse_raw_arguments(path, shape, offset, order)
    kind = kind or sniff_format(data)
    if kind == "npy":
        if key is not None:
            raise UsageError(f"{path}: key= applies to .npz and HDF5 files, not .npy")
        return describe_npy(data)
    if kind == "npz":
        return describe_npz(data, key)
    return describe_hdf5(data, key)


def expand_paths(paths: PathLike | Sequence[PathLike]) -> list[str]:
    """A path, a glob or a list of paths/globs -> files; each glob sorted by name."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise UsageError("npstream.open: the list of files is empty")
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        # A file that exists is taken literally, even if its name has glob characters ("a[1].npy").
        if glob.has_magic(item) and not os.path.exists(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(2, f"no files match the pattern {item!r}", item)
            files.extend(matches)
        else:
            files.append(item)
    return files


def _open_one(path: str, key: str | None, raw: dict[str, Any]) -> ArraySource:
    if raw["dtype"] is None:
        # Checked before sniffing: an HDF5 file would otherwise ignore shape=, offset= and order=.
        _refuse_raw_arguments(path, raw["shape"], raw["offset"], raw["order"])
    data = open_bytes(path)
    try:
        kind = None if raw["dtype"] is not None else sniff_format(data)
        if kind == "hdf5":
            return HDF5Source(data, key)
        return FileSource(describe_bytes(data, key=key, kind=kind, **raw), data)
    except BaseException:
        data.close()
        raise


def open(
    path: PathLike | Sequence[PathLike],
    *,
    key: str | None = None,
    dtype: Any = None,
    shape: int | Sequence[int] | None = None,
    offset: int = 0,
    order: str = "C",
) -> ArraySource:
    """Open an on-disk array for reading by rows.

    ``path`` is a ``.npy``, ``.npz`` or HDF5 file (recognised by content), a raw binary file
    (when ``dtype`` is given), a glob, or a list of files; several files are concatenated along
    axis 0 in the order given (each glob sorted by name). ``key`` names the ``.npz`` member or
    HDF5 dataset. ``shape``, ``offset`` and ``order`` describe raw files; one ``-1`` in ``shape``
    is inferred from the file size.
    """
    raw = {"dtype": dtype, "shape": shape, "offset": offset, "order": order}
    files = expand_paths(path)
    if len(files) == 1:
        return _open_one(files[0], key, raw)
    parts: list[ArraySource] = []
    try:
        for file in files:
            parts.append(_open_one(file, key, raw))
        if isinstance(path, (str, os.PathLike)):
            name = os.fspath(path)
        else:
            name = f"{files[0]} and {len(files) - 1} more"
        return ConcatSource(parts, name=name)
    except BaseException:
        for part in parts:
            part.close()
        raise
