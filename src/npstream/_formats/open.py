"""``npstream.open``: decide what a path is and build the source that reads it."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import FormatError, UsageError
from .._storage import ByteSource, glob_remote, is_url, open_bytes, read_bytes
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
    storage_options: Mapping[str, Any] | None = None,
    filesystem: Any = None,
) -> ArrayLayout:
    """The layout of one file without the consistency check (``npstream info`` shows both).

    For a URL this reads only the header: one request in the common case.
    """
    data = open_bytes(path, storage_options=storage_options, filesystem=filesystem)
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


def expand_paths(
    paths: PathLike | Sequence[PathLike],
    *,
    storage_options: Mapping[str, Any] | None = None,
    filesystem: Any = None,
) -> list[str]:
    """A path, a glob or a list of paths/globs -> files; each glob sorted by name.

    URL globs (``s3://bucket/shards/x-*.npy``) list the object store; ``*`` does not cross
    ``/``, as in a local glob. With ``filesystem`` every glob goes to ``filesystem.glob``.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise UsageError("npstream.open: the list of files is empty")
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        if not glob.has_magic(item):
            files.append(item)
        elif filesystem is not None or is_url(item):
            files.extend(glob_remote(item, storage_options=storage_options, filesystem=filesystem))
        elif os.path.exists(item):
            # A file that exists is taken literally, even if its name has glob characters ("a[1].npy").
            files.append(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(2, f"no files match the pattern {item!r}", item)
            files.extend(matches)
    if storage_options is not None and filesystem is None and not any(is_url(f) for f in files):
        raise UsageError(
            f"storage_options apply to object-store URLs (s3://, gs://, az://, http(s)://), and "
            f"{files[0]!r} is a local path"
        )
    return files


def _open_one(path: str, key: str | None, raw: dict[str, Any], where: dict[str, Any]) -> ArraySource:
    if raw["dtype"] is None:
        # Checked before sniffing: an HDF5 file would otherwise ignore shape=, offset= and order=.
        _refuse_raw_arguments(path, raw["shape"], raw["offset"], raw["order"])
    data = open_bytes(path, **where)
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
    storage_options: Mapping[str, Any] | None = None,
    filesystem: Any = None,
) -> ArraySource:
    """Open an on-disk array for reading by rows.

    ``path`` is a ``.npy``, ``.npz`` or HDF5 file (recognised by content), a raw binary file
    (when ``dtype`` is given), a glob, or a list of files; several files are concatenated along
    axis 0 in the order given (each glob sorted by name). ``key`` names the ``.npz`` member or
    HDF5 dataset. ``shape``, ``offset`` and ``order`` describe raw files; one ``-1`` in ``shape``
    is inferred from the file size.

    ``path`` may also be an object-store URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``),
    a list of them, or a glob over an object store; ``storage_options`` configures the store
    (README, "Object stores"). ``filesystem`` reads every path through an fsspec filesystem.
    """
    raw = {"dtype": dtype, "shape": shape, "offset": offset, "order": order}
    where = {"storage_options": storage_options, "filesystem": filesystem}
    files = expand_paths(path, **where)
    if len(files) == 1:
        return _open_one(files[0], key, raw, where)
    parts: list[ArraySource] = []
    try:
        for file in files:
            parts.append(_open_one(file, key, raw, where))
        if isinstance(path, (str, os.PathLike)):
            name = os.fspath(path)
        else:
            name = f"{files[0]} and {len(files) - 1} more"
        return ConcatSource(parts, name=name)
    except BaseException:
        for part in parts:
            part.close()
        raise
