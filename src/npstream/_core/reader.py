"""The threads that perform reads: one pool of daemon threads per process.

Reads block in the kernel (``preadv`` releases the GIL), so keeping a disk busy takes as many
threads as requests in flight: up to :data:`IO_THREADS`, shared by every stream of the process
(:mod:`~npstream._core.schedule` decides how many each stream uses at once).

Threads, not processes: the data lands in buffers the consumer reads without a copy. Started on
first use and reused, not started per call: reads are issued from framework threads, and a
thread started there just as the interpreter exits may never run. Not ``concurrent.futures``'
pool either: its exit hook refuses new work before ``atexit`` runs, so a read still in progress
at exit failed with "cannot schedule new futures after interpreter shutdown".
"""

from __future__ import annotations

import os
import queue
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future

__all__ = ["IO_THREADS", "ThreadPool", "in_parallel", "io_pool"]

IO_THREADS = 32
"""Threads in the process's I/O pool: the most requests in flight any storage profile wants."""


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
        self.post(future, fn)
        return future

    def post(self, future: Future | None, fn: Callable[[], object]) -> None:
        """Run ``fn`` on a pool thread; its outcome goes to ``future`` (None: ``fn`` reports its own)."""
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                for i in range(self.threads):
                    threading.Thread(target=self._work, args=(self._queue,), name=f"{self.name}-{i}",
                                     daemon=True).start()  # fmt: skip
                self._pid = os.getpid()
            self._queue.put((future, fn))

    @staticmethod
    def _work(work: queue.SimpleQueue) -> None:
        while True:
            future, fn = work.get()
            if future is None:
                try:
                    fn()  # reports its own outcome
                except BaseException:  # a bug: say so, and keep the thread for the next task
                    traceback.print_exc()
                del fn
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn


io_pool = ThreadPool(IO_THREADS, "npstream-io")


def in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs``, the first on the calling thread and the rest on the I/O pool; wait for all.

    An error raised by any job is re-raised here, unchanged, after every job has stopped (so no
    thread still writes into a buffer the caller is about to reuse or hand on).
    """
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    futures = [io_pool.submit(job) for job in jobs[1:]]
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
