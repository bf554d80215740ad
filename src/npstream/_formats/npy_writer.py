"""Writing ``.npy`` files of unknown final length, atomically: :class:`NpyWriter` and :func:`save`.

The problem: a ``.npy`` header states the shape, but people build large arrays incrementally
(preprocessing output, simulation steps) and know the row count only at the end.
``np.lib.format.open_memmap`` needs the count up front, and a crash leaves a file whose header
claims rows that were never written (or, zero-filled, looks complete).

How this writer works:

* The data goes to a temporary file in the destination's directory (``.NAME.<random>.npstream-
  partial``) whose first bytes are a placeholder that no ``.npy`` reader accepts. ``close``
  writes the real header over it, fsyncs the file, renames it onto ``path`` (atomic within one
  file system) and fsyncs the directory. A crash, ``SIGKILL`` or an exception inside the
  ``with`` block therefore never leaves a file at ``path`` that ``np.load`` accepts as complete:
  ``path`` holds either its previous file, untouched, or the finished new one.
* Header room for any row count is reserved up front: the header is sized for a 21-digit row
  count (numpy's own ``GROWTH_AXIS_MAX_DIGITS``; more than any int64) and padded to a multiple
  of 64 bytes, so the final header, written at close with the real count, has exactly the same
  length and the data offset never moves. The version is the oldest that can hold the header:
  1.0, 2.0 when it exceeds 1.0's 2-byte length field, 3.0 when field names are not latin-1.
  numpy reserves the same room by the same rule, so the finished file is byte for byte what
  ``np.save`` writes for the whole array (the tests compare them).
* Rows are written straight from the caller's array when it is C-contiguous and already in the
  file's dtype (byte order included); anything else (another byte order, a safe cast, a strided
  view) is converted through one reusable buffer of about 4 MiB, so memory stays bounded
  whatever the size of a block.

Why the header text is built here rather than by ``numpy.lib.format``: numpy's public header
writers stop at version 2.0 and its version-choosing writer is private (and warns when it picks
2.0 or 3.0); the text below is the same dict literal numpy writes, and the tests read every
written header back with numpy's own reader.

Inputs are never overwritten: a ``path`` that is the same file (same device and inode) as a file
this process holds open is refused, at open and again just before the rename. Every open
npstream source holds its files open, so this covers ``save(path, npstream.open(path))`` as well
as a source opened elsewhere in the program; :func:`save` also refuses the files of a source it is
given even if that source was closed. Other processes reading ``path`` are not disturbed: the
rename gives ``path`` a new file, and readers that already opened the old one keep reading it.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import secrets
import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from .._errors import NpstreamError, UsageError
from .._storage import byte_view
from .source import ArraySource

__all__ = ["NpyWriter", "save"]

_MAGIC = b"\x93NUMPY"
_ALIGN = 64  # numpy aligns the data offset to 64 bytes
_ROW_DIGITS = 21  # numpy's GROWTH_AXIS_MAX_DIGITS: room for any row count (int64 has 19 digits)
_MAX_1_0_HEADER = 0xFFFF
_CONVERT_BYTES = 4 << 20  # the conversion buffer: large enough that per-piece overhead is noise
_READ_BYTES = 8 << 20  # save() from a source reads blocks of about this size
_PARTIAL_SUFFIX = ".npstream-partial"


def _header_text(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """The header's dict literal, character for character as ``np.save`` writes it."""
    with warnings.catch_warnings():
        # .npy cannot store dtype metadata (h5py attaches string encodings); numpy drops it and
        # warns, but the values are unaffected, so the copy is exact.
        warnings.filterwarnings("ignore", "metadata on a dtype", UserWarning)
        descr = npformat.dtype_to_descr(dtype)
    return f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"


def _layout_header(dtype: np.dtype, row_shape: tuple[int, ...]) -> tuple[tuple[int, int], int, int]:
    """(version, length-field size, total header bytes incl. magic) for any row count."""
    widest = _header_text(dtype, (10 ** (_ROW_DIGITS - 1), *row_shape))
    try:
        widest.encode("latin-1")
        version = (1, 0)
    except UnicodeEncodeError:
        version = (3, 0)  # utf-8 field names: only 3.0 can hold them
    encoded = len(widest.encode("utf-8" if version == (3, 0) else "latin-1")) + 1  # + "\n"

    def size(field: int) -> int:
        # numpy's padding rule exactly (1 to 64 spaces), so the bytes match np.save's.
        prefix = len(_MAGIC) + 2 + field
        return prefix + encoded + _ALIGN - (prefix + encoded) % _ALIGN

    field = 2 if version == (1, 0) else 4
    total = size(field)
    if version == (1, 0) and total - len(_MAGIC) - 2 - field > _MAX_1_0_HEADER:
        version, field = (2, 0), 4
        total = size(field)
    return version, field, total


def _encode_header(
    dtype: np.dtype, shape: tuple[int, ...], version: tuple[int, int], field: int, total: int
) -> bytes:
    encoding = "utf-8" if version == (3, 0) else "latin-1"
    body_bytes = total - len(_MAGIC) - 2 - field
    text = _header_text(dtype, shape).encode(encoding)
    if len(text) + 1 > body_bytes:  # cannot happen: the room was sized for the widest count
        raise AssertionError(f"npy header of {len(text)} bytes exceeds the {body_bytes} reserved")
    body = text + b" " * (body_bytes - 1 - len(text)) + b"\n"
    return _MAGIC + bytes(version) + body_bytes.to_bytes(field, "little") + body


def _check_dtype(dtype: Any, row_shape: Any, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise UsageError(f"{name}: dtype {dtype!r} is not a numpy dtype ({exc})") from None
    if isinstance(row_shape, (int, np.integer)):
        row_shape = (row_shape,)
    try:
        shape = tuple(operator.index(n) for n in row_shape)
    except TypeError:
        raise UsageError(f"{name}: row_shape must be a tuple of ints, got {row_shape!r}") from None
    if any(n < 0 for n in shape):
        raise UsageError(f"{name}: row_shape {shape} has negative dimensions")
    if dtype.subdtype is not None:
        # A top-level subarray dtype ('(3,)f4') is stored as extra dimensions, as numpy does.
        dtype, extra = dtype.subdtype
        shape = (*shape, *extra)
    if dtype.hasobject:
        raise UsageError(
            f"{name}: dtype {dtype} holds Python objects, which .npy stores only as a pickle; "
            "npstream writes and reads fixed-size data only (numbers, 'S'/'U' strings, structs)"
        )
    if dtype.kind not in "biufcmMSUV":
        raise UsageError(f"{name}: dtype {dtype} cannot be stored in a .npy file without pickling")
    if dtype.itemsize == 0:
        raise UsageError(f"{name}: dtype {dtype} has zero-size items; give strings a length, e.g. 'S8'")
    return dtype, shape


def _castable(src: np.dtype, dst: np.dtype) -> bool:
    """A cast that loses nothing; structured dtypes must also have the same field names.

    numpy casts structs by field position and calls (a, b) -> (b, a) safe, which would
    silently swap columns; here names must match, field by field.
    """
    if src.names is not None or dst.names is not None:
        if src.names != dst.names or src.names is None or dst.fields is None or src.fields is None:
            return False
        return all(_castable(src.fields[n][0], dst.fields[n][0]) for n in src.names)
    if src.subdtype is not None or dst.subdtype is not None:
        if src.subdtype is None or dst.subdtype is None or src.subdtype[1] != dst.subdtype[1]:
            return False
        return _castable(src.subdtype[0], dst.subdtype[0])
    return bool(np.can_cast(src, dst, casting="safe"))


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _open_here(file_id: tuple[int, int]) -> bool:
    """True if this process holds a descriptor on the file ``file_id`` (Linux and macOS).

    Every npstream source keeps its files open from ``open`` to ``close``, so the descriptor table
    is the one place that knows every input in use, whichever code opened it.
    """
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            try:
                stat = os.stat(os.path.join(folder, entry))
            except OSError:  # closed meanwhile, or the listing's own descriptor
                continue
            if (stat.st_dev, stat.st_ino) == file_id:
                return True
        return False
    return False


def _refuse_open_input(path: str, target: str, retry: bool = False) -> None:
    file_id = _file_id(target)
    if file_id is not None and _open_here(file_id):
        fix = (
            "Close the sources reading it and call close() again (the rows are kept until then), "
            "or abort()"
            if retry
            else "Write to another path, or close the sources reading it first"
        )
        raise UsageError(
            f"{path}: refusing to replace a file this process has open (an npstream source or "
            f"another reader reads it); npstream never overwrites its inputs. {fix}"
        )


def _discard(fd_box: list[int], temp: str, pid: int) -> None:
    """Close and delete an unfinished temporary file (never in a forked child: it is the parent's).

    ``fd_box`` holds the descriptor until it is closed (then -1), so a descriptor number the
    process has reused since is never closed by mistake.
    """
    if os.getpid() != pid:
        return
    fd, fd_box[0] = fd_box[0], -1
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def fsync_directory(directory: str) -> None:
    # The rename is a change to the directory: until the directory itself reaches the disk, a
    # power loss can bring back the old entry (or none) although the file's data was synced.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some platforms and file systems cannot open directories; the data is synced
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. EINVAL on file systems without directory sync
    finally:
        os.close(fd)


class NpyWriter:
    """Write a C-order ``.npy`` file by appending blocks of rows; the row count is set at close.

    ``with NpyWriter(path, dtype, row_shape) as w: w.write(rows)`` where every ``rows`` is an
    array of shape ``(k, *row_shape)`` for any ``k >= 0``. The file keeps ``dtype`` exactly as
    given, byte order and struct layout included. Rows in another byte order, non-contiguous
    views and dtypes that cast to ``dtype`` without loss (``np.can_cast(..., "safe")``, same field
    names for structs) are converted; anything else is a :class:`~npstream.UsageError`.

    Nothing appears at ``path`` until :meth:`close` (or the end of the ``with`` block) succeeds:
    an exception in the block, :meth:`abort`, garbage collection of an unclosed writer or a crash
    leave any previous file at ``path`` untouched. A symlink at ``path`` is followed (its target
    is replaced). The new file takes the previous file's permission bits, else the default
    ``0o666 & ~umask``. Not thread-safe: write from one thread at a time.
    """

    def __init__(self, path: str | os.PathLike[str], dtype: Any, row_shape: int | Sequence[int] = ()):
        self.path = os.fspath(path)
        self.dtype, self.row_shape = _check_dtype(dtype, row_shape, self.path)
        self.rows = 0
        """Rows written so far."""
        self._row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
        self._version, self._field, self._header_bytes = _layout_header(self.dtype, self.row_shape)
        self._convert_buffer: np.ndarray | None = None
        self._state = "open"
        # Follow a symlink: the link keeps pointing at the (new) array, as np.save would leave it.
        self._target = os.path.realpath(self.path) if os.path.islink(self.path) else self.path
        if os.path.isdir(self._target):
            raise IsADirectoryError(
                21, f"{self.path} is a directory; give a file name ending in .npy", self.path
            )
        _refuse_open_input(self.path, self._target)
        directory, base = os.path.split(os.path.abspath(self._target))
        self._directory = directory
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}{_PARTIAL_SUFFIX}")
            try:
                fd = os.open(temp, flags, 0o666)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:
                raise FileNotFoundError(
                    2, f"{self.path}: the directory {directory} does not exist", self.path
                ) from None
            except PermissionError:
                raise PermissionError(
                    13, f"{self.path}: cannot create files in {directory} (permission denied)", self.path
                ) from None
        self._fd, self._temp = fd, temp
        self._fd_box = [fd]
        self._finalizer = weakref.finalize(self, _discard, self._fd_box, temp, os.getpid())
        try:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, os.stat(self._target).st_mode & 0o7777)
            placeholder = f"npstream: unfinished write of {base}; not a .npy file\n".encode()
            placeholder = placeholder[: self._header_bytes - 1]
            self._write_bytes(memoryview(placeholder.ljust(self._header_bytes - 1) + b"\n"))
        except BaseException:
            self._finalizer()
            self._state = "aborted"
            raise

    def __repr__(self) -> str:
        return (
            f"NpyWriter({self.path!r}, dtype={self.dtype}, row_shape={self.row_shape}, "
            f"rows={self.rows}, {self._state})"
        )

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rows: Any) -> None:
        """Append ``rows``, an array of shape ``(k, *row_shape)``."""
        if self._state != "open":
            raise UsageError(f"{self.path}: the writer is {self._state}; open a new NpyWriter to write more")
        array = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        want = self.row_shape
        if array.ndim != len(want) + 1 or array.shape[1:] != want:
            hint = " (a single row? write rows[None])" if array.shape == want else ""
            expected = "(" + ", ".join(["k", *map(str, want)]) + ("," if not want else "") + ")"
            raise UsageError(
                f"{self.path}: write() takes a block of rows of shape {expected}, got shape "
                f"{array.shape}{hint}"
            )
        if array.dtype != self.dtype and not _castable(array.dtype, self.dtype):
            raise UsageError(
                f"{self.path}: rows of dtype {array.dtype} cannot be written as {self.dtype} without "
                f"loss; convert them first (rows.astype({str(self.dtype)!r})) if that is intended"
            )
        count = array.shape[0]
        if count == 0:
            return
        if self._row_bytes == 0:
            self.rows += count
            return
        try:
            if array.dtype == self.dtype and array.flags.c_contiguous:
                self._write_bytes(byte_view(array))
            else:
                self._write_converted(array)
        except BaseException as exc:
            # Part of the block may be in the file: no later row could be trusted to be in its
            # place, so the writer gives up now (and says so if used again).
            self.abort()
            if isinstance(exc, OSError):
                raise OSError(
                    exc.errno,
                    f"{self.path}: writing rows failed: {exc.strerror or exc}; the writer was "
                    "aborted and nothing was written to the destination",
                ) from exc
            raise
        self.rows += count

    def _write_converted(self, array: np.ndarray) -> None:
        rows_per_piece = max(1, _CONVERT_BYTES // self._row_bytes)
        if self._convert_buffer is None:
            self._convert_buffer = np.empty((rows_per_piece, *self.row_shape), dtype=self.dtype)
        buffer = self._convert_buffer
        for start in range(0, array.shape[0], rows_per_piece):
            piece = array[start : start + rows_per_piece]
            target = buffer[: piece.shape[0]]
            target[...] = piece
            self._write_bytes(byte_view(target))

    def _write_bytes(self, view: memoryview) -> None:
        done, total = 0, len(view)
        while done < total:
            done += os.write(self._fd, view[done:] if done else view)

    def close(self) -> None:
        """Write the final header, fsync, and rename the file onto ``path``; idempotent."""
        if self._state != "open":
            if self._state == "aborted":
                raise UsageError(f"{self.path}: the writer was aborted; nothing was written")
            return
        try:
            header = _encode_header(
                self.dtype, (self.rows, *self.row_shape), self._version, self._field, self._header_bytes
            )
            os.pwrite(self._fd, header, 0)
            os.fsync(self._fd)
            self._verify(header)
        except BaseException:
            self.abort()
            raise
        # A source may have opened ``path`` since the writer started. The rows are kept: close
        # the source and call close() again (or abort()).
        _refuse_open_input(self.path, self._target, retry=True)
        try:
            self._fd_box[0] = -1
            os.close(self._fd)
            os.replace(self._temp, self._target)
        except BaseException:
            self.abort()
            raise
        self._finalizer.detach()
        self._state = "closed"
        fsync_directory(self._directory)

    def abort(self) -> None:
        """Discard everything written; any previous file at ``path`` stays as it was."""
        if self._state == "closed":
            return
        self._finalizer()
        self._state = "aborted"

    def _verify(self, header: bytes) -> None:
        """Check that the header and every row reached the file before it goes live.

        The header's format is numpy's (the tests read every variant back with ``np.load``);
        this guards the I/O: a short write or a concurrent truncation must not be published.
        """
        written = os.pread(self._fd, len(header), 0)
        size = os.fstat(self._fd).st_size
        expected = self._header_bytes + self.rows * self._row_bytes
        if written != header or size != expected:
            raise NpstreamError(
                f"{self.path}: the temporary file {self._temp} holds {size} bytes (expected "
                f"{expected}) or a different header than written; was it modified by another "
                "program? Nothing was replaced"
            )


def _source_files(source: Any) -> list[str]:
    """The local files an npstream source reads (shards included)."""
    parts = getattr(source, "parts", None)
    if parts is not None:
        return [path for part in parts for path in _source_files(part)]
    layout = getattr(source, "layout", None)
    path = getattr(layout, "path", None)
    return [path] if isinstance(path, str) else []


def _blocks_of_source(source: ArraySource) -> Iterable[np.ndarray]:
    row_bytes = max(1, math.prod(source.shape[1:]) * source.dtype.itemsize)
    chunk = max(1, int(getattr(source, "chunk_rows", 1)))
    rows_per_block = max(chunk, _READ_BYTES // row_bytes // chunk * chunk)
    buffer = np.empty((min(rows_per_block, len(source)), *source.shape[1:]), dtype=source.dtype)
    for start in range(0, len(source), rows_per_block):
        stop = min(len(source), start + rows_per_block)
        yield source.read(start, stop, out=buffer[: stop - start])


def save(
    path: str | os.PathLike[str],
    data: Any,
    *,
    dtype: Any = None,
    row_shape: int | Sequence[int] | None = None,
) -> int:
    """Write ``data`` to a ``.npy`` at ``path`` through :class:`NpyWriter`; return the row count.

    ``data`` is an npstream source (``npstream.open(...)``, read in blocks of about 8 MiB), a
    numpy array, or an iterable of row blocks (arrays of shape ``(k, *row_shape)``). ``dtype``
    and ``row_shape`` default to the source's, the array's or the first block's; an empty
    iterable needs both. ``path`` may not be one of a source's own files (npstream never
    overwrites its inputs). On any error nothing appears at ``path``.
    """
    target = os.fspath(path)
    if isinstance(data, (str, bytes, os.PathLike)):
        raise UsageError(
            f"save({target!r}, {data!r}): data must be arrays, not a path; to copy a file pass "
            "npstream.open(path)"
        )
    blocks: Iterable[Any]
    if isinstance(data, ArraySource):
        target_id = _file_id(target)
        for file in _source_files(data):
            if target_id is not None and _file_id(file) == target_id:
                raise UsageError(
                    f"{target}: refusing to write onto {file}, which the source {data!r} reads; "
                    "npstream never overwrites its inputs. Write to another path"
                )
        dtype = data.dtype if dtype is None else dtype
        row_shape = data.shape[1:] if row_shape is None else row_shape
        blocks = _blocks_of_source(data)
    elif isinstance(data, (np.ndarray, np.generic)):
        data = np.asarray(data)
        if data.ndim == 0:
            raise UsageError(f"{target}: a 0-d array has no rows; give it a row axis (x[None])")
        dtype = data.dtype if dtype is None else dtype
        row_shape = data.shape[1:] if row_shape is None else row_shape
        blocks = [data]
    else:
        try:
            iterator = iter(data)
        except TypeError:
            raise UsageError(
                f"{target}: data must be an npstream source, an array or an iterable of row blocks, "
                f"not {type(data).__name__}"
            ) from None
        first = next(iterator, None)
        if first is None:
            if dtype is None or row_shape is None:
                raise UsageError(
                    f"{target}: no blocks to write and no dtype= and row_shape= to describe an empty array"
                )
            blocks = []
        else:
            first = np.asarray(first)
            if first.ndim == 0:
                raise UsageError(f"{target}: blocks must be arrays of rows (k, ...), got a scalar")
            dtype = first.dtype if dtype is None else dtype
            row_shape = first.shape[1:] if row_shape is None else row_shape
            blocks = _chain(first, iterator)
    with NpyWriter(target, dtype, row_shape) as writer:
        for block in blocks:
            writer.write(block)
    return writer.rows


def _chain(first: np.ndarray, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest
