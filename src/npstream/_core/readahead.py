"""Reading windows ahead of their consumer.

Adapters ask for windows by key, ``(epoch, window)``: TensorFlow's pipeline asks statelessly
(it owns the position, for checkpoints), the neutral iterator asks in order. Both mostly ask for
the window after the last one, so :class:`ReadAhead` reads the next ``ahead`` keys in the
background while the consumer works through the current window, and hands over a window that
is already read. A key nobody predicted (a restored checkpoint, a new epoch number, a second
iterator) is read on demand and becomes the new point to read ahead from; predictions nobody
asks for are dropped, bounded by ``max_slots``.

What to read next is decided here; how each window's bytes are read (pieces, threads, requests
in flight) is the reader's business (:mod:`~npstream._core.window`, :mod:`~npstream._core.reader`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from .reader import ThreadPool

__all__ = ["ReadAhead"]

Key = tuple[int, int]

_window_pool = ThreadPool(4, "npstream-window")


class ReadAhead:
    """``get((epoch, window))`` with the following windows read in the background."""

    def __init__(
        self,
        read: Callable[[int, int], object],
        num_windows: int,
        *,
        ahead: int = 2,
        next_epoch: bool = True,
    ) -> None:
        self._read = read
        self.num_windows = num_windows
        self.ahead = ahead
        self.next_epoch = next_epoch
        self.max_slots = 2 * ahead
        self._lock = threading.Lock()
        self._slots: OrderedDict[Key, Future] = OrderedDict()

    def _following(self, key: Key) -> list[Key]:
        keys = []
        epoch, window = key
        for _ in range(self.ahead):
            window += 1
            if window >= self.num_windows:
                if not self.next_epoch:
                    break
                epoch, window = epoch + 1, 0
            keys.append((epoch, window))
        return keys

    def _submit(self, key: Key) -> Future:
        return _window_pool.submit(lambda: self._read(*key))

    def get(self, epoch: int, window: int) -> object:
        """Window ``window`` of epoch ``epoch``, as ``read`` returns it; its errors are raised here."""
        key = (epoch, window)
        with self._lock:
            future = self._slots.pop(key, None)
            predicted = future is not None
            if future is None:
                future = self._submit(key)
            wanted = self._following(key)
            for following in wanted:
                if following in self._slots:
                    self._slots.move_to_end(following)
                else:
                    self._slots[following] = self._submit(following)
            while len(self._slots) > self.max_slots:  # oldest predictions first
                self._slots.popitem(last=False)
        try:
            return future.result()
        except Exception:
            if not predicted:
                raise
        # A read made ahead failed (perhaps while a fault since cleared): read again now, and
        # let that read's error, if any, be the answer.
        return self._read(*key)

    def clear(self) -> None:
        """Forget predictions (their reads finish in the background and release their buffers)."""
        with self._lock:
            self._slots.clear()
