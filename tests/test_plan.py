"""``EpochPlan``: the pure plan of an epoch, checked against an oracle written from its docstring.

The oracle never looks inside the plan's random draws. It takes the epoch's *row sequence* from
the simplest plan that exposes it (one shard, one row per window, so no window mixing), checks
that the sequence is what the mode promises (file order, whole blocks, a permutation), and then
checks every other plan of the same rows and seed against slices of that sequence: the shard's
part exactly as the docstring states it, windows of whole batches, segments, gathers, order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npstream import UsageError
from npstream._core.plan import EpochPlan

SEEDS = (0, 1, 12345, -1, 2**62 + 7)


# -- the oracle ----------------------------------------------------------------------------------
def row_sequence(rows: int, mode: str, block_rows: int, seed: int) -> np.ndarray:
    """The epoch's row sequence: one shard, batches and windows of one row (nothing mixed)."""
    plan = EpochPlan(rows=rows, batch_size=1, shuffle=mode, block_rows=block_rows, window_rows=1)
    return plan.epoch_order(seed)


def expected_part(rows: int, shards: int, index: int, batch: int, drop: bool) -> tuple[int, int]:
    """Positions of shard ``index`` in the row sequence, as the module docstring words it."""
    if not drop:
        return index * rows // shards, (index + 1) * rows // shards
    size = rows // shards
    start = index * size
    return start, start + size - size % batch


def expected_windows(start: int, stop: int, batch: int, window_rows: int) -> list[tuple[int, int]]:
    """Windows of ``window_rows`` positions over the whole batches, then the partial batch alone."""
    full_stop = start + (stop - start) // batch * batch
    bounds = [(a, min(a + window_rows, full_stop)) for a in range(start, full_stop, window_rows)]
    if full_stop < stop:
        bounds.append((full_stop, stop))
    return bounds


def check_sequence(sequence: np.ndarray, rows: int, mode: str, block_rows: int) -> None:
    """The row sequence visits every row once, in the way ``mode`` promises."""
    assert sequence.dtype.kind in "iu"
    np.testing.assert_array_equal(np.sort(sequence), np.arange(rows))
    if mode == "none":
        np.testing.assert_array_equal(sequence, np.arange(rows))
    elif mode == "block":
        # Whole blocks, each in file order, visited one after another.
        position = 0
        while position < rows:
            first = int(sequence[position])
            assert first % block_rows == 0, f"position {position} starts mid-block at row {first}"
            size = min(block_rows, rows - first)
            expected = np.arange(first, first + size)
            np.testing.assert_array_equal(sequence[position : position + size], expected)
            position += size


def check_plan(plan: EpochPlan, seed: int, sequence: np.ndarray) -> np.ndarray:
    """Every documented property of one shard's plan; returns its epoch order."""
    rows, batch, mode = plan.rows, plan.batch_size, plan.shuffle
    start, stop = expected_part(rows, plan.num_shards, plan.shard_index, batch, plan.drop_remainder)
    assert plan.part == (start, stop)
    assert plan.shard_rows == stop - start
    if plan.drop_remainder:
        assert plan.shard_rows == (rows // plan.num_shards) // batch * batch
    assert plan.num_batches == math.ceil((stop - start) / batch)

    bounds = expected_windows(start, stop, batch, plan.window_rows)
    assert plan.num_windows == len(bounds)
    pieces = []
    for w, (first, last) in enumerate(bounds):
        assert plan.window_bounds(w) == (first, last)
        size = last - first
        # Whole batches, except a final partial batch that is a window of its own.
        assert 0 < size <= plan.window_rows
        assert size % batch == 0 or (w == len(bounds) - 1 and size < batch)
        window = plan.window(seed, w)
        assert window.rows == size
        segments = np.asarray(window.segments)
        assert segments.dtype == np.int64 and segments.ndim == 2 and segments.shape[1] == 2
        assert (segments[:, 1] > segments[:, 0]).all(), segments
        assert (segments[:, 0] >= 0).all() and (segments[:, 1] <= rows).all()
        assert int((segments[:, 1] - segments[:, 0]).sum()) == size
        read = np.concatenate([np.arange(a, b) for a, b in segments])
        wanted = sequence[first:last]
        np.testing.assert_array_equal(np.sort(read), np.sort(wanted))
        if window.gather is None:
            order = read
        else:
            np.testing.assert_array_equal(np.sort(window.gather), np.arange(size))
            order = read[window.gather]
        np.testing.assert_array_equal(plan.window_row_indices(seed, w), order)

        if mode == "none":
            assert window.gather is None
            np.testing.assert_array_equal(segments, [[first, last]])
        elif mode == "block":
            # Contiguous ranges that never cross a block boundary.
            assert (segments[:, 0] // plan.block_rows == (segments[:, 1] - 1) // plan.block_rows).all()
            np.testing.assert_array_equal(np.sort(order), np.sort(wanted))
        else:
            # Sorted and merged: increasing, and adjacent rows always in one read.
            assert (segments[1:, 0] > segments[:-1, 1]).all(), segments
            np.testing.assert_array_equal(order, wanted)
        pieces.append(order)

    for bad in (-1, len(bounds)):
        with pytest.raises(UsageError):
            plan.window_bounds(bad)

    order = plan.epoch_order(seed)
    np.testing.assert_array_equal(order, np.concatenate(pieces) if pieces else np.empty(0, np.int64))
    np.testing.assert_array_equal(np.sort(order), np.sort(sequence[start:stop]))
    if mode == "none":
        np.testing.assert_array_equal(order, np.arange(start, stop))
    if mode == "global":
        np.testing.assert_array_equal(order, sequence[start:stop])
    return order


def check_all_shards(
    rows: int, batch: int, mode: str, block_rows: int, window_rows: int, shards: int, drop: bool, seed: int
) -> list[np.ndarray]:
    sequence = row_sequence(rows, mode, block_rows, seed)
    check_sequence(sequence, rows, mode, block_rows)
    plans = [
        EpochPlan(
            rows=rows,
            batch_size=batch,
            shuffle=mode,
            block_rows=block_rows,
            window_rows=window_rows,
            num_shards=shards,
            shard_index=index,
            drop_remainder=drop,
        )
        for index in range(shards)
    ]
    orders = [check_plan(plan, seed, sequence) for plan in plans]
    everything = np.concatenate(orders)
    assert len(np.unique(everything)) == len(everything), "shards overlap"
    if drop:
        assert len({plan.num_batches for plan in plans}) == 1
        assert all(len(order) == (rows // shards) // batch * batch for order in orders)
    else:
        np.testing.assert_array_equal(np.sort(everything), np.arange(rows))
    sizes = [plan.shard_rows for plan in plans]
    assert all(plan.full_batches_only == all(size % batch == 0 for size in sizes) for plan in plans)
    return orders


# -- exhaustive over small sizes -----------------------------------------------------------------
MODES = [("none", 1), ("global", 1), ("block", 1), ("block", 2), ("block", 3), ("block", 5)]


@pytest.mark.parametrize(("mode", "block_rows"), MODES)
def test_every_small_plan(mode: str, block_rows: int) -> None:
    for rows, batch, multiple, shards, drop in itertools.product(
        range(13), (1, 2, 3), (1, 2), (1, 2, 3), (False, True)
    ):
        seed = rows * 7919 + batch
        check_all_shards(rows, batch, mode, block_rows, batch * multiple, shards, drop, seed)


# -- hypothesis over larger sizes ----------------------------------------------------------------
@st.composite
def plans(draw: st.DrawFn) -> dict:
    batch = draw(st.integers(1, 64))
    return {
        "rows": draw(st.integers(0, 1000)),
        "batch": batch,
        "mode": draw(st.sampled_from(["none", "block", "global"])),
        "block_rows": draw(st.integers(1, 400)),
        "window_rows": batch * draw(st.integers(1, 8)),
        "shards": draw(st.integers(1, 6)),
        "drop": draw(st.booleans()),
        "seed": draw(st.integers(-(2**63), 2**63 - 1)),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.integers(-(2**63), 2**63 - 1))
def test_plans_hypothesis(args: dict, other_seed: int) -> None:
    orders = check_all_shards(**args)
    if args["mode"] == "none" or other_seed == args["seed"]:
        return
    for index, order in enumerate(orders):
        plan = EpochPlan(
            rows=args["rows"], batch_size=args["batch"], shuffle=args["mode"],
            block_rows=args["block_rows"], window_rows=args["window_rows"],
            num_shards=args["shards"], shard_index=index, drop_remainder=args["drop"],
        )  # fmt: skip
        # Same seed, a fresh plan: the same order.
        np.testing.assert_array_equal(dataclasses.replace(plan).epoch_order(args["seed"]), order)
        biggest = max((b - a for a, b in map(plan.window_bounds, range(plan.num_windows))), default=0)
        # A window of >= 12 rows is a seeded permutation of its rows in both shuffle modes:
        # two seeds give the same order with probability <= 1/12! (about 2e-9).
        if biggest >= 12:
            other = plan.epoch_order(other_seed)
            assert not np.array_equal(order, other), f"seeds {args['seed']} and {other_seed} agree"


# -- seeds and randomness ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["block", "global"])
def test_seeds_change_the_order(mode: str) -> None:
    kwargs = dict(rows=5000, batch_size=10, shuffle=mode, block_rows=50, window_rows=200)
    orders = [EpochPlan(**kwargs).epoch_order(seed) for seed in SEEDS]
    for a, b in itertools.combinations(orders, 2):
        assert not np.array_equal(a, b)
    for seed, order in zip(SEEDS, orders, strict=True):
        np.testing.assert_array_equal(EpochPlan(**kwargs).epoch_order(seed), order)
    # The seed reorders blocks too, not just rows inside windows: the first block visited varies.
    if mode == "block":
        firsts = {int(EpochPlan(**kwargs).window(seed, 0).segments[0, 0]) // 50 for seed in range(20)}
        assert len(firsts) > 5


def test_global_permutation_is_uniform() -> None:
    """Where each row lands over many seeds: a loose chi-square test on a 6 x 6 table."""
    rows, seeds = 6, 3000
    counts = np.zeros((rows, rows))
    for seed in range(seeds):
        order = EpochPlan(rows=rows, batch_size=2, shuffle="global", window_rows=2).epoch_order(seed)
        counts[order, np.arange(rows)] += 1
    expected = seeds / rows
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 25 degrees of freedom: mean 25, sd ~7; 80 is beyond p = 1e-7.
    assert chi2 < 80, counts
    # And the permutation is uniform over all 720, not just in its margins.
    perms: dict[tuple[int, ...], int] = {}
    for seed in range(seeds):
        order = EpochPlan(rows=4, batch_size=1, shuffle="global").epoch_order(seed)
        perms[tuple(order.tolist())] = perms.get(tuple(order.tolist()), 0) + 1
    assert len(perms) == 24
    freq = np.array(list(perms.values())) / (seeds / 24)
    assert freq.min() > 0.6 and freq.max() < 1.4, perms


def test_block_order_is_uniform() -> None:
    """The first block visited is uniform over the blocks (8 blocks, 2000 seeds)."""
    seeds, blocks = 2000, 8
    counts = np.zeros(blocks)
    for seed in range(seeds):
        plan = EpochPlan(rows=blocks * 4, batch_size=4, shuffle="block", block_rows=4, window_rows=4)
        counts[int(plan.window(seed, 0).segments[0, 0]) // 4] += 1
    expected = seeds / blocks
    assert ((counts - expected) ** 2 / expected).sum() < 40, counts  # 7 dof


def test_block_mode_mixes_blocks_within_a_window() -> None:
    """Rows of different blocks share batches: the window's rows are not left block by block."""
    plan = EpochPlan(rows=1000, batch_size=10, shuffle="block", block_rows=10, window_rows=100)
    order = plan.window_row_indices(3, 0)
    blocks_per_batch = [len(set((order[i : i + 10] // 10).tolist())) for i in range(0, 100, 10)]
    assert np.mean(blocks_per_batch) > 4, blocks_per_batch


def test_shards_agree_on_one_sequence() -> None:
    """Every shard of an epoch takes its part of the same global permutation."""
    rows, seed = 1003, 99
    sequence = row_sequence(rows, "global", 1, seed)
    for shards in (1, 2, 3, 7):
        got = np.concatenate(
            [
                EpochPlan(rows=rows, batch_size=4, shuffle="global", window_rows=8, num_shards=shards,
                          shard_index=i).epoch_order(seed)
                for i in range(shards)
            ]
        )  # fmt: skip
        np.testing.assert_array_equal(got, sequence)


def test_drop_remainder_drops_exactly_the_documented_positions() -> None:
    rows, shards, batch, seed = 103, 4, 5, 7
    sequence = row_sequence(rows, "global", 1, seed)
    kept = []
    for i in range(shards):
        plan = EpochPlan(rows=rows, batch_size=batch, shuffle="global", window_rows=10,
                         num_shards=shards, shard_index=i, drop_remainder=True)  # fmt: skip
        assert plan.num_batches == (rows // shards) // batch == 5
        assert plan.full_batches_only
        kept.append(plan.epoch_order(seed))
    # Each part is N//S = 25 positions, cut to 25 (a whole number of batches); the last
    # N mod S = 3 positions of the sequence go unread.
    np.testing.assert_array_equal(np.concatenate(kept), sequence[:100])


def test_empty_array() -> None:
    for mode in ("none", "block", "global"):
        plan = EpochPlan(rows=0, batch_size=3, shuffle=mode, window_rows=3)
        assert plan.num_batches == plan.num_windows == 0
        assert plan.epoch_order(1).size == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": -1},
        {"batch_size": True},
        {"batch_size": 2.0},
        {"window_rows": 3, "batch_size": 2},
        {"block_rows": 0},
        {"window_rows": 0},
        {"num_shards": 0},
        {"num_shards": 2, "shard_index": 2},
        {"num_shards": 2, "shard_index": -1},
        {"shuffle": "foo"},
        {"shuffle": True},
        {"rows": -1},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        EpochPlan(**{"rows": 10, "batch_size": 2, "window_rows": 4, **kwargs})
