"""``npstream.tf.dataset``: any source as a ``tf.data.Dataset`` of batches.

How it is built, and why:

* TensorFlow owns the position. The pipeline is an index dataset: a stream of epoch seeds drawn
  from ``seed`` alone (``_epoch_seeds``), each expanded into the window numbers of the epoch's
  :class:`~npstream._plan.EpochPlan`; the epoch ends after its ``num_batches`` batches. Python
  only performs stateless reads, ``tf.numpy_function(..., stateful=False)`` of
  ``(epoch_seed, window)``, so ``tf.train.Checkpoint(iterator=it)`` saves and restores the
  position exactly, epoch seeds included.
* One call reads a whole window (tens of MB: many batches) with several reads in flight
  (``_reader``), because each ``numpy_function`` call costs a few hundred microseconds; the
  window's batches are split off inside TensorFlow with ``from_tensor_slices``, which slices
  without copying. The window arrays are 64-byte aligned, so ``numpy_function`` hands them to
  TensorFlow without a copy either (``_pool``): the read is the only pass over the data.
* Memory: each window is about ``memory_budget / 10``, and about eight can be alive at once
  (being read, waiting in the parallel map's buffer and TensorFlow's autotuned buffers, being
  sliced); the global-shuffle permutation (4 bytes per row) must fit in a quarter of the budget.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._core.plan import EpochPlan
from ._core.window import WindowReader
from ._errors import UsageError
from ._formats.open import open as open_source
from ._formats.source import ArraySource
from ._units import format_bytes, parse_bytes

__all__ = ["dataset"]

BLOCK_BYTES = 1 << 20
"""Block shuffle reads blocks of at least this many bytes, so disks see large requests."""
FIRST_WINDOW_BYTES = 1 << 20
"""The first window of an epoch is about this big, so the first batch arrives quickly."""
MIN_BLOCKS = 1024
"""Files with fewer BLOCK_BYTES blocks than this get smaller blocks (see ``_plan_sizes``)."""
WINDOWS_ALIVE = 10
"""The memory budget is split into this many windows (see the module docstring)."""
PARALLEL_READS = 2
"""Windows read at once: one per core here; each read has its own I/O threads."""


class _InFlight:
    """Counts reads running inside TensorFlow, so interpreter exit can wait for them.

    At exit, Python stops every thread that tries to re-enter the interpreter, and TensorFlow's
    iterator destructor (run while modules are torn down) waits forever for a call stopped that
    way. So an exit hook turns new reads into immediate errors and waits for running ones.
    """

    def __init__(self) -> None:
        self.count = 0
        self.closing = False
        self.lock = threading.Condition()

    def __enter__(self) -> None:
        with self.lock:
            if self.closing:
                raise RuntimeError("npstream: the interpreter is exiting; no new reads start")
            self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        with self.lock:
            self.count -= 1
            self.lock.notify_all()

    def drain(self, timeout: float = 5.0) -> None:
        with self.lock:
            self.closing = True
            self.lock.wait_for(lambda: self.count == 0, timeout)


_in_flight = _InFlight()


def _reads_npstream(dataset: Any, depth: int = 0) -> bool:
    """Whether ``dataset`` is, or is derived from, a dataset this module built."""
    if dataset is None or depth > 100:
        return False
    if hasattr(dataset, "_npstream_reader"):
        return True
    try:
        inputs = dataset._inputs()
    except Exception:  # any dataset type we do not know how to walk
        return False
    return any(_reads_npstream(parent, depth + 1) for parent in inputs)


def _release_iterators() -> None:
    """Destroy live iterators over npstream datasets while the interpreter still runs threads.

    At exit, Python stops every thread that tries to re-enter the interpreter, and TensorFlow's
    iterator destructor, run later while modules are torn down, waits forever for a read that
    was stopped that way. Destroying such iterators first lets their reads finish normally.
    """
    if "tensorflow" not in sys.modules:
        return
    from tensorflow.python.data.ops.iterator_ops import OwnedIterator

    for obj in gc.get_objects():
        if isinstance(obj, OwnedIterator) and _reads_npstream(getattr(obj, "_dataset", None)):
            obj.__dict__.pop("_iterator_resource", None)


def _at_exit() -> None:
    _release_iterators()
    _in_flight.drain()


_exit_hook_registered = False


def _register_exit_hook() -> None:
    # Registered after TensorFlow is imported, so it runs before TensorFlow's own exit hooks.
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_at_exit)
        _exit_hook_registered = True


def _import_tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(
            "npstream.tf needs TensorFlow: pip install 'npstream[tf]' (or tensorflow / tensorflow-cpu)"
        ) from exc
    return tf


# -- dtypes: numpy -> TensorFlow ------------------------------------------------------------
_STRING_KINDS = "SU"


def _leaf_tf_dtype(tf: Any, dtype: np.dtype, name: str) -> Any:
    if dtype.kind in _STRING_KINDS:
        return tf.string
    if dtype.kind in "biufc":
        try:
            return tf.as_dtype(dtype)
        except TypeError:
            pass
    raise UsageError(
        f"{name}: dtype {dtype} has no TensorFlow equivalent; convert the data to a numeric, "
        "bool or string dtype first"
        + (" (datetime64/timedelta64: .view('i8'))" if dtype.kind in "Mm" else "")
    )


# -- arguments ---------------------------------------------------------------------------------
def _as_source(item: Any) -> ArraySource:
    if isinstance(item, ArraySource):
        return item
    if isinstance(item, (str, os.PathLike, list)):
        return open_source(item)
    raise UsageError(
        f"data must be a path, a list of paths, an npstream source, or a tuple/dict of them; "
        f"got {type(item).__name__}"
    )


def _shuffle_mode(shuffle: Any) -> str:
    modes = {False: "none", True: "block", "none": "none", "block": "block", "global": "global"}
    if isinstance(shuffle, (bool, str)) and shuffle in modes:
        return modes[shuffle]
    raise UsageError(f"shuffle must be False, True (block shuffle) or 'global', got {shuffle!r}")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _shards(num_shards: Any, shard_index: Any, input_context: Any) -> tuple[int, int]:
    if input_context is not None:
        if (num_shards, shard_index) != (1, 0):
            raise UsageError("give either input_context or num_shards/shard_index, not both")
        num_shards, shard_index = input_context.num_input_pipelines, input_context.input_pipeline_id
    num_shards = _positive_int(num_shards, "num_shards")
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)):
        raise UsageError(f"shard_index must be an integer, got {shard_index!r}")
    if not 0 <= shard_index < num_shards:
        raise UsageError(
            f"shard_index must be in [0, {num_shards}) for num_shards={num_shards}, got {shard_index}"
        )
    return num_shards, int(shard_index)


def _structure(data: Any) -> tuple[Any, list[ArraySource]]:
    """``data`` -> (structure with source numbers as leaves, sources)."""
    if isinstance(data, tuple):
        if not data:
            raise UsageError("data is an empty tuple; give at least one source")
        sources = [_as_source(item) for item in data]
        return tuple(range(len(sources))), sources
    if isinstance(data, Mapping):
        if not data:
            raise UsageError("data is an empty dict; give at least one source")
        sources = [_as_source(item) for item in data.values()]
        return dict(zip(data.keys(), range(len(sources)), strict=True)), sources
    return 0, [_as_source(data)]


def _plan_sizes(
    sources: list[ArraySource], batch_size: int, budget: int, mode: str
) -> tuple[int, int]:
    """``(block_rows, window_rows)`` for the sources under ``budget`` bytes."""
    row_bytes = [max(math.prod(s.shape[1:]) * s.dtype.itemsize, 1) for s in sources]
    chunk = max(int(getattr(s, "chunk_rows", 1) or 1) for s in sources)
    rows = len(sources[0])
    # Blocks of BLOCK_BYTES in the source with the narrowest rows, so disks see large reads; but
    # at least MIN_BLOCKS blocks, or the order of a few blocks would show in the output order
    # (a file under ~1 GB then gets smaller blocks, and sits in the page cache anyway). Whole
    # HDF5 chunks either way.
    block_rows = max(1, min(math.ceil(BLOCK_BYTES / min(row_bytes)), rows // MIN_BLOCKS))
    block_rows = math.ceil(block_rows / chunk) * chunk
    total_row = sum(row_bytes)
    batch_bytes = batch_size * total_row
    permutation = 0
    if mode == "global":
        permutation = rows * (4 if rows <= np.iinfo(np.uint32).max else 8)
        if permutation > budget // 4:
            needed = max(4 * permutation, permutation + WINDOWS_ALIVE * batch_bytes)
            raise UsageError(
                f"shuffle='global' over {rows} rows keeps a {format_bytes(permutation)} permutation, "
                f"over a quarter of memory_budget={format_bytes(budget)}; raise memory_budget to at "
                f"least {format_bytes(needed, round_up=True)} "
                "or use shuffle=True (block shuffle)"
            )
    window_rows = ((budget - permutation) // WINDOWS_ALIVE // total_row) // batch_size * batch_size
    if window_rows == 0:
        needed = permutation + WINDOWS_ALIVE * batch_bytes
        raise UsageError(
            f"one batch of {batch_size} rows is {format_bytes(batch_bytes)}; npstream keeps up to "
            f"{WINDOWS_ALIVE} batches' worth alive"
            + (f" besides a {format_bytes(permutation)} permutation" if permutation else "")
            + f", which exceeds memory_budget={format_bytes(budget)}: raise memory_budget to at "
            f"least {format_bytes(needed, round_up=True)} or lower batch_size"
        )
    return block_rows, window_rows


def make_plan(
    sources: list[ArraySource],
    *,
    batch_size: int,
    mode: str,
    budget: int,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
) -> EpochPlan:
    """The :class:`EpochPlan` ``dataset`` follows for these sources and arguments."""
    block_rows, window_rows = _plan_sizes(sources, batch_size, budget, mode)
    # About 1 MB windows first: the first batch of an epoch waits only for such a read.
    row_bytes = sum(max(math.prod(s.shape[1:]) * s.dtype.itemsize, 1) for s in sources)
    first_rows = max(1, FIRST_WINDOW_BYTES // row_bytes // batch_size) * batch_size
    return EpochPlan(
        rows=len(sources[0]),
        batch_size=batch_size,
        shuffle=mode,
        block_rows=block_rows,
        window_rows=window_rows,
        num_shards=num_shards,
        shard_index=shard_index,
        drop_remainder=drop_remainder,
        first_window_rows=min(window_rows, first_rows),
        lead_windows=PARALLEL_READS,  # the windows read at once when an epoch starts
    )


# -- the dataset -------------------------------------------------------------------------------
def dataset(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool | str = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    input_context: Any = None,
    memory_budget: int | str = "256MB",
) -> Any:
    """Stream ``data`` as a ``tf.data.Dataset`` of batches of ``batch_size`` rows.

    ``data`` is a path (or list/glob of shards, or an npstream source); a tuple of them gives
    tuple elements and a dict gives dict elements, aligned row by row. Structured dtypes become
    dicts of their fields. ``shuffle=True`` visits ~1 MB blocks in a seeded random order and
    mixes rows across a window of blocks; ``shuffle="global"`` is a uniform permutation of all
    rows. A new order is drawn for every iteration (epoch); the same ``seed`` gives the same
    sequence of orders. ``num_shards``/``shard_index`` (or ``input_context``) pick a disjoint part
    of every epoch; see the README for exactly which rows ``drop_remainder`` drops.
    """
    tf = _import_tf()
    _register_exit_hook()
    batch_size = _positive_int(batch_size, "batch_size")
    mode = _shuffle_mode(shuffle)
    num_shards, shard_index = _shards(num_shards, shard_index, input_context)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UsageError(f"seed must be an integer or None, got {seed!r}")
    if mode != "none" and num_shards > 1 and seed is None:
        raise UsageError(
            "shuffling with num_shards > 1 needs an explicit seed, so that every worker draws the "
            "same order and the shards stay disjoint; pass seed=<int>"
        )
    budget = parse_bytes(memory_budget, "memory_budget")
    structure, sources = _structure(data)
    if len({len(s) for s in sources}) > 1:
        lengths = ", ".join(f"{getattr(s, 'name', repr(s))}: {len(s)}" for s in sources)
        raise UsageError(
            f"the sources have different numbers of rows ({lengths}); tuple and dict elements "
            "are aligned row by row, so every source needs the same length"
        )
    plan = make_plan(
        sources,
        batch_size=batch_size,
        mode=mode,
        budget=budget,
        num_shards=num_shards,
        shard_index=shard_index,
        drop_remainder=bool(drop_remainder),
    )
    reader = WindowReader(sources, plan, keep_buffers=WINDOWS_ALIVE)
    names = [getattr(s, "name", repr(s)) for s in sources]
    tf_dtypes = [_leaf_tf_dtype(tf, leaf.dtype, names[leaf.source]) for leaf in reader.leaves]
    batch_dim = batch_size if plan.full_batches_only else None

    # TensorFlow keeps every numpy_function's callable for the life of the process (eager mode
    # registers it with the global graph), so the callable holds the reader weakly: the reader,
    # its open files and its buffers live as long as the returned dataset object, which every
    # derived dataset, iterator and Keras fit keeps alive while they run.
    reader_ref = weakref.ref(reader)

    def read_window(epoch_seed: np.int64, window: np.int64) -> list[np.ndarray]:
        live_reader = reader_ref()
        if live_reader is None:
            raise RuntimeError(
                "npstream: this dataset's Python object was garbage collected while TensorFlow "
                "still runs it; keep a reference to the dataset while iterating"
            )
        with _in_flight:
            return live_reader.read(int(epoch_seed), int(window))

    @tf.autograph.experimental.do_not_convert
    def read_op(epoch_seed: Any, window: Any) -> Any:
        tensors = tf.numpy_function(read_window, [epoch_seed, window], tf_dtypes, stateful=False)
        for tensor, leaf in zip(tensors, reader.leaves, strict=True):
            tensor.set_shape((None, batch_dim, *leaf.row_shape))
        return tuple(tensors)

    @tf.autograph.experimental.do_not_convert
    def split(*tensors: Any) -> Any:
        # One element per batch: slices of the window's first axis, in the element structure.
        it = iter(tensors)
        per_source = [_fill(tree, it) for tree in reader.trees]
        if isinstance(structure, tuple):
            element: Any = tuple(per_source)
        elif isinstance(structure, dict):
            element = {key: per_source[i] for key, i in structure.items()}
        else:
            element = per_source[0]
        return tf.data.Dataset.from_tensor_slices(element)

    num_windows = plan.num_windows

    @tf.autograph.experimental.do_not_convert
    def epoch_windows(epoch_seed: Any) -> Any:
        return tf.data.Dataset.range(num_windows).map(lambda w: (epoch_seed, w))

    if num_windows == 0:  # nothing to read: the endless seed stream would spin on empty epochs
        windows = tf.data.Dataset.range(0).map(lambda w: (w, w))
    else:
        windows = _epoch_seeds(tf, mode, seed).flat_map(epoch_windows)

    batches = (
        windows.map(read_op, num_parallel_calls=PARALLEL_READS, deterministic=True)
        .flat_map(split)
        # The seed stream is endless and the epoch ends here, by count: the iterator that draws
        # epoch seeds then stays alive (and in checkpoints) until the epoch's last batch, however
        # far the reads have run ahead. Ending the seed stream after one seed instead loses its
        # state once read-ahead reaches the epoch's end, and a checkpoint saved then restores
        # the next epoch with a different order. The cost: up to two windows are read past the
        # end of every epoch and discarded.
        .take(plan.num_batches)
        .apply(tf.data.experimental.assert_cardinality(plan.num_batches))
    )
    batches._npstream_reader = reader  # see reader_ref above
    return batches


def _epoch_seeds(tf: Any, mode: str, seed: int | None) -> Any:
    """An endless dataset of epoch seeds; each iteration of the dataset starts a new sequence.

    ``Dataset.random(seed)`` would mix in TensorFlow's global seed (``tf.random.set_seed``), so
    workers seeding TensorFlow differently would draw different orders and overlapping shards.
    The op underneath takes both seeds explicitly; with a seed generator and
    ``rerandomize_each_iteration`` it draws new values each iteration, as ``Dataset.random`` does,
    and its state is saved by iterator checkpoints.
    """
    if mode == "none":
        return tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    if seed is None:
        seed = secrets.randbits(63)
    seed = int(seed) & 0x7FFFFFFFFFFFFFFF
    variant = tf.raw_ops.RandomDatasetV2(
        seed=seed,
        seed2=seed ^ 0x2545F4914F6CDD1D,
        seed_generator=tf.raw_ops.DummySeedGenerator(),
        output_types=[tf.int64],
        output_shapes=[[]],
        rerandomize_each_iteration=True,
    )
    return tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.int64))


def _fill(tree: Any, tensors: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _fill(sub, tensors) for key, sub in tree.items()}
    return next(tensors)
