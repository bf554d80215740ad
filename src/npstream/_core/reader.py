"""Executing a read plan: many reads in flight, into one destination buffer.

A disk reached through one outstanding request sits half idle (cold reads measured here: about
0.5 GB/s with one in flight, 1.0-1.3 GB/s with 4-8), and a page-cache copy on one core leaves
the second idle. So a window's segments are cut into pieces of at most ``PIECE_BYTES`` and read
by up to ``IO_THREADS`` threads at once, each into its own slice of the destination. A single
contiguous range is cut for only ``CONTIGUOUS_STREAMS`` threads: under TensorFlow, eight threads
contending for the GIL on two cores delivered less (4.7 vs 5.5 GiB/s warm in one comparison),
and the kernel's readahead keeps a cold disk busy; scattered blocks (block shuffle) get all
eight, as a cold disk needs several requests in flight (about 0.5 GB/s with one, 1.0-1.3 with
4-8 measured here).

The threads are one ``concurrent.futures`` pool per process, started on first use and reused.
Not threads per call: reads are issued from TensorFlow's threads, and a thread started there
just as the interpreter exits may never run, leaving the caller (and TensorFlow's iterator
destructor, which waits for the caller) blocked forever. The pool's own exit hook finishes
every read already submitted and refuses later ones with an error instead.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .._formats.source import ArraySource

__all__ = ["CONTIGUOUS_STREAMS", "IO_THREADS", "PIECE_BYTES", "gather_rows", "read_segments"]

IO_THREADS = 8
PIECE_BYTES = 8 << 20
CONTIGUOUS_STREAMS = 4


def _tasks(segments: np.ndarray, row_bytes: int) -> list[list[tuple[int, int, int]]]:
    """Cut ``(start, stop)`` segments into tasks of ``(start, stop, out_row)`` reads.

    Large segments are split and small ones grouped, so that every task moves at most
    ``PIECE_BYTES`` and there are enough tasks to keep ``IO_THREADS`` requests in flight.
    """
    total_rows = int((segments[:, 1] - segments[:, 0]).sum()) if len(segments) else 0
    piece_rows = max(1, PIECE_BYTES // max(row_bytes, 1))
    # One contiguous range gets the kernel's readahead on top of our requests; scattered blocks
    # get nothing, so they need more requests in flight to keep a cold disk busy.
    streams = CONTIGUOUS_STREAMS if len(segments) == 1 else IO_THREADS
    task_rows = max(1, min(piece_rows, -(-total_rows // streams)))
    tasks: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    current_rows = out_row = 0
    for start, stop in segments.tolist():
        while start < stop:
            take = min(stop - start, task_rows - current_rows)
            current.append((start, start + take, out_row))
            start += take
            out_row += take
            current_rows += take
            if current_rows == task_rows:
                tasks.append(current)
                current, current_rows = [], 0
    if current:
        tasks.append(current)
    return tasks


def _run(source: ArraySource, task: Sequence[tuple[int, int, int]], out: np.ndarray) -> None:
    for start, stop, out_row in task:
        source.read(start, stop, out[out_row : out_row + stop - start])


_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        # A pool inherited through fork has no threads in the child: start a new one.
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="npstream-io")
            _pool_pid = os.getpid()
        return _pool


def _in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs``, the first on the calling thread and the rest on the pool; wait for all.

    An error raised by any job is re-raised here, unchanged, after every job has stopped (so no
    thread still writes into a buffer the caller is about to reuse or hand on).
    """
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    pool = _executor()
    futures = [pool.submit(job) for job in jobs[1:]]
    try:
        jobs[0]()
    finally:
        wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error


def read_segments(source: ArraySource, segments: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with rows ``segments[0]``, then ``segments[1]``, ...; ``segments`` is ``(k, 2)``."""
    row_bytes = out.nbytes // len(out) if len(out) else 0
    tasks = _tasks(np.asarray(segments, dtype=np.int64).reshape(-1, 2), row_bytes)
    _in_parallel([functools.partial(_run, source, task, out) for task in tasks])
    return out


def gather_rows(values: np.ndarray, order: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[j] = values[order[j]]``, split across the I/O threads (numpy releases the GIL)."""
    parts = min(IO_THREADS, max(1, out.nbytes // PIECE_BYTES))
    bounds = np.linspace(0, len(out), parts + 1).astype(np.int64).tolist()

    def take(first: int, last: int) -> None:
        # mode="clip" lets numpy write straight into `out` (mode="raise" buffers it)
        np.take(values, order[first:last], axis=0, out=out[first:last], mode="clip")

    _in_parallel([functools.partial(take, a, b) for a, b in itertools.pairwise(bounds)])
    return out
