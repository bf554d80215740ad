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

Destinations are ``(batches, batch_rows, *row_shape)`` arrays. Usually contiguous; an adapter
that wants every batch to start on a 64-byte boundary passes a view with padding between
batches, and reads are then split at batch boundaries (each batch is contiguous on its own).

The threads are one pool of daemon threads per process (:class:`ThreadPool`), started on first
use and reused. Not threads per call: reads are issued from framework threads, and a thread
started there just as the interpreter exits may never run. Not ``concurrent.futures``' pool
either: its exit hook refuses new work before ``atexit`` runs, so a read still in progress at
exit failed with "cannot schedule new futures after interpreter shutdown".
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from .._formats.source import ArraySource

__all__ = [
    "CONTIGUOUS_STREAMS",
    "IO_THREADS",
    "PIECE_BYTES",
    "ThreadPool",
    "gather_rows",
    "in_parallel",
    "read_segments",
]

IO_THREADS = 8
PIECE_BYTES = 8 << 20
CONTIGUOUS_STREAMS = 4


class ThreadPool:
    """A fixed set of daemon threads running submitted callables; ``submit`` returns a Future.

    A pool inherited through fork has no threads in the child: ``submit`` there starts new ones.
    """

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.name = name
        self._lock = threading.Lock()
        self._pid = -1
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                for i in range(self.threads):
                    threading.Thread(target=self._work, args=(self._queue,), name=f"{self.name}-{i}",
                                     daemon=True).start()  # fmt: skip
                self._pid = os.getpid()
            self._queue.put((future, fn))
        return future

    @staticmethod
    def _work(work: queue.SimpleQueue) -> None:
        while True:
            future, fn = work.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn


_io_pool = ThreadPool(IO_THREADS, "npstream-io")


def in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs``, the first on the calling thread and the rest on the I/O pool; wait for all.

    An error raised by any job is re-raised here, unchanged, after every job has stopped (so no
    thread still writes into a buffer the caller is about to reuse or hand on).
    """
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    futures = [_io_pool.submit(job) for job in jobs[1:]]
    first_error: BaseException | None = None
    try:
        jobs[0]()
    except BaseException as exc:
        first_error = exc
    for future in futures:
        error = future.exception()  # waits
        if error is not None and first_error is None:
            first_error = error
    if first_error is not None:
        raise first_error


def _flat(out: np.ndarray) -> np.ndarray | None:
    """``out`` as ``(rows, *row_shape)`` when that is a view (no padding between batches)."""
    if out.flags.c_contiguous:
        return out.reshape(-1, *out.shape[2:])
    return None


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
    flat = _flat(out)
    batch_rows = out.shape[1]
    for start, stop, out_row in task:
        if flat is not None:
            source.read(start, stop, flat[out_row : out_row + stop - start])
            continue
        while start < stop:  # padded batches: one read per batch the rows land in
            batch, row = divmod(out_row, batch_rows)
            take = min(stop - start, batch_rows - row)
            source.read(start, start + take, out[batch, row : row + take])
            start, out_row = start + take, out_row + take


def read_segments(source: ArraySource, segments: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with rows ``segments[0]``, then ``segments[1]``, ...; ``segments`` is ``(k, 2)``.

    ``out`` is ``(batches, batch_rows, *row_shape)``; see the module docstring.
    """
    rows = out.shape[0] * out.shape[1]
    row_bytes = out.dtype.itemsize * int(np.prod(out.shape[2:], dtype=np.int64))
    if not rows:
        return out
    tasks = _tasks(np.asarray(segments, dtype=np.int64).reshape(-1, 2), row_bytes)
    in_parallel([functools.partial(_run, source, task, out) for task in tasks])
    return out


def gather_rows(values: np.ndarray, order: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` (``(batches, batch_rows, ...)``) row ``j`` = ``values[order[j]]``, on the I/O threads.

    numpy releases the GIL while it copies, so the parts run in parallel.
    """
    batch_rows = out.shape[1]
    flat = _flat(out)
    parts = min(IO_THREADS, max(1, out.nbytes // PIECE_BYTES))
    if flat is not None:
        bounds = np.linspace(0, len(flat), parts + 1).astype(np.int64).tolist()
        pieces = [(flat[a:b], order[a:b]) for a, b in itertools.pairwise(bounds)]
    else:
        pieces = [(out[k], order[k * batch_rows : (k + 1) * batch_rows]) for k in range(out.shape[0])]

    def take(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for target, indices in pairs:
            # mode="clip" lets numpy write straight into `target` (mode="raise" buffers it)
            np.take(values, indices, axis=0, out=target, mode="clip")

    groups = [pieces[i::parts] for i in range(min(parts, len(pieces)))]
    in_parallel([functools.partial(take, group) for group in groups])
    return out
