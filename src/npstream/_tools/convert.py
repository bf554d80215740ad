"""``npstream convert``: rewrite any array npstream reads as a C-order ``.npy`` or a folder of shards.

What it is for: the layouts that stream badly or not at all become the layout that streams
best. Fortran-order files (one read per column per block) become C order; compressed ``.npz``
members (which ``npstream.open`` refuses) are decompressed once, sequentially; HDF5 datasets,
raw binary and globs of shards become one ``.npy``, or one array becomes ``part-00000.npy``,
``part-00001.npy``, ... whose names sort in row order.

How:

* Reads go through ``npstream.open`` (so every source it reads, local or remote, converts),
  in blocks of about 8 MiB of rows (at least one row; a multiple of an HDF5 dataset's chunk
  rows, so no chunk is decompressed twice), into one reused buffer. A compressed ``.npz``
  member is read with ``zipfile`` as one sequential stream, block by block; a Fortran-order
  compressed member is first streamed to a temporary raw file next to the destination (its rows
  are not sequential in the stream), then read from there. Memory stays at a few blocks
  whatever the array's size.
* Writes go through :class:`~npstream.NpyWriter` (temporary name, fsync, atomic rename). Shards
  are written into a temporary folder next to ``DST``, checked, and the folder is renamed to
  ``DST`` at the end: ``DST`` never holds a partial result.
* Output dtype: the source's dtype in native byte order (what ``npstream.open`` returns), so the
  output needs no byte swapping when streamed.
* Safety: the destination may never be an input (the same file, or a folder containing an
  input), even with ``force``; an existing destination is refused unless ``force``, and ``force``
  replaces only what this command could have written (a file for a file; for shards, a folder
  holding nothing but ``part-NNNNN.npy`` files). Row counts are verified at the end by opening
  the outputs.
"""

from __future__ import annotations

import contextlib
import lzma
import math
import os
import re
import secrets
import shutil
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._errors import FormatError, ReadError, UsageError
from .._formats.layout import native_dtype
from .._formats.npy import read_npy_layout
from .._formats.npy_writer import NpyWriter, fsync_directory
from .._formats.npz import find_member, open_zip
from .._formats.open import expand_paths
from .._formats.open import open as open_source
from .._storage import ByteSource, byte_view, open_bytes, open_stream, read_bytes
from .._units import format_bytes

__all__ = ["ConvertResult", "convert", "shard_bounds"]

BLOCK_BYTES = 8 << 20
"""Rows are copied in blocks of about this many bytes: large enough that per-call costs vanish
(a 4 MiB ``src.read`` already reaches the page cache's speed here), small enough to be noise."""

_SHARD_NAME = re.compile(r"part-\d{5,}\.npy\Z")
# What zipfile's decompressors raise on damaged data: a CRC mismatch (BadZipFile), a stream
# that ends early (EOFError), invalid deflate/lzma data, invalid bzip2 data (OSError).
_DECOMPRESSION_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote."""

    rows: int
    row_bytes: int
    files: list[str]
    dtype: np.dtype
    sharded: bool


class _Part(Protocol):
    """One input, read front to back in blocks."""

    name: str
    dtype: np.dtype  # as the rows come out (the writer converts them to the output dtype)
    shape: tuple[int, ...]
    chunk_rows: int

    def blocks(self, rows_per_block: int) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


class _SourcePart:
    """An ``npstream.open`` source (any format it reads, shards included)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.name = getattr(source, "name", repr(source))
        self.dtype = source.dtype
        self.shape = tuple(source.shape)
        self.chunk_rows = max(1, int(getattr(source, "chunk_rows", 1)))

    def blocks(self, rows_per_block: int) -> Iterator[np.ndarray]:
        rows = self.shape[0]
        buffer = np.empty((min(rows_per_block, rows), *self.shape[1:]), dtype=self.dtype)
        for start in range(0, rows, rows_per_block):
            stop = min(rows, start + rows_per_block)
            yield self.source.read(start, stop, out=buffer[: stop - start])

    def close(self) -> None:
        self.source.close()


class _CompressedMember:
    """A compressed ``.npz`` member, decompressed once from start to end by ``zipfile``."""

    def __init__(self, data: ByteSource, info: zipfile.ZipInfo, scratch_dir: str) -> None:
        self.data = data
        self.member = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        self.name = f"{data.name}[{self.member}]"
        self._scratch_dir = scratch_dir
        self._stack = contextlib.ExitStack()
        try:
            stream = self._stack.enter_context(open_stream(data, buffer_size=1 << 20))
            archive = self._stack.enter_context(open_zip(stream, data.name))
            member: Any = self._stack.enter_context(archive.open(info))
            self._fp = member
            layout = read_npy_layout(self._fp, path=data.name, file_bytes=data.size, member=self.member)
        except ReadError:
            self.close()
            raise
        except _DECOMPRESSION_ERRORS as exc:
            self.close()
            raise FormatError(f"{self.name}: the compressed member is corrupt ({exc})") from exc
        except BaseException:
            self.close()
            raise
        header_bytes = self._fp.tell()
        if header_bytes + layout.data_bytes != info.file_size:
            self.close()
            raise FormatError(
                f"{self.name}: the member's header says {layout.data_bytes} data bytes but the member "
                f"holds {info.file_size - header_bytes}; the archive is corrupt"
            )
        self.layout = layout
        self.stored = layout.dtype
        self.dtype = layout.dtype
        self.shape = layout.shape
        self.chunk_rows = 1

    def _fill(self, view: memoryview) -> None:
        done = 0
        try:
            while done < len(view):
                got = self._fp.readinto(view[done:])
                if not got:
                    raise FormatError(
                        f"{self.name}: the compressed stream ended {len(view) - done} bytes early; "
                        "the archive is truncated or corrupt"
                    )
                done += got
        except ReadError:
            raise  # the archive's bytes could not be read: that error names the file and offset
        except _DECOMPRESSION_ERRORS as exc:
            raise FormatError(f"{self.name}: decompressing the member failed: {exc}") from exc

    def blocks(self, rows_per_block: int) -> Iterator[np.ndarray]:
        if self.layout.order == "F":
            yield from self._fortran_blocks(rows_per_block)
            return
        rows = self.shape[0]
        buffer = np.empty((min(rows_per_block, rows), *self.shape[1:]), dtype=self.stored)
        for start in range(0, rows, rows_per_block):
            block = buffer[: min(rows, start + rows_per_block) - start]
            if block.nbytes:
                self._fill(byte_view(block))
            yield block

    def _fortran_blocks(self, rows_per_block: int) -> Iterator[np.ndarray]:
        # A Fortran-order stream holds column after column: no row is complete before the end.
        # Stream it to a temporary raw file next to the output, then read rows from there.
        fd, scratch = _create_hidden(self._scratch_dir, "extract")
        self._stack.callback(_unlink, scratch)
        with os.fdopen(fd, "wb") as out:
            piece = bytearray(BLOCK_BYTES)
            left = self.layout.data_bytes
            while left:
                view = memoryview(piece)[: min(left, len(piece))]
                self._fill(view)
                out.write(view)
                left -= len(view)
        source = open_source(scratch, dtype=self.stored, shape=self.shape, order="F")
        with contextlib.closing(source):
            yield from _SourcePart(source).blocks(rows_per_block)

    def close(self) -> None:
        self._stack.close()
        self.data.close()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _create_hidden(directory: str, what: str, name: str = "convert") -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.npstream-{what}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue


def _compressed_info(path: str, key: str | None) -> tuple[ByteSource, zipfile.ZipInfo] | None:
    """The byte source and member of ``path`` if it is a ``.npz`` whose chosen member is compressed."""
    data = open_bytes(path)
    try:
        if read_bytes(data, 0, 4) != _ZIP_MAGIC:
            data.close()
            return None
        with open_stream(data) as stream, open_zip(stream, path) as archive:
            info = find_member(archive, path, key)
        if info.compress_type == zipfile.ZIP_STORED:
            data.close()
            return None
        return data, info
    except BaseException:
        data.close()
        raise


def _open_parts(src: str, key: str | None, raw: dict[str, Any], scratch_dir: str) -> list[_Part]:
    if raw["dtype"] is not None:
        return [_SourcePart(open_source(src, **raw))]
    files = expand_paths(src)
    found = [_compressed_info(file, key) for file in files]
    if not any(found):
        return [_SourcePart(open_source(src if len(files) == 1 else files, key=key))]
    parts: list[_Part] = []
    try:
        for file, compressed in zip(files, found, strict=True):
            if compressed is None:
                parts.append(_SourcePart(open_source(file, key=key)))
            else:
                parts.append(_CompressedMember(compressed[0], compressed[1], scratch_dir))
        first = parts[0]
        for part in parts[1:]:
            if native_dtype(part.dtype) != native_dtype(first.dtype) or part.shape[1:] != first.shape[1:]:
                raise FormatError(
                    f"{part.name}: dtype {part.dtype} and row shape {part.shape[1:]} differ from "
                    f"{first.name} (dtype {first.dtype}, row shape {first.shape[1:]}); every file "
                    "of a concatenated source must have the same dtype and row shape"
                )
    except BaseException:
        for part in parts:
            part.close()
        for item in found[len(parts) :]:
            if item is not None:
                item[0].close()
        raise
    return parts


def shard_bounds(rows: int, row_bytes: int, shard_bytes: int | None, shards: int | None) -> list[int]:
    """Row boundaries ``[0, ..., rows]`` of the shards: by size (whole rows, at least one row each)
    or by count (as even as possible). An empty array makes one empty shard."""
    if shards is not None:
        if shards < 1:
            raise UsageError(f"--shards must be at least 1, got {shards}")
        if shards > max(rows, 1):
            raise UsageError(f"cannot split {rows} rows into {shards} non-empty shards; use at most {rows}")
        return [i * rows // shards for i in range(shards + 1)]
    assert shard_bytes is not None
    per_shard = max(1, shard_bytes // row_bytes) if row_bytes else max(rows, 1)
    count = max(1, math.ceil(rows / per_shard))
    return [min(rows, i * per_shard) for i in range(count)] + [rows]


def shard_name(index: int, count: int) -> str:
    return f"part-{index:0{max(5, len(str(count - 1)))}d}.npy"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_destination(dst: str, inputs: Sequence[str], sharded: bool, force: bool) -> None:
    local_inputs = [path for path in inputs if "://" not in path]
    for path in local_inputs:
        if _same_file(path, dst):
            raise UsageError(
                f"{dst}: the destination is the input {path}; npstream never overwrites its inputs"
            )
    if sharded and os.path.isdir(dst):
        real = os.path.realpath(dst)
        for path in local_inputs:
            if os.path.commonpath([real, os.path.realpath(path)]) == real:
                raise UsageError(
                    f"{dst}: the destination folder holds the input {path}; npstream never "
                    "overwrites its inputs. Choose another folder"
                )
    if not os.path.lexists(dst):
        return
    if not force:
        raise UsageError(f"{dst} already exists; pass --force to replace it, or choose another name")
    if sharded:
        if not os.path.isdir(dst):
            raise UsageError(f"{dst} exists and is not a folder; remove it yourself to write shards there")
        others = [name for name in os.listdir(dst) if not _SHARD_NAME.match(name)]
        if others:
            raise UsageError(
                f"{dst} holds files that are not shards ({', '.join(sorted(others)[:5])}); --force "
                "only replaces a folder of part-NNNNN.npy files. Remove it yourself or choose another name"
            )
    elif os.path.isdir(dst):
        raise IsADirectoryError(21, f"{dst} is a folder; give a file name, or --shards/--shard-size", dst)


def _progress(total: int, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience: without tqdm, convert stays quiet
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)


def convert(
    src: str,
    dst: str,
    *,
    key: str | None = None,
    dtype: Any = None,
    shape: Sequence[int] | None = None,
    offset: int = 0,
    order: str = "C",
    shard_bytes: int | None = None,
    shards: int | None = None,
    force: bool = False,
    progress: bool = False,
) -> ConvertResult:
    """Copy the array at ``src`` to a C-order ``.npy`` at ``dst`` (or shards in folder ``dst``)."""
    if shard_bytes is not None and shards is not None:
        raise UsageError("give --shard-size or --shards, not both")
    sharded = shard_bytes is not None or shards is not None
    dst = os.fspath(dst)
    raw = {"dtype": dtype, "shape": shape, "offset": offset, "order": order}
    inputs = expand_paths(src)
    _check_destination(dst, inputs, sharded, force)
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(2, f"{dst}: the folder {parent} does not exist", dst)
    parts = _open_parts(src, key, raw, parent)
    try:
        out_dtype = native_dtype(parts[0].dtype)
        row_shape = parts[0].shape[1:]
        rows = sum(part.shape[0] for part in parts)
        row_bytes = math.prod(row_shape) * out_dtype.itemsize
        chunk = max(part.chunk_rows for part in parts)
        rows_per_block = max(chunk, BLOCK_BYTES // max(row_bytes, 1) // chunk * chunk)
        bar = _progress(rows * row_bytes, os.path.basename(dst), progress)
        try:
            blocks = (block for part in parts for block in part.blocks(rows_per_block))
            if sharded:
                bounds = shard_bounds(rows, row_bytes, shard_bytes, shards)
                files = _write_shards(dst, blocks, bounds, out_dtype, row_shape, bar, force)
            else:
                files = [_write_one(dst, blocks, out_dtype, row_shape, rows, bar)]
        finally:
            if bar is not None:
                bar.close()
    finally:
        for part in parts:
            part.close()
    _verify(files, rows, out_dtype, row_shape, src)
    return ConvertResult(rows=rows, row_bytes=row_bytes, files=files, dtype=out_dtype, sharded=sharded)


def _write_one(
    dst: str, blocks: Iterator[np.ndarray], dtype: np.dtype, row_shape: tuple[int, ...], rows: int, bar: Any
) -> str:
    with NpyWriter(dst, dtype, row_shape) as writer:
        for block in blocks:
            writer.write(block)
            if bar is not None:
                bar.update(block.nbytes)
        if writer.rows != rows:
            raise FormatError(f"{dst}: read {writer.rows} rows but the input has {rows}; nothing was written")
    return dst


def _write_shards(
    dst: str,
    blocks: Iterator[np.ndarray],
    bounds: list[int],
    dtype: np.dtype,
    row_shape: tuple[int, ...],
    bar: Any,
    force: bool,
) -> list[str]:
    parent, base = os.path.split(os.path.abspath(dst))
    count = len(bounds) - 1
    while True:
        staging = os.path.join(parent, f".{base}.{secrets.token_hex(4)}.npstream-partial")
        try:
            os.mkdir(staging)
            break
        except FileExistsError:
            continue
    names = [shard_name(i, count) for i in range(count)]
    try:
        index, done = 0, 0
        writer = NpyWriter(os.path.join(staging, names[0]), dtype, row_shape)
        try:
            for block in blocks:
                start = 0
                while start < len(block):
                    room = bounds[index + 1] - done
                    if room == 0:
                        writer.close()
                        index += 1
                        writer = NpyWriter(os.path.join(staging, names[index]), dtype, row_shape)
                        continue
                    take = min(room, len(block) - start)
                    writer.write(block[start : start + take])
                    start += take
                    done += take
                if bar is not None:
                    bar.update(block.nbytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if index != count - 1 or done != bounds[-1]:
            raise FormatError(f"{dst}: read {done} rows but the input has {bounds[-1]}; nothing was written")
        staged = [os.path.join(staging, name) for name in names]
        _verify(staged, bounds[-1], dtype, row_shape, dst, bounds)
        _publish_folder(staging, dst, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [os.path.join(dst, name) for name in names]


def _publish_folder(staging: str, dst: str, force: bool) -> None:
    parent, base = os.path.split(os.path.abspath(dst))
    old = None
    if force and os.path.isdir(dst):
        # A folder cannot be renamed over a non-empty one: move the old one aside first. DST is
        # briefly absent, never partial.
        old = os.path.join(parent, f".{base}.{secrets.token_hex(4)}.npstream-old")
        os.rename(dst, old)
    try:
        os.rename(staging, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    fsync_directory(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _verify(
    files: list[str],
    rows: int,
    dtype: np.dtype,
    row_shape: tuple[int, ...],
    name: str,
    bounds: list[int] | None = None,
) -> None:
    """Open every output as npstream will and check its header against the plan."""
    total = 0
    for i, file in enumerate(files):
        with contextlib.closing(open_source(file)) as out:
            expected = None if bounds is None else bounds[i + 1] - bounds[i]
            if out.dtype != dtype or out.shape[1:] != row_shape or expected not in (None, len(out)):
                raise FormatError(
                    f"{file}: written as {out.shape} {out.dtype}, expected {expected} rows of "
                    f"{row_shape} {dtype}; the output is wrong (please report this)"
                )
            total += len(out)
    if total != rows:
        raise FormatError(f"{name}: the output holds {total} rows but the input has {rows}")


def describe_result(result: ConvertResult, src: str, dst: str) -> str:
    size = format_bytes(result.rows * result.row_bytes)
    count = len(result.files)
    files = f"{count} shard{'s' if count != 1 else ''} in {dst}" if result.sharded else dst
    return f"{src}: {result.rows:,} rows ({size}, {result.dtype}) -> {files}"
