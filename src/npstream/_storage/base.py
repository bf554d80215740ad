"""The byte layer: what every store of bytes provides to the formats above it.

A :class:`ByteSource` is one file or object, read by position: its size and identity as they
were when it was opened, and ``read_into(offset, buffer)``, which fills the whole buffer or
raises. Formats parse headers through :func:`open_stream` and describe where an array's bytes
are; sources read rows with ``read_into``. A local file (``_storage.local``) and a remote object
are two implementations of this contract; nothing above this layer knows which it has.
"""

from __future__ import annotations

import io
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ByteSource", "ByteStream", "byte_view", "open_stream", "read_bytes"]


@runtime_checkable
class ByteSource(Protocol):
    """Bytes of one file or object, read by position.

    What callers may rely on:

    * ``name`` is the path or URL as the user gave it; every error message names it.
    * ``size`` is the size in bytes when the source was opened; ``identity`` changes when the
      file or object is replaced (inode and modification time, an ETag).
    * ``read_into(offset, buf)`` fills all of ``buf`` with the bytes at ``offset`` or raises:
      :class:`~npstream.ReadError` when the bytes are no longer there (the file shrank, the
      object changed), the built-in ``OSError`` subclasses for missing or denied files. It never
      returns a partial buffer and never writes to the file.
    * It is safe to call ``read_into`` from many threads at once.
    * ``kind`` (``"local"`` or ``"remote"``) tells readers how to schedule requests.
    * Sources are picklable: the copy reopens its file or object in the receiving process.
    """

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def identity(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def read_into(self, offset: int, buf: memoryview) -> None: ...

    def close(self) -> None: ...


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a writable flat memoryview."""
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def read_bytes(data: ByteSource, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset``: fewer only where the source ends."""
    length = max(0, min(length, data.size - offset))
    buf = bytearray(length)
    if length:
        data.read_into(offset, memoryview(buf))
    return bytes(buf)


class ByteStream(io.RawIOBase):
    """A read-only, seekable file object over a :class:`ByteSource`.

    For the parsers that want a file (``numpy.lib.format``, ``zipfile``, h5py's file-like
    driver). Reads past the size the source had when opened return short, as a file's do.
    """

    def __init__(self, data: ByteSource) -> None:
        self.data = data
        self._position = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.data.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.data.size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError(f"{self.data.name}: seek to a negative position ({position})")
        self._position = position
        return position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.data.size - self._position))
        if count:
            self.data.read_into(self._position, view[:count])
        self._position += count
        return count


def open_stream(data: ByteSource, buffer_size: int = 64 << 10) -> io.BufferedReader:
    """A buffered file object over ``data``; closing it leaves ``data`` open."""
    return io.BufferedReader(ByteStream(data), buffer_size=buffer_size)
