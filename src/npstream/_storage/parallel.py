"""One large remote read as several ranged requests in flight, into slices of the caller's buffer.

A single HTTP response is as fast as one connection: tens of MB/s to a cloud object store, and
32 MB/s through the per-connection cap the benchmark uses. Measured here (README, "Object
stores"): an 8 MB ``read_into`` from one caller thread moves about 7x more through that cap as
eight 1 MiB requests in flight than as one 8 MB request, while on an uncapped loopback server the
two are within noise of each other (two cores are the limit there). So a read is cut into
:func:`pieces` of ``MIN_PIECE_BYTES``..``MAX_PIECE_BYTES`` (at most ``PIECES_PER_READ`` per read
unless pieces would exceed the maximum), and the pieces run on one process-wide pool of
``REMOTE_THREADS`` threads, the calling thread taking part.

Why not ``obstore.get_ranges``: it merges adjacent ranges into one request, which is exactly the
single stream this module exists to avoid. Why threads and not asyncio: obstore's blocking calls
release the GIL while the Rust runtime does the I/O, so a thread per request in flight costs
little, and the callers (the core's reader threads, TensorFlow's threads) are threads already.

The caller never waits idle for a pool busy with other callers' pieces: it runs its own pieces
that no pool thread has started yet. The first failure stops the read's pieces that have not
started, so an outage costs one retry window per read, not one per piece.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

__all__ = [
    "MAX_PIECE_BYTES", "MIN_PIECE_BYTES", "PIECES_PER_READ", "REMOTE_THREADS", "pieces", "read_in_pieces",
]  # fmt: skip

MIN_PIECE_BYTES = 1 << 20
MAX_PIECE_BYTES = 8 << 20
PIECES_PER_READ = 8
REMOTE_THREADS = 16

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A pool inherited through fork has no threads in the child: start a new one.
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=REMOTE_THREADS, thread_name_prefix="npstream-remote")
            _pool_pid = os.getpid()
        return _pool


def pieces(offset: int, length: int) -> list[tuple[int, int]]:
    """``(offset, length)`` pieces covering the range, each a request of its own."""
    if length <= MIN_PIECE_BYTES:
        return [(offset, length)]
    size = -(-length // PIECES_PER_READ)
    size = min(MAX_PIECE_BYTES, max(MIN_PIECE_BYTES, -(-size // (64 << 10)) * (64 << 10)))
    return [(offset + start, min(size, length - start)) for start in range(0, length, size)]


def read_in_pieces(read_range: Callable[[int, memoryview], None], offset: int, buf: memoryview) -> None:
    """Fill ``buf`` with the bytes at ``offset`` by calling ``read_range(piece_offset, view)``.

    Returns only after every piece has finished or been skipped, so no thread still writes into
    ``buf`` when an error reaches the caller. The first error (in piece order) is re-raised.
    """
    parts = pieces(offset, len(buf))
    if len(parts) == 1:
        read_range(offset, buf)
        return
    failed = threading.Event()
    errors: list[tuple[int, BaseException]] = []

    def job(index: int) -> None:
        if failed.is_set():
            return
        start, length = parts[index]
        try:
            read_range(start, buf[start - offset : start - offset + length])
        except BaseException as exc:
            failed.set()
            errors.append((index, exc))

    pool = _executor()
    futures: list[Future[None]] = [pool.submit(job, i) for i in range(1, len(parts))]
    job(0)
    # Take back, newest first, the pieces no pool thread has started, and read them here.
    for index in range(len(futures), 0, -1):
        if futures[index - 1].cancel():
            job(index)
    wait(futures)
    if errors:
        raise min(errors, key=lambda item: item[0])[1]
