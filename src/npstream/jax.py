"""``npstream.jax.batches``: global ``jax.Array`` batches, each process reading only its part.

JAX has no loader: training loops iterate numpy batches and build global arrays. On several
hosts each process must load exactly the rows its devices hold, with the same number of steps
everywhere (a host with one step more waits forever in its collective), and wrong rows on a
device still run without an error. So the part a process reads is derived from the sharding:

* ``batch_size`` is the global batch ``B``. The sharding says which rows of a global batch this
  process's devices hold: ``[a, a + L)``. The process reads shard ``a // L`` of ``B // L`` of
  every epoch with ``drop_remainder=True`` (:func:`npstream.batches` with ``batch_size=L``), so
  all processes take the same number of full steps. With the batch axis split evenly over ``P``
  processes (``NamedSharding(mesh, P("data"))``), process ``i`` reads exactly
  ``npstream.batches(..., batch_size=B // P, num_shards=P, shard_index=i, drop_remainder=True)``;
  processes whose devices hold the same rows (replicas) read the same shard.
* Each local batch becomes a global array with ``jax.make_array_from_process_local_data``.
* One iteration is one epoch; the epoch's order depends on ``(seed, epoch)`` alone, as in every
  npstream adapter. ``state()`` is the same dict on every process (it names the position, not
  the shard), so any one process's copy, saved with the model's checkpoint, restores all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._core.batches import Batches, map_arrays
from ._core.stream import flatten_leaves, leaf_tree, make_stream, positive_int, structure
from ._errors import UsageError

try:
    import jax
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("npstream.jax needs JAX: pip install 'npstream[jax]' (or jax)") from exc

__all__ = ["batches"]

_JAX_KINDS = "biufc"


def _process_rows(sharding: Any, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows ``[a, b)`` of a global batch that this process's devices hold under ``sharding``."""
    try:
        indices = sharding.addressable_devices_indices_map(global_shape)
    except Exception as exc:
        raise UsageError(
            f"sharding {sharding} does not fit a global batch of shape {global_shape}: {exc}"
        ) from exc
    rows = sorted(
        {
            index[0].indices(global_shape[0])[:2] if index else (0, global_shape[0])
            for index in indices.values()
        }
    )
    start, stop = rows[0][0], rows[0][1]
    for a, b in rows[1:]:
        if a > stop:
            raise UsageError(
                f"sharding {sharding}: this process's devices hold rows {rows} of each global batch, "
                "which are not one contiguous range; npstream.jax needs each process to hold one range "
                "(a mesh whose batch axis lists each process's devices together)"
            )
        stop = max(stop, b)
    return start, stop


class JaxBatches:
    """Global ``jax.Array`` batches, one epoch per iteration; built by :func:`batches`."""

    def __init__(self, local: Batches, sharding: Any, global_batch: int) -> None:
        self.local = local
        """This process's :class:`npstream.Batches` (its part of every global batch)."""
        self.sharding = sharding
        self.global_batch = global_batch

    def __len__(self) -> int:
        """Steps per epoch (the same on every process)."""
        return len(self.local)

    @property
    def memory_budget(self) -> int:
        return self.local.memory_budget

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` yields."""
        return self.local.epoch

    def set_epoch(self, epoch: int) -> None:
        self.local.set_epoch(epoch)

    def _global(self, local: Any) -> Any:
        shape = (self.global_batch, *local.shape[1:])
        return jax.make_array_from_process_local_data(self.sharding, local, shape)

    def __iter__(self) -> Iterator[Any]:
        for element in self.local:
            yield map_arrays(self._global, element)

    def state(self) -> dict[str, Any]:
        """The position, as a JSON-able dict that is the same on every process."""
        state = self.local.state()
        state["dataset"].pop("shard_index")
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (from any process of the same job) was taken."""
        if isinstance(state, dict) and isinstance(state.get("dataset"), dict):
            shard = self.local.spec.plan.shard_index
            state = {**state, "dataset": {**state["dataset"], "shard_index": shard}}
        self.local.restore(state)

    def __repr__(self) -> str:
        plan = self.local.spec.plan
        return (
            f"npstream.jax.batches({len(self)} steps of {self.global_batch} rows per epoch, "
            f"{plan.batch_size} from this process, shard {plan.shard_index} of {plan.num_shards}, "
            f"shuffle={plan.shuffle!r})"
        )


def batches(
    data: Any,
    *,
    sharding: Any,
    batch_size: int,
    shuffle: bool | str = False,
    seed: int | None = None,
    memory_budget: int | str = "auto",
) -> JaxBatches:
    """Stream ``data`` as global ``jax.Array`` batches of ``batch_size`` rows laid out by ``sharding``.

    ``data``, ``shuffle``, ``seed`` and ``memory_budget`` are those of :func:`npstream.batches`
    (tuple/dict data gives tuples/dicts of arrays, each with this sharding); the part of each
    batch this process reads follows from ``sharding`` (module docstring). Several processes
    need the same explicit ``seed`` when shuffling.
    """
    batch_size = positive_int(batch_size, "batch_size")
    shape, sources = structure(data)  # opened once: the stream below reuses them
    leaves = [
        leaf
        for i, s in enumerate(sources)
        for leaf in flatten_leaves(leaf_tree(i, s.dtype, tuple(s.shape[1:])))
    ]
    ranges = {_process_rows(sharding, (batch_size, *leaf.row_shape)) for leaf in leaves}
    if len(ranges) != 1:
        raise UsageError(
            f"sharding {sharding} puts different rows on this process for different arrays: {ranges}"
        )
    ((start, stop),) = ranges
    rows = stop - start
    if batch_size % rows or start % rows:
        raise UsageError(
            f"sharding {sharding}: this process holds rows [{start}, {stop}) of each global batch of "
            f"{batch_size}; npstream.jax needs equal parts, so batch_size must be a multiple of {rows}"
        )
    for leaf in leaves:
        if leaf.dtype.kind not in _JAX_KINDS:
            name = getattr(sources[leaf.source], "name", "data")
            raise UsageError(
                f"{name}: dtype {leaf.dtype} has no JAX equivalent; convert it to a numeric or bool dtype"
            )
    opened: Any = sources[0]
    if isinstance(shape, tuple):
        opened = tuple(sources)
    elif isinstance(shape, dict):
        opened = {key: sources[i] for key, i in shape.items()}
    local = Batches(
        make_stream(
            opened,
            batch_size=rows,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=True,
            num_shards=batch_size // rows,
            shard_index=start // rows,
            memory_budget=memory_budget,
        )
    )
    return JaxBatches(local, sharding, batch_size)
