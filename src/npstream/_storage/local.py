"""Local files, read with positional reads (``os.preadv``).

Why not ``np.memmap``: mapped pages count as the process's resident memory, so streaming a
file through a map grows RSS to the file's size, and a file truncated while mapped kills the
process with SIGBUS. ``os.preadv`` into the caller's buffer keeps memory at the buffer's size,
turns truncation into an ordinary exception, needs no shared file position (so any number of
threads can read through one descriptor), and costs one syscall per contiguous range wherever
it starts.
"""

from __future__ import annotations

import os
import weakref

from .._errors import ReadError

__all__ = ["LocalFile", "open_readonly", "pread_into"]


def open_readonly(path: str) -> int:
    """Open ``path`` for reading only; directories get a message that suggests a glob."""
    if os.path.isdir(path):
        raise IsADirectoryError(
            21,
            f"{path} is a directory; to read the arrays in it pass a glob such as "
            f"'{os.path.join(path, '*.npy')}' or a list of files",
            path,
        )
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def pread_into(fd: int, buf: memoryview, offset: int, name: str) -> None:
    """Fill ``buf`` from byte ``offset`` of ``fd``; a short read means the file shrank."""
    done = 0
    total = len(buf)
    while done < total:
        try:
            got = os.preadv(fd, [buf[done:] if done else buf], offset + done)
        except OSError as exc:
            raise ReadError(
                exc.errno,
                f"{name}: reading {total - done} bytes at offset {offset + done} failed: "
                f"{exc.strerror or exc}",
            ) from exc
        if got == 0:
            size = os.fstat(fd).st_size
            raise ReadError(
                f"{name}: expected {total} bytes at offset {offset} but the file ends at "
                f"{size} bytes; it was truncated or replaced after it was opened"
            )
        done += got


class LocalFile:
    """A :class:`~npstream._storage.base.ByteSource` over a local file (one read-only descriptor)."""

    kind = "local"

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = open_readonly(path)
        self._closer = weakref.finalize(self, os.close, self._fd)
        stat = os.fstat(self._fd)
        self.size = stat.st_size
        self.identity = f"{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"

    def __reduce__(self):
        return (LocalFile, (self.name,))

    def __repr__(self) -> str:
        return f"LocalFile({self.name!r}, size={self.size})"

    def read_into(self, offset: int, buf: memoryview) -> None:
        if not self._closer.alive:
            raise ReadError(f"{self.name}: the source was closed")
        pread_into(self._fd, buf, offset, self.name)

    def close(self) -> None:
        self._closer()
