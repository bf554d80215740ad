"""Side by side: npstream's adapters against each framework's best common recipe, same file.

For one file (default 4 GB: 4,000,000 x 256 float32), batch 256 (256 KiB batches), each approach
runs in its own process, approaches alternate within each run, and figures are medians over
``--runs`` runs of ratios paired within a run:

* limits: ``os.preadv`` from 2 threads in 256 KiB pieces (warm), 8 threads in 8 MiB pieces after
  ``POSIX_FADV_DONTNEED`` (cold) - as in ``bench_pipeline.py``;
* npstream: ``npstream.batches`` and ``ntf.dataset`` (consumed inside TensorFlow, ``ds.reduce``)
  in every shuffle mode; ``npstream.torch`` (0 and 2 workers), ``npstream.grain``,
  ``npstream.jax`` with ``shuffle=True`` (block shuffle);
* recipes over ``np.load(path, mmap_mode="r")``: PyTorch per-row map-style ``Dataset`` +
  ``DataLoader(batch_size=256, shuffle=True)`` with 0 and 2 workers; one slice per batch
  (``batch_size=None``, batch order shuffled, rows never leave their batch); a
  ``BatchSampler(RandomSampler)`` handing ``__getitem__`` a whole batch of random indices (one
  fancy-index gather per batch); Grain ``MapDataset.source(memmap).shuffle().batch()``; a JAX
  loop that gathers each batch of a per-epoch permutation and builds a global array with
  ``jax.make_array_from_process_local_data``.

Speed counts rows from the first batch to the end of the epoch or ``--seconds``, whichever comes
first (start-up, including worker processes, shows as "first batch"). Peak memory is the peak
proportional set size (PSS) of the process and all its children (DataLoader and Grain workers),
sampled every 0.1 s, above the value after the framework was imported and ran once; PSS counts a
page shared by k processes 1/k in each, and counts a memory map's page-cache pages.

    python benchmarks/bench_adapters.py [--rows 4000000] [--runs 3] [--only torch] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import GIB, evict, machine, make_npy, median, run_child, table, warm
from bench_pipeline import _preadv_run

MIB = 1 << 20
SEED = 1

# name: (cold?, kind)
APPROACHES = {
    "raw limit (2 thr x 256 KB)": (False, "raw"),
    "ntf.dataset none": (False, "tf-none"),
    "ntf.dataset block": (False, "tf-block"),
    "ntf.dataset global": (False, "tf-global"),
    "npstream.batches none": (False, "batches-none"),
    "npstream.batches block": (False, "batches-block"),
    "npstream.batches global": (False, "batches-global"),
    "npstream.torch shuffle=True, 0 workers": (False, "torch-adapter-0"),
    "npstream.torch shuffle=True, 2 workers": (False, "torch-adapter-2"),
    "torch per-row, 0 workers": (False, "torch-row-0"),
    "torch per-row, 2 workers": (False, "torch-row-2"),
    "torch one slice per batch, 0 workers": (False, "torch-slice-0"),
    "torch BatchSampler gather, 0 workers": (False, "torch-gather-0"),
    "npstream.grain shuffle=True": (False, "grain-adapter"),
    "grain source(memmap).shuffle().batch()": (False, "grain-memmap"),
    "npstream.jax shuffle=True": (False, "jax-adapter"),
    "JAX numpy loop over memmap": (False, "jax-memmap"),
    "raw cold limit (8 thr x 8 MB)": (True, "raw"),
    "npstream.batches block, cold": (True, "batches-block"),
    "npstream.torch shuffle=True, 0 workers, cold": (True, "torch-adapter-0"),
    "npstream.grain shuffle=True, cold": (True, "grain-adapter"),
    "npstream.jax shuffle=True, cold": (True, "jax-adapter"),
}


# -- memory of the process tree ------------------------------------------------------------------
def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fp:
            for line in fp:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fp:
                    todo += [int(p) for p in fp.read().split()]
        except OSError:
            continue
    return pids


class TreeMemory:
    """Peak PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.base = _pss(os.getpid())
        self.peak = self.base
        self.processes = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def reset(self) -> None:
        self.peak = self.base

    def sample(self) -> None:
        pids = _tree(os.getpid())
        self.processes = max(self.processes, len(pids))
        self.peak = max(self.peak, sum(_pss(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the approaches ------------------------------------------------------------------------------
def _rows_of(batch: object) -> int:
    while isinstance(batch, (tuple, list)):
        batch = batch[0]
    return int(batch.shape[0])  # type: ignore[attr-defined]


def _framework_warm_up(kind: str) -> None:
    """Import the framework and run it once, so the baseline includes its own memory."""
    if kind.startswith("tf"):
        import tensorflow as tf

        tf.data.Dataset.range(3).map(lambda x: x + 1).reduce(np.int64(0), lambda a, x: a + x)
    elif kind.startswith("torch"):
        import torch

        torch.ones(3).sum()
    elif kind.startswith("grain"):
        import grain

        list(grain.MapDataset.range(3).map(lambda x: x + 1))
    elif kind.startswith("jax"):
        import jax

        jax.numpy.ones(3).sum().block_until_ready()


def _epoch(kind: str, path: str, batch: int, budget: str) -> Iterable[object]:
    """One epoch of ``kind`` as an iterable of owned, materialised batches."""
    mode = {"none": False, "block": True, "global": "global"}
    if kind.startswith("batches-"):
        import npstream

        return npstream.batches(
            path, batch_size=batch, shuffle=mode[kind[8:]], seed=SEED, memory_budget=budget
        )
    if kind.startswith("torch"):
        return _torch_epoch(kind, path, batch, budget)
    if kind.startswith("grain"):
        return _grain_epoch(kind, path, batch, budget)
    if kind.startswith("jax"):
        return _jax_epoch(kind, path, batch, budget)
    raise ValueError(kind)


def _torch_epoch(kind: str, path: str, batch: int, budget: str) -> Iterable[object]:
    import torch
    from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

    workers = int(kind[-1])
    extra = dict(num_workers=workers, persistent_workers=workers > 0)
    generator = torch.Generator().manual_seed(SEED)
    if kind.startswith("torch-adapter"):
        import npstream.torch as nt

        ds = nt.dataset(path, batch_size=batch, shuffle=True, seed=SEED, memory_budget=budget)
        return DataLoader(ds, batch_size=None, **extra)
    memmap = np.load(path, mmap_mode="r")

    class Rows(Dataset):
        def __len__(self) -> int:
            return len(memmap)

        def __getitem__(self, i: int) -> np.ndarray:
            return memmap[i]

    class Slices(Dataset):
        def __len__(self) -> int:
            return -(-len(memmap) // batch)

        def __getitem__(self, b: int) -> torch.Tensor:
            return torch.from_numpy(np.array(memmap[b * batch : (b + 1) * batch]))

    class Gathers(Dataset):
        def __len__(self) -> int:
            return len(memmap)

        def __getitem__(self, indices: list[int]) -> torch.Tensor:
            return torch.from_numpy(memmap[np.sort(np.asarray(indices))])

    # default_collate's warning about read-only memmap rows is part of the recipe as users run
    # it, but not of its speed.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if kind.startswith("torch-row"):
        return DataLoader(Rows(), batch_size=batch, shuffle=True, generator=generator, **extra)
    if kind.startswith("torch-slice"):
        return DataLoader(Slices(), batch_size=None, shuffle=True, generator=generator, **extra)
    sampler = BatchSampler(RandomSampler(Gathers(), generator=generator), batch, drop_last=False)
    return DataLoader(Gathers(), sampler=sampler, batch_size=None, **extra)


def _grain_epoch(kind: str, path: str, batch: int, budget: str) -> Iterable[object]:
    import grain

    if kind == "grain-adapter":
        import npstream.grain as ng

        ds = ng.dataset(path, batch_size=batch, shuffle=True, seed=SEED, memory_budget=budget)
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
    return grain.MapDataset.source(np.load(path, mmap_mode="r")).shuffle(seed=SEED).batch(batch)


def _jax_epoch(kind: str, path: str, batch: int, budget: str) -> Iterable[object]:
    import jax
    from jax.sharding import SingleDeviceSharding

    sharding = SingleDeviceSharding(jax.devices()[0])
    if kind == "jax-adapter":
        import npstream.jax as nj

        stream = nj.batches(
            path, sharding=sharding, batch_size=batch, shuffle=True, seed=SEED, memory_budget=budget
        )
        return (x.block_until_ready() for x in stream)
    memmap = np.load(path, mmap_mode="r")

    def loop() -> Iterable[object]:
        order = np.random.default_rng(SEED).permutation(len(memmap))
        for start in range(0, len(order) - batch + 1, batch):
            local = memmap[np.sort(order[start : start + batch])]
            array = jax.make_array_from_process_local_data(sharding, local, local.shape)
            yield array.block_until_ready()

    return loop()


def _consume(epoch: Iterable[object], seconds: float, started: float) -> dict:
    first = None
    rows = 0
    deadline = None
    for batch in epoch:
        now = time.perf_counter()
        if first is None:
            first, deadline = now, now + seconds
            continue
        rows += _rows_of(batch)
        if deadline is not None and now >= deadline:
            break
    end = time.perf_counter()
    assert first is not None, "no batch"
    return {"rows": rows, "seconds": end - first, "first": first - started}


def _tf_reduce(kind: str, path: str, batch: int, budget: str, memory: TreeMemory) -> dict:
    """``ntf.dataset`` consumed inside TensorFlow (its fastest use, as in ``bench_pipeline.py``).

    The first batch is timed on a dataset of its own, released before the measured epoch (whose
    memory is measured alone); the epoch itself runs to its end inside ``ds.reduce``.
    """
    import gc

    import tensorflow as tf

    import npstream.tf as ntf

    mode = {"none": False, "block": True, "global": "global"}[kind[3:]]
    started = time.perf_counter()
    ds = ntf.dataset(path, batch_size=batch, shuffle=mode, seed=SEED, memory_budget=budget)
    it = iter(ds)
    next(it)
    first = time.perf_counter() - started
    del it, ds
    gc.collect()
    memory.reset()
    ds = ntf.dataset(path, batch_size=batch, shuffle=mode, seed=SEED, memory_budget=budget)
    start = time.perf_counter()
    rows = int(ds.reduce(tf.constant(0, tf.int64), lambda acc, x: acc + tf.cast(tf.shape(x)[0], tf.int64)))
    return {"rows": rows, "seconds": time.perf_counter() - start, "first": first}


def _raw(path: str, cold: bool) -> tuple[int, float]:
    """The limit: the data's bytes read with ``preadv`` by 8 threads x 8 MB (cold), 2 x 256 KB (warm)."""
    import npstream

    layout = npstream.open(path).layout
    threads, piece = (8, 8 << 20) if cold else (2, 256 << 10)
    start, end = layout.offset, layout.offset + layout.data_bytes
    return end - start, _preadv_run(path, start, end, threads, piece)


def child(name: str, path: str, batch: int, budget: str, seconds: float) -> dict:
    cold, kind = APPROACHES[name]
    row_bytes = int(np.prod(np.load(path, mmap_mode="r").shape[1:])) * 4
    if kind == "raw":
        if cold:
            evict(path)
        nbytes, elapsed = _raw(path, cold)
        return {"bytes": nbytes, "seconds": elapsed, "pss": 0, "processes": 1, "first": None}
    _framework_warm_up(kind)
    with TreeMemory() as memory:
        if cold:
            evict(path)
        started = time.perf_counter()
        if kind.startswith("tf-"):
            result = _tf_reduce(kind, path, batch, budget, memory)
        else:
            result = _consume(_epoch(kind, path, batch, budget), seconds, started)
        memory.sample()
    return {
        "bytes": result["rows"] * row_bytes,
        "seconds": result["seconds"],
        "first": result["first"],
        "pss": memory.peak - memory.base,
        "processes": memory.processes,
    }


# -- the table ------------------------------------------------------------------------------------
TARGETS: dict[str, tuple[str, float]] = {
    # approach: (reference approach, minimum ratio)
    "npstream.batches none": ("ntf.dataset none", 0.9),
    "npstream.batches block": ("ntf.dataset block", 0.9),
    "npstream.batches global": ("ntf.dataset global", 0.9),
    "npstream.torch shuffle=True, 0 workers": ("torch per-row, 0 workers", 5.0),
    "npstream.grain shuffle=True": ("grain source(memmap).shuffle().batch()", 10.0),
    "npstream.jax shuffle=True": ("JAX numpy loop over memmap", 1.0),
    "npstream.batches block, cold": ("raw cold limit (8 thr x 8 MB)", 0.85),
    "npstream.torch shuffle=True, 0 workers, cold": ("raw cold limit (8 thr x 8 MB)", 0.85),
    "npstream.grain shuffle=True, cold": ("raw cold limit (8 thr x 8 MB)", 0.85),
    "npstream.jax shuffle=True, cold": ("raw cold limit (8 thr x 8 MB)", 0.85),
}
EXTRA_TARGETS = [
    ("npstream.torch shuffle=True, 0 workers", "torch per-row, 2 workers", 5.0),
    ("npstream.torch shuffle=True, 0 workers", "torch one slice per batch, 0 workers", 1.0),
]


def report(results: dict[str, list[dict]], args: argparse.Namespace, path: str) -> str:
    def speeds(name: str) -> list[float]:
        return [r["bytes"] / r["seconds"] for r in results[name]]

    def paired(name: str, reference: str) -> float | None:
        if name not in results or reference not in results:
            return None
        return median([a / b for a, b in zip(speeds(name), speeds(reference), strict=True)])

    budget_mib = _budget_bytes(args.budget) / MIB
    rows = []
    for name in results:
        cold = APPROACHES[name][0]
        limit = "raw cold limit (8 thr x 8 MB)" if cold else "raw limit (2 thr x 256 KB)"
        vs_limit = paired(name, limit)
        checks = []
        targets = [(TARGETS[name][0], TARGETS[name][1])] if name in TARGETS else []
        targets += [(ref, minimum) for n, ref, minimum in EXTRA_TARGETS if n == name]
        for reference, minimum in targets:
            ratio = paired(name, reference)
            if ratio is not None:
                short = reference.replace("raw cold limit (8 thr x 8 MB)", "cold limit")
                checks.append(f"{ratio:.2f}x {short} (>= {minimum:g}: {'yes' if ratio >= minimum else 'NO'})")
        pss = [r["pss"] / MIB for r in results[name]]
        processes = max(r["processes"] for r in results[name])
        firsts = [r["first"] for r in results[name] if r["first"] is not None]
        memory = ""
        if APPROACHES[name][1] != "raw":
            memory = f"{median(pss):.0f}"
            if name.startswith("npstream"):
                per_process = median(pss) / processes
                memory += f" ({'ok' if per_process <= budget_mib + 64 else 'OVER'})"
        rows.append(
            [
                name,
                f"{median(speeds(name)) / GIB:.2f}",
                f"{vs_limit:.2f}" if vs_limit is not None else "",
                "; ".join(checks),
                memory,
                str(processes),
                f"{median(firsts) * 1000:.0f} ms" if firsts else "",
            ]
        )
    size = os.path.getsize(path) / GIB
    head = (
        f"# {size:.2f} GiB float32 .npy ({args.rows} x {args.cols}), batch {args.batch} "
        f"({args.batch * args.cols * 4 // 1024} KiB), memory_budget {args.budget}, runs stop after "
        f"{args.seconds:g} s or one epoch; {machine()}\n"
        f"# {time.strftime('%Y-%m-%d')}; medians of {args.runs} runs; ratios paired within each run; "
        f"memory: peak PSS of the process tree above its start, MiB (ok: <= memory_budget + 64 MiB "
        "per process)\n"
    )
    headers = ["approach", "GiB/s", "x limit", "target", "peak PSS MiB", "processes", "first batch"]
    return head + table(headers, rows)


def _budget_bytes(budget: str) -> int:
    from npstream._units import parse_bytes

    return parse_bytes(budget, "memory_budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget", default="256MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="stop a run after this long")
    parser.add_argument("--dir", default="/tmp/npstream-bench-adapters")
    parser.add_argument(
        "--only",
        help="comma-separated substrings: run only approaches containing one "
        "(limits and the references of their targets are added)",
    )
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "PATH"))
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], args.child[1], args.batch, args.budget, args.seconds)
        print(json.dumps(result))
        return
    os.makedirs(args.dir, exist_ok=True)
    path = make_npy(os.path.join(args.dir, f"adapters_{args.rows}x{args.cols}.npy"), args.rows, args.cols)
    names = list(APPROACHES)
    if args.only:
        wanted = [n for n in names if any(part in n for part in args.only.split(","))]
        references = {TARGETS[n][0] for n in wanted if n in TARGETS}
        references |= {ref for n, ref, _ in EXTRA_TARGETS if n in wanted}
        names = [n for n in names if n in wanted or n in references or "limit" in n]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:
            if not APPROACHES[name][0]:
                warm(path)
            child_args = [
                "--child",
                name,
                path,
                "--batch",
                str(args.batch),
                "--budget",
                args.budget,
                "--seconds",
                str(args.seconds),
            ]
            results[name].append(run_child(__file__, child_args))
            r = results[name][-1]
            print(
                f"run {run + 1}: {name}: {r['bytes'] / r['seconds'] / GIB:.2f} GiB/s, "
                f"pss {r['pss'] / MIB:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    text = report(results, args, path)
    print(text)
    if args.out:
        with open(args.out, "w") as fp:
            fp.write(text + "\n")


if __name__ == "__main__":
    main()
