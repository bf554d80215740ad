"""Reading a local file around the page cache (``O_DIRECT``), for data that will not stay cached.

A buffered read of a cold file costs the CPU more than the copy: every page is inserted into the
page cache and, once the cache is full, another page is reclaimed for it. Measured here: 0.5-0.7
CPU-seconds per GB buffered against 0.04-0.15 with ``O_DIRECT``, and at 2 GB/s two cores cannot
give 1.2 cores to the kernel's page-cache work on top of the pipeline's own. For a file larger
than the memory that could cache it, every epoch is cold anyway, so reading around the cache
loses nothing; for a file that fits, it would (the next epoch could have come from memory), so
the core asks for direct reads only for data larger than the memory it could spare
(:func:`npstream._core.stream.direct_io_wanted`).

``O_DIRECT`` needs the file offset, the length and the buffer address aligned to the device's
block size (4096 bytes covers every common device). When the destination's address agrees with
the file offset modulo 4096 (the core allocates window buffers that way,
``_core/pool.py``), one ``preadv`` reads the aligned interior straight into place and the
partial pages at either end into two small bounce pages. Otherwise the range is read through
bounce buffers of ``BOUNCE_BYTES`` (at most ``MAX_BOUNCES`` of them exist, so memory stays
bounded however many threads read) and copied into place. The descriptor is opened per call (a
few microseconds against milliseconds of device time for megabytes), so there is nothing to
close, leak or share across ``fork``, and every open is checked against the file's identity: a
file replaced since it was opened is an error, never other bytes.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .._errors import ReadError

__all__ = ["ALIGN", "BOUNCE_BYTES", "DirectReads", "direct_supported"]

ALIGN = 4096
BOUNCE_BYTES = 1 << 20
"""Bytes per request when a destination is not page-aligned (the size of block-shuffle blocks)."""
MAX_BOUNCES = 32


def direct_supported() -> bool:
    return hasattr(os, "O_DIRECT")


def _aligned(nbytes: int) -> np.ndarray:
    owner = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -owner.ctypes.data % ALIGN
    return owner[skip : skip + nbytes]


class _Bounces:
    """A bounded set of page-aligned bounce buffers shared by the reading threads."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._made = 0
        self._ready = threading.Condition()

    def take(self) -> np.ndarray:
        with self._ready:
            while not self._free and self._made >= MAX_BOUNCES:
                self._ready.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        return _aligned(BOUNCE_BYTES + 2 * ALIGN)

    def give(self, buf: np.ndarray) -> None:
        with self._ready:
            self._free.append(buf)
            self._ready.notify()


_bounces = _Bounces()


class DirectReads:
    """``read_into(offset, buf)`` of the local file ``path`` with ``O_DIRECT``.

    ``identity`` is the file's ``"dev:ino:mtime_ns:size"`` when it was first opened (as
    :class:`~npstream._storage.local.LocalFile` records it). ``usable`` turns False when the
    file system refuses ``O_DIRECT`` (tmpfs, some network file systems); callers then read
    buffered.
    """

    def __init__(self, path: str, identity: str) -> None:
        self.path = path
        self.identity = identity
        self.usable = direct_supported()

    def __reduce__(self):
        return (DirectReads, (self.path, self.identity))

    def _open(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == 22:  # EINVAL: no O_DIRECT on this file system
                self.usable = False
                return None
            raise
        st = os.fstat(fd)
        if f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}" != self.identity:
            os.close(fd)
            raise ReadError(
                f"{self.path}: the file was replaced or modified after it was opened "
                "(its inode, size or modification time changed); reopen it"
            )
        return fd

    def read_into(self, offset: int, buf: memoryview) -> bool:
        """Fill ``buf`` from byte ``offset``; False (nothing read) if direct reads are unusable."""
        fd = self._open()
        if fd is None:
            return False
        try:
            self._read(fd, offset, np.frombuffer(buf, dtype=np.uint8))
        except OSError as exc:
            if exc.errno == 22 and not isinstance(exc, ReadError):  # EINVAL: alignment refused
                self.usable = False
                return False
            raise
        finally:
            os.close(fd)
        return True

    def _read(self, fd: int, offset: int, out: np.ndarray) -> None:
        if (out.ctypes.data - offset) % ALIGN == 0 and len(out) >= 2 * ALIGN:
            self._read_in_place(fd, offset, out)
            return
        bounce = _bounces.take()
        try:
            done, total = 0, len(out)
            while done < total:
                start = offset + done
                skip = start % ALIGN
                want = min(BOUNCE_BYTES + ALIGN, -(-(skip + total - done) // ALIGN) * ALIGN)
                got = self._preadv(fd, [memoryview(bounce[:want])], start - skip, want)  # type: ignore[arg-type]
                take = min(got - skip, total - done)
                if take <= 0:
                    self._short(fd, offset, total)
                np.copyto(out[done : done + take], bounce[skip : skip + take])
                done += take
        finally:
            _bounces.give(bounce)

    def _read_in_place(self, fd: int, offset: int, out: np.ndarray) -> None:
        """One request: the aligned interior straight into ``out``, the partial end pages into
        two bounce pages."""
        end = offset + len(out)
        head = -offset % ALIGN
        tail = end % ALIGN
        pages = _aligned(2 * ALIGN) if head or tail else None
        buffers: list[memoryview] = []
        if head:
            buffers.append(memoryview(pages[:ALIGN]))  # type: ignore[index, arg-type]
        if len(out) > head + tail:
            buffers.append(memoryview(out[head : len(out) - tail]))  # type: ignore[arg-type]
        if tail:
            buffers.append(memoryview(pages[ALIGN:]))  # type: ignore[index, arg-type]
        first = offset - (ALIGN - head if head else 0)
        want = sum(len(b) for b in buffers)
        got = self._preadv(fd, buffers, first, want)
        if got < want - (ALIGN - tail if tail else 0):
            self._short(fd, offset, len(out))
        if head:
            assert pages is not None
            np.copyto(out[:head], pages[ALIGN - head : ALIGN])
        if tail:
            assert pages is not None
            np.copyto(out[len(out) - tail :], pages[ALIGN : ALIGN + tail])

    def _preadv(self, fd: int, buffers: list[memoryview], offset: int, want: int) -> int:
        """Read until ``want`` bytes or the end of the file; the bytes read."""
        done = 0
        while done < want:
            views, skip = [], done
            for b in buffers:  # the buffers after the first ``done`` bytes (whole pages)
                if skip >= len(b):
                    skip -= len(b)
                    continue
                views.append(b[skip:])
                skip = 0
            try:
                got = os.preadv(fd, views, offset + done)
            except OSError as exc:
                if exc.errno == 22:
                    raise
                raise ReadError(
                    exc.errno,
                    f"{self.path}: reading {want - done} bytes at offset {offset + done} failed: "
                    f"{exc.strerror or exc}",
                ) from exc
            if got == 0:
                break
            done += got
        return done

    def _short(self, fd: int, offset: int, total: int) -> None:
        raise ReadError(
            f"{self.path}: expected {total} bytes at offset {offset} but the file ends at "
            f"{os.fstat(fd).st_size} bytes; it was truncated or replaced after it was opened"
        )
