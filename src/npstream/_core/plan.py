"""Which rows go where: the pure plan of an epoch, with no I/O.

An epoch is a *row sequence*: every row index once, in the order the epoch visits them.

* ``shuffle="none"``: rows in file order.
* ``shuffle="block"``: the file is cut into blocks of ``block_rows`` contiguous rows (about
  1 MB, so disk reads stay large); the blocks are visited in a seeded random order.
* ``shuffle="global"``: a uniform random permutation of all rows. Up to ``EXACT_PERMUTATION_ROWS``
  rows it is drawn whole (numpy's ``permutation``); above, position ``p`` of the sequence is
  ``index_permutation(rows, epoch_seed)(p)``, a keyed bijection of ``[0, rows)`` evaluated for a
  window's positions only (see :func:`index_permutation`), so neither time nor memory grows with
  the array: a whole permutation of 8 M rows took 0.3-4 s here and 4 bytes a row.

Sharding cuts the sequence into ``num_shards`` contiguous parts (part ``i`` for shard ``i``).
Without ``drop_remainder`` part ``i`` is positions ``[i*N//S, (i+1)*N//S)`` (sizes differ by at
most one row, so shards may differ by one batch). With ``drop_remainder`` every part has
``N//S`` rows, truncated to a whole number of batches: the last ``N mod S`` positions of the
sequence and each part's last ``(N//S) mod batch_size`` positions are dropped, and every shard
yields exactly ``(N//S) // batch_size`` batches.

A part is then cut into *windows* of ``window_rows`` consecutive positions (a multiple of the
batch size), the first ``lead_windows`` possibly shorter (``first_window_rows``: the first
batches of an epoch then wait only for small reads); a final partial batch, if any, is a window
of its own. A window is what one call reads: its rows come from a few large contiguous
``segments``; in block mode they are then mixed by a seeded permutation of the window, so rows of
different blocks share batches. Each window's batches are its rows in order, ``batch_size`` at a
time. Everything here is a function of its arguments and an integer ``epoch_seed``; the seed of
epoch ``e`` of a stream seeded ``seed`` is :func:`epoch_seed` ``(seed, e)``, the same in every
adapter.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .._errors import UsageError

__all__ = [
    "EXACT_PERMUTATION_ROWS",
    "SHUFFLE_MODES",
    "EpochPlan",
    "Window",
    "epoch_seed",
    "index_permutation",
]

SHUFFLE_MODES = ("none", "block", "global")
EXACT_PERMUTATION_ROWS = 1 << 16
"""Global shuffle draws a whole permutation up to this many rows (under a millisecond)."""
FEISTEL_ROUNDS = 6
_FEISTEL_PIECE = 1 << 14


@dataclass(frozen=True, slots=True)
class Window:
    """What one read produces: rows from ``segments``, then reordered by ``gather``."""

    segments: np.ndarray
    """``(k, 2)`` int64 array of file row ranges ``[start, stop)``, read one after another."""
    gather: np.ndarray | None
    """Output row ``j`` is row ``gather[j]`` of the concatenated segments; ``None``: as read."""
    rows: int
    """Rows in the window (the sum of segment lengths)."""
    sorted_rows: np.ndarray | None = None
    """Global shuffle: the window's file rows, ascending (the rows ``segments`` cover)."""


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFFFFFFFFFF for k in key]))


def epoch_seed(seed: int, epoch: int) -> int:
    """The ``epoch_seed`` of epoch ``epoch`` (0, 1, ...) of a stream seeded ``seed``."""
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch, 3]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """The static shape of every epoch; ``window(seed, w)`` and ``epoch_order(seed)`` vary by seed."""

    rows: int
    batch_size: int
    shuffle: str = "none"
    block_rows: int = 1
    window_rows: int = 1
    num_shards: int = 1
    shard_index: int = 0
    drop_remainder: bool = False
    first_window_rows: int | None = None
    """Rows of the first ``lead_windows`` windows (a multiple of ``batch_size``, at most
    ``window_rows``): small windows first, so the first batches need only small reads."""
    lead_windows: int = 1

    def __post_init__(self) -> None:
        if self.shuffle not in SHUFFLE_MODES:
            raise UsageError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {self.shuffle!r}")
        for name in ("batch_size", "block_rows", "window_rows", "num_shards", "lead_windows"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.rows < 0:
            raise UsageError(f"rows must be >= 0, got {self.rows}")
        if not 0 <= self.shard_index < self.num_shards:
            raise UsageError(
                f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}"
            )
        lead = self.first_window_rows
        if lead is not None and (lead <= 0 or lead % self.batch_size or lead > self.window_rows):
            raise UsageError(
                f"first_window_rows {lead} must be a positive multiple of batch_size "
                f"{self.batch_size}, at most window_rows {self.window_rows}"
            )
        if self.window_rows % self.batch_size:
            raise UsageError(
                f"window_rows {self.window_rows} must be a multiple of batch_size {self.batch_size}"
            )

    # -- sizes -------------------------------------------------------------------------------
    @property
    def part(self) -> tuple[int, int]:
        """This shard's positions ``[start, stop)`` in the epoch's row sequence."""
        n, shards, i = self.rows, self.num_shards, self.shard_index
        if self.drop_remainder:
            size = n // shards
            return i * size, i * size + (size // self.batch_size) * self.batch_size
        return i * n // shards, (i + 1) * n // shards

    @property
    def shard_rows(self) -> int:
        start, stop = self.part
        return stop - start

    @property
    def num_batches(self) -> int:
        return math.ceil(self.shard_rows / self.batch_size)

    @property
    def num_windows(self) -> int:
        full, _, lead_total, lead_count = self._lead()
        regular = math.ceil((full - lead_total) / self.window_rows)
        return lead_count + regular + (full < self.shard_rows)

    def _lead(self) -> tuple[int, int, int, int]:
        """(whole-batch rows, rows per lead window, rows in lead windows, lead windows)."""
        full = self.shard_rows // self.batch_size * self.batch_size
        lead_rows = min(self.first_window_rows or self.window_rows, full)
        lead_total = min(lead_rows * self.lead_windows, full)
        return full, lead_rows, lead_total, (math.ceil(lead_total / lead_rows) if lead_rows else 0)

    @property
    def full_batches_only(self) -> bool:
        """True when every batch of every shard has exactly ``batch_size`` rows."""
        if self.drop_remainder:
            return True
        n, shards = self.rows, self.num_shards
        return all(((i + 1) * n // shards - i * n // shards) % self.batch_size == 0 for i in range(shards))

    def window_bounds(self, window: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` of ``window`` in the epoch's row sequence."""
        if not 0 <= window < self.num_windows:
            raise UsageError(f"window {window} is not in [0, {self.num_windows})")
        start, stop = self.part
        full, lead_rows, lead_total, lead_count = self._lead()
        if window < lead_count:
            first = start + window * lead_rows
            return first, min(first + lead_rows, start + lead_total)
        full_stop = start + full
        first = start + lead_total + (window - lead_count) * self.window_rows
        if first >= full_stop:  # the final partial batch, a window of its own
            return full_stop, stop
        return first, min(first + self.window_rows, full_stop)

    def window_of_batch(self, batch: int) -> tuple[int, int]:
        """``(window, batches before it in that window)`` for batch ``batch`` of the epoch."""
        if not 0 <= batch < self.num_batches:
            raise UsageError(f"batch {batch} is not in [0, {self.num_batches})")
        position = self.part[0] + batch * self.batch_size
        low, high = 0, self.num_windows - 1
        while low < high:  # the last window starting at or before the position
            middle = (low + high + 1) // 2
            if self.window_bounds(middle)[0] <= position:
                low = middle
            else:
                high = middle - 1
        first, _ = self.window_bounds(low)
        return low, (position - first) // self.batch_size

    # -- the order ---------------------------------------------------------------------------
    def window(self, epoch_seed: int, window: int) -> Window:
        first, last = self.window_bounds(window)
        rows = last - first
        if self.shuffle == "none":
            return Window(np.array([[first, last]], dtype=np.int64), None, rows)
        if self.shuffle == "global":
            wanted = global_positions(self.rows, epoch_seed, first, last)
            # Read in file order, merging adjacent rows into one read, then put rows in place.
            order = np.argsort(wanted)  # unique values: any sort is stable
            ranked = wanted[order]
            breaks = np.flatnonzero(np.diff(ranked) != 1) + 1
            starts = ranked[np.concatenate(([0], breaks))]
            stops = ranked[np.concatenate((breaks - 1, [rows - 1]))] + 1
            gather = np.empty(rows, dtype=np.int64)
            gather[order] = np.arange(rows, dtype=np.int64)
            segments = np.stack([starts, stops], axis=1).astype(np.int64)
            return Window(segments, gather, rows, ranked.astype(np.int64, copy=False))
        block_order, block_ends = _block_sequence(self.rows, self.block_rows, epoch_seed)
        # Blocks overlapping positions [first, last) of the sequence, clipped to it.
        lo = int(np.searchsorted(block_ends, first, side="right"))
        hi = int(np.searchsorted(block_ends, last, side="left")) + 1
        blocks = block_order[lo:hi]
        sizes = _block_sizes(self.rows, self.block_rows, blocks)
        seq_starts = block_ends[lo:hi] - sizes
        file_starts = blocks * self.block_rows
        begin = file_starts + np.maximum(first - seq_starts, 0)
        end = file_starts + np.minimum(last - seq_starts, sizes)
        segments = np.stack([begin, end], axis=1).astype(np.int64)
        gather = _rng(epoch_seed, self.shard_index, window, 1).permutation(rows)
        return Window(segments, gather, rows)

    def window_row_indices(self, epoch_seed: int, window: int) -> np.ndarray:
        """The file row of each output row of ``window``, in output order (for tests and tools)."""
        plan = self.window(epoch_seed, window)
        read = np.concatenate(
            [np.arange(a, b, dtype=np.int64) for a, b in plan.segments] or [np.empty(0, np.int64)]
        )
        return read if plan.gather is None else read[plan.gather]

    def epoch_order(self, epoch_seed: int) -> np.ndarray:
        """Every row this shard yields in the epoch, in output order."""
        parts = [self.window_row_indices(epoch_seed, w) for w in range(self.num_windows)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def global_positions(rows: int, epoch_seed: int, first: int, last: int) -> np.ndarray:
    """The file rows at positions ``[first, last)`` of a global-shuffle epoch."""
    if rows <= EXACT_PERMUTATION_ROWS:
        return _permutation(rows, epoch_seed)[first:last].astype(np.int64)
    return index_permutation(rows, epoch_seed, np.arange(first, last, dtype=np.uint64))


@functools.lru_cache(maxsize=4)
def _permutation(rows: int, epoch_seed: int) -> np.ndarray:
    perm = _rng(epoch_seed, 0).permutation(rows)
    perm.flags.writeable = False
    return perm


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of ``x ^ key``: every input bit affects every output bit."""
    x = x ^ key
    x ^= x >> _S30
    x *= _MIX1
    x ^= x >> _S27
    x *= _MIX2
    x ^= x >> _S31
    return x


def index_permutation(rows: int, epoch_seed: int, positions: np.ndarray) -> np.ndarray:
    """``perm[positions]`` for a keyed permutation ``perm`` of ``[0, rows)``, without building it.

    An alternating Feistel network on the smallest bit width holding ``rows``, split into a high
    and a low half: ``FEISTEL_ROUNDS`` rounds, each adding (xor) to one half a 64-bit mix of the
    other half and a round key drawn from ``epoch_seed``. Every round is invertible, so the whole
    is a bijection of ``[0, 2**bits)``, and with a pseudo-random round function it is a
    pseudo-random permutation (Luby-Rackoff). Values landing outside ``[0, rows)`` are encrypted
    again until they land inside ("cycle walking"), which keeps it a bijection of ``[0, rows)``;
    the domain is under twice ``rows``, so that takes under two passes on average. Vectorised,
    for a window's positions only.
    """
    bits = max(2, int(rows - 1).bit_length())
    low_bits = bits // 2
    low_mask = np.uint64((1 << low_bits) - 1)
    high_mask = np.uint64((1 << (bits - low_bits)) - 1)
    shift = np.uint64(low_bits)
    keys = np.random.SeedSequence([epoch_seed & 0xFFFFFFFFFFFFFFFF, 4]).generate_state(
        FEISTEL_ROUNDS, np.uint64
    )
    values = np.asarray(positions, dtype=np.uint64).copy()
    limit = np.uint64(rows)
    # In pieces that stay in the CPU cache: each round passes over the values a dozen times.
    for start in range(0, len(values), _FEISTEL_PIECE):
        part = values[start : start + _FEISTEL_PIECE]
        todo = np.arange(len(part))
        while len(todo):
            x = part[todo]
            high, low = x >> shift, x & low_mask
            for i, key in enumerate(keys):
                if i % 2:
                    high ^= _mix(low, key) & high_mask
                else:
                    low ^= _mix(high, key) & low_mask
            high <<= shift
            high |= low
            part[todo] = high
            todo = todo[high >= limit]
    return values.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _block_sequence(rows: int, block_rows: int, epoch_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Block visiting order and each visited block's end position in the row sequence."""
    blocks = math.ceil(rows / block_rows)
    order = _rng(epoch_seed, 2).permutation(blocks).astype(np.int64)
    ends = np.cumsum(_block_sizes(rows, block_rows, order))
    order.flags.writeable = False
    ends.flags.writeable = False
    return order, ends


def _block_sizes(rows: int, block_rows: int, blocks: np.ndarray) -> np.ndarray:
    """Rows in each of ``blocks`` (every block is ``block_rows`` long but the last)."""
    return np.minimum(rows - blocks * block_rows, block_rows)
