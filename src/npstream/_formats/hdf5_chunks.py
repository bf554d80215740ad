"""Reading rows of a chunked HDF5 dataset from its raw chunks, without HDF5.

A chunked dataset of shape ``S`` with chunks of shape ``C`` is a grid of ``ceil(S/C)`` chunks;
each written chunk is stored whole (edge chunks too, padded past the extent) at a file offset,
through the dataset's filter pipeline. :class:`ChunkIndex` holds where every written chunk is,
as sorted numpy arrays built once from h5py's own index; chunks never written are absent and
read as the fill value. :class:`ChunkReader` fills rows from the chunks they touch: each chunk
is read with one ``read_into`` and decoded once per call on the calling thread (no lock: the
index is immutable and the decoders release the GIL), so the core's I/O threads decompress in
parallel. A chunk may cover only part of a row: rows are assembled from every chunk across the
other dimensions.

Reads that use only part of a chunk keep it, decoded, in a small process-wide cache
(:data:`PARTIAL_CACHE_BYTES`): readers cut a window into pieces for several threads, and a
piece boundary inside a chunk made both neighbours decode it (with 1024-row gzip chunks and
25,600-row windows cut into 8 pieces, 7 extra decodes per 25 chunks). Chunks a read uses whole
are never cached, so sequential streaming does not churn it.
"""

from __future__ import annotations

import errno
import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ReadError
from .._storage import ByteSource
from .codecs import FILTER_NAMES, ChecksumError, Decoder, decode

__all__ = ["PARTIAL_CACHE_BYTES", "ChunkIndex", "ChunkReader"]

PARTIAL_CACHE_BYTES = 16 << 20
"""Decoded chunks kept for reads that used only part of them (process-wide, least recently used
dropped first; a chunk larger than this is never kept)."""


class _PartialCache:
    """Decoded chunks by ``(reader token, chunk position)``; the lock covers only the dict."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self.lock:
            chunk = self.entries.get(key)
            if chunk is not None:
                self.entries.move_to_end(key)
            return chunk

    def put(self, key: tuple[int, int], chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = chunk
            self.bytes += chunk.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= dropped.nbytes


_partial = _PartialCache(PARTIAL_CACHE_BYTES)
_tokens = itertools.count()


@dataclass(frozen=True)
class ChunkIndex:
    """Where a dataset's written chunks are, sorted by their position in the chunk grid."""

    shape: tuple[int, ...]
    """The dataset's shape (without the dimensions of an HDF5 array element type)."""
    chunk_shape: tuple[int, ...]
    keys: np.ndarray
    """int64 C-order numbers of the written chunks in the grid, ascending."""
    offsets: np.ndarray
    """int64 file offset of each written chunk."""
    sizes: np.ndarray
    """int64 stored (filtered) size of each chunk."""
    masks: np.ndarray
    """uint32 filter mask of each chunk (bit i: filter i was skipped)."""

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunk_shape, strict=True))

    @classmethod
    def from_h5py(cls, dsid: Any, shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> ChunkIndex:
        """Build the index from h5py's ``DatasetID`` (``chunk_iter`` where HDF5 has it: one pass
        over the index; ``get_chunk_info(i)`` walks it from the start for every ``i``)."""
        count = dsid.get_num_chunks()
        ndim = len(shape)
        coords = np.empty((count, ndim), dtype=np.int64)
        offsets = np.empty(count, dtype=np.int64)
        sizes = np.empty(count, dtype=np.int64)
        masks = np.empty(count, dtype=np.uint32)
        if count and hasattr(dsid, "chunk_iter"):
            position = 0

            def visit(info: Any) -> None:
                nonlocal position
                if position < count:
                    coords[position] = info.chunk_offset
                    offsets[position] = info.byte_offset
                    sizes[position] = info.size
                    masks[position] = info.filter_mask
                position += 1

            dsid.chunk_iter(visit)
            if position != count:
                raise ReadError(
                    errno.EIO, f"HDF5 listed {position} chunks but counted {count}; the index is corrupt"
                )
        else:
            for i in range(count):
                info = dsid.get_chunk_info(i)
                coords[i] = info.chunk_offset
                offsets[i], sizes[i], masks[i] = info.byte_offset, info.size, info.filter_mask
        chunks = np.asarray(chunk_shape, dtype=np.int64)
        grid = np.asarray([-(-n // c) for n, c in zip(shape, chunk_shape, strict=True)], dtype=np.int64)
        cell = coords // chunks
        # Chunks left beyond the extent of a shrunk dataset hold no rows of it.
        inside = np.all(cell < grid, axis=1) if ndim else np.ones(count, dtype=bool)
        keys = np.ravel_multi_index(tuple(cell[inside].T), tuple(grid.tolist())) if count else cell[:, 0]
        order = np.argsort(keys, kind="stable")
        return cls(
            shape=shape,
            chunk_shape=chunk_shape,
            keys=np.ascontiguousarray(np.asarray(keys, dtype=np.int64)[order]),
            offsets=offsets[inside][order],
            sizes=sizes[inside][order],
            masks=masks[inside][order],
        )


class ChunkReader:
    """Fills rows of ``out`` from the chunks of one dataset (thread-safe, lock-free)."""

    def __init__(
        self,
        data: ByteSource,
        name: str,
        index: ChunkIndex,
        element: np.dtype,
        element_shape: tuple[int, ...],
        decoders: tuple[tuple[int, Decoder], ...],
        fill: np.ndarray,
    ) -> None:
        self.data = data
        self.name = name
        self.index = index
        self.element = element  # as stored, with its byte order
        self.element_shape = element_shape
        self.decoders = decoders
        self.fill = fill
        self.token = next(_tokens)  # never reused, unlike id(): cache keys cannot go stale
        self.chunk_shape = index.chunk_shape
        self.grid = index.grid
        self.inner = math.prod(self.grid[1:])  # chunks across one row of chunks
        self.chunk_bytes = math.prod(self.chunk_shape) * math.prod(element_shape) * element.itemsize
        # The region of the dataset (dimensions 1..) each chunk of a row of chunks covers.
        self.regions: list[tuple[slice, ...]] = []
        for cell in np.ndindex(*self.grid[1:]):
            self.regions.append(
                tuple(
                    slice(c * size, min((c + 1) * size, extent))
                    for c, size, extent in zip(cell, self.chunk_shape[1:], index.shape[1:], strict=True)
                )
            )

    def _chunk(self, position: int) -> np.ndarray:
        """Chunk ``position`` of the index, decoded, shaped ``(*chunk_shape, *element_shape)``."""
        index = self.index
        offset, size = int(index.offsets[position]), int(index.sizes[position])
        stored = np.empty(size, dtype=np.uint8)
        self.data.read_into(offset, memoryview(stored))  # type: ignore[arg-type]
        try:
            raw = decode(self.decoders, stored, int(index.masks[position]), self.chunk_bytes)
        except ChecksumError as exc:
            raise ReadError(
                errno.EIO,
                f"{self.name}: chunk {self._where(position)} failed its fletcher32 checksum "
                f"({exc}); the file is corrupt",
            ) from None
        except Exception as exc:
            filters = " + ".join(FILTER_NAMES.get(code, str(code)) for code, _ in self.decoders)
            raise ReadError(
                errno.EIO,
                f"{self.name}: chunk {self._where(position)} could not be decoded ({filters}): "
                f"{type(exc).__name__}: {exc}; the file is corrupt or was modified",
            ) from exc
        flat = np.frombuffer(raw, dtype=np.uint8)
        if len(flat) != self.chunk_bytes:
            raise ReadError(
                errno.EIO,
                f"{self.name}: chunk {self._where(position)} decoded to {len(flat)} bytes, expected "
                f"{self.chunk_bytes}; the file is corrupt or was modified",
            )
        return flat.view(self.element).reshape(*self.chunk_shape, *self.element_shape)

    def _where(self, position: int) -> str:
        cell = np.unravel_index(int(self.index.keys[position]), self.grid)
        start = tuple(int(c) * s for c, s in zip(cell, self.chunk_shape, strict=True))
        return (
            f"at dataset position {start} ({self.index.sizes[position]} bytes at file offset "
            f"{self.index.offsets[position]})"
        )

    def _fill_row_of_chunks(
        self, row_chunk: int, rows: slice | np.ndarray, out: np.ndarray, partial: bool = False
    ) -> None:
        """Fill ``out`` with ``rows`` (positions within row of chunks ``row_chunk``); ``partial``:
        the caller uses only part of these chunks, so keep them for its neighbours."""
        first = row_chunk * self.inner
        lo, hi = np.searchsorted(self.index.keys, [first, first + self.inner]).tolist()
        written = dict(zip((self.index.keys[lo:hi] - first).tolist(), range(lo, hi), strict=True))
        for inner, region in enumerate(self.regions):
            where = (slice(None), *region)
            target = out[where]
            position = written.get(inner)
            if position is None:
                target[...] = self.fill
                continue
            if partial:
                key = (self.token, position)
                chunk = _partial.get(key)
                if chunk is None:
                    chunk = self._chunk(position)
                    _partial.put(key, chunk)
            else:
                chunk = self._chunk(position)
            # Edge chunks are stored whole; only the part inside the dataset's extent is used.
            part = (rows, *(slice(0, r.stop - r.start) for r in region))
            target[...] = chunk[part]

    def read_range(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``[start, stop)`` into ``out``; each chunk touched is decoded once."""
        rows_per = self.chunk_shape[0]
        for row_chunk in range(start // rows_per, (stop - 1) // rows_per + 1):
            lo = max(start, row_chunk * rows_per)
            hi = min(stop, (row_chunk + 1) * rows_per)
            base = row_chunk * rows_per
            partial = lo > base or hi < min(base + rows_per, self.index.shape[0])
            self._fill_row_of_chunks(
                row_chunk, slice(lo - base, hi - base), out[lo - start : hi - start], partial
            )

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` (sorted, unique) into ``out``; each chunk touched is decoded once."""
        rows_per = self.chunk_shape[0]
        row_chunks = rows // rows_per
        breaks = np.flatnonzero(np.diff(row_chunks)) + 1
        bounds = [0, *breaks.tolist(), len(rows)]
        for first, last in itertools.pairwise(bounds):
            row_chunk = int(row_chunks[first])
            within = rows[first:last] - row_chunk * rows_per
            if len(within) == within[-1] - within[0] + 1:  # a run: slicing avoids a gather copy
                selection: slice | np.ndarray = slice(int(within[0]), int(within[-1]) + 1)
            else:
                selection = within
            self._fill_row_of_chunks(row_chunk, selection, out[first:last])
