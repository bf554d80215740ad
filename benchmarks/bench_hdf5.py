"""HDF5 against the same data as ``.npy``: h5py's own reads, npstream's reads, ``tf.data``.

One array, 1,000,000 x 256 float32 (1 GB) holding small integers (0-255, so gzip level 1
compresses it about 2.3x), stored three ways: ``.npy``, an HDF5 contiguous dataset, and an HDF5
dataset chunked by 1024 rows with gzip level 1. For each:

* h5py ``read_direct`` of 4096-row blocks into one reused buffer (single-threaded: h5py holds
  one lock for every call, so this is what any number of threads gets through h5py);
* npstream ``src.read`` of 64 MiB blocks into one reused buffer (one thread: the calling one);
* ``ntf.dataset`` file order, ``shuffle=True`` and ``shuffle="global"`` (batch 256, default
  budget), consumed inside TensorFlow with ``ds.reduce``;
* for the chunked file, ``src.read_rows`` of global-shuffle windows: a permutation of all rows,
  cut into windows of 25,600 rows (about ``memory_budget / 10``), each window's rows sorted and
  read in 2 threads that split it at chunk boundaries (what the core will do for
  ``shuffle="global"``), timed over the first ``TIMED_WINDOWS`` windows (each decodes nearly
  every chunk of the file); through today's core, global shuffle reads chunked files row by
  row, decoding a whole chunk per row, so it is not run on them.

Each approach runs in its own process, approaches alternate within a run, and the table shows
medians of the runs with ratios paired within a run (page cache warm).

    python benchmarks/bench_hdf5.py [--rows 1000000] [--runs 3] [--only gzip]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import GIB, machine, maxrss_bytes, median, run_child, table, warm

COLS = 256
CHUNK_ROWS = 1024
WINDOW_ROWS = 25_600
TIMED_WINDOWS = 4
APPROACHES = {
    # name: (file, kind)
    "npy: ntf file order": ("npy", "ntf-none"),
    "npy: ntf shuffle=True": ("npy", "ntf-block"),
    "npy: ntf shuffle=global": ("npy", "ntf-global"),
    "contiguous: h5py read_direct": ("contiguous", "h5py"),
    "contiguous: npstream src.read": ("contiguous", "read"),
    "contiguous: ntf file order": ("contiguous", "ntf-none"),
    "contiguous: ntf shuffle=True": ("contiguous", "ntf-block"),
    "contiguous: ntf shuffle=global": ("contiguous", "ntf-global"),
    "gzip: h5py read_direct": ("gzip", "h5py"),
    "gzip: npstream src.read": ("gzip", "read"),
    "gzip: ntf file order": ("gzip", "ntf-none"),
    "gzip: ntf shuffle=True": ("gzip", "ntf-block"),
    "gzip: src.read_rows global windows": ("gzip", "read-rows"),
}


def make_files(folder: str, rows: int) -> dict[str, str]:
    import h5py

    paths = {
        "npy": os.path.join(folder, f"hdf5bench_{rows}.npy"),
        "contiguous": os.path.join(folder, f"hdf5bench_{rows}_contiguous.h5"),
        "gzip": os.path.join(folder, f"hdf5bench_{rows}_gzip1.h5"),
    }
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    block_rows = 65536
    blocks = []
    for start in range(0, rows, block_rows):
        shape = (min(block_rows, rows - start), COLS)
        blocks.append(np.random.default_rng(start).integers(0, 256, size=shape).astype("<f4"))
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, COLS)}
    with open(paths["npy"] + ".tmp", "wb") as fp:
        np.lib.format.write_array_header_1_0(fp, header)
        for block in blocks:
            fp.write(block.tobytes())
    for key, options in (("contiguous", {}), ("gzip", {"chunks": (CHUNK_ROWS, COLS), "compression": "gzip",
                                                        "compression_opts": 1})):  # fmt: skip
        with h5py.File(paths[key] + ".tmp", "w") as f:
            dataset = f.create_dataset("x", shape=(rows, COLS), dtype="<f4", **options)
            start = 0
            for block in blocks:
                dataset[start : start + len(block)] = block
                start += len(block)
    for path in paths.values():
        os.replace(path + ".tmp", path)
    return paths


def _h5py(path: str) -> tuple[int, float]:
    import h5py

    with h5py.File(path, "r") as f:
        dataset = f["x"]
        rows = dataset.shape[0]
        buffer = np.empty((4096, COLS), dtype="<f4")
        start = time.perf_counter()
        for first in range(0, rows, 4096):
            count = min(4096, rows - first)
            dataset.read_direct(buffer, np.s_[first : first + count], np.s_[0:count])
        return rows * COLS * 4, time.perf_counter() - start


def _read(path: str) -> tuple[int, float]:
    import npstream

    src = npstream.open(path, key="x")
    block = (64 << 20) // (COLS * 4)
    buffer = np.empty((block, COLS), dtype="<f4")
    start = time.perf_counter()
    for first in range(0, len(src), block):
        count = min(block, len(src) - first)
        src.read(first, first + count, out=buffer[:count])
    return len(src) * COLS * 4, time.perf_counter() - start


def _read_rows(path: str) -> tuple[int, float]:
    from concurrent.futures import ThreadPoolExecutor

    import npstream

    src = npstream.open(path, key="x")
    rows = len(src)
    order = np.random.default_rng(0).permutation(rows)
    out = np.empty((WINDOW_ROWS, COLS), dtype="<f4")
    chunk = src.chunk_rows
    def piece(wanted: np.ndarray, first: int, last: int) -> None:
        if last > first:
            src.read_rows(wanted[first:last], out[first:last])

    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        for first in range(0, min(rows, TIMED_WINDOWS * WINDOW_ROWS), WINDOW_ROWS):
            wanted = np.sort(order[first : first + WINDOW_ROWS])
            # Two pieces, split at a chunk boundary near the middle.
            middle = int(np.searchsorted(wanted, (wanted[len(wanted) // 2] // chunk) * chunk))
            list(pool.map(piece, [wanted, wanted], [0, middle], [middle, len(wanted)]))
        seconds = time.perf_counter() - start
    return min(rows, TIMED_WINDOWS * WINDOW_ROWS) * COLS * 4, seconds


def _ntf(path: str, shuffle: object) -> tuple[int, float]:
    import tensorflow as tf

    import npstream
    import npstream.tf as ntf

    tf.data.Dataset.range(3).map(lambda x: x + 1).reduce(np.int64(0), lambda a, x: a + x)
    src = path if path.endswith(".npy") else npstream.open(path, key="x")
    ds = ntf.dataset(src, batch_size=256, shuffle=shuffle, seed=1)
    start = time.perf_counter()
    rows = int(ds.reduce(tf.constant(0, tf.int64), lambda acc, x: acc + tf.cast(tf.shape(x)[0], tf.int64)))
    return rows * COLS * 4, time.perf_counter() - start


def child(name: str, path: str) -> dict:
    _, kind = APPROACHES[name]
    base = maxrss_bytes()
    if kind == "h5py":
        nbytes, seconds = _h5py(path)
    elif kind == "read":
        nbytes, seconds = _read(path)
    elif kind == "read-rows":
        nbytes, seconds = _read_rows(path)
    else:
        shuffle = {"ntf-none": False, "ntf-block": True, "ntf-global": "global"}[kind]
        nbytes, seconds = _ntf(path, shuffle)
    return {"bytes": nbytes, "seconds": seconds, "rss": maxrss_bytes() - base}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/npstream-bench")
    parser.add_argument("--only", help="substring: run only approaches whose name contains it")
    parser.add_argument("--child", nargs=2, metavar=("APPROACH", "PATH"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    os.makedirs(args.dir, exist_ok=True)
    paths = make_files(args.dir, args.rows)
    names = [n for n in APPROACHES if not args.only or args.only in n]
    results: dict[str, list[float]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:
            path = paths[APPROACHES[name][0]]
            warm(path)
            r = run_child(__file__, ["--child", name, path])
            results[name].append(r["bytes"] / r["seconds"])
            print(f"run {run + 1}: {name}: {results[name][-1] / GIB:.3f} GiB/s", file=sys.stderr)

    def ratio(name: str, reference: str) -> str:
        if name not in results or reference not in results:
            return ""
        pairs = [a / b for a, b in zip(results[name], results[reference], strict=True)]
        return f"{median(pairs):.2f}x"

    references = {
        "contiguous: ntf file order": "npy: ntf file order",
        "contiguous: ntf shuffle=True": "npy: ntf shuffle=True",
        "contiguous: ntf shuffle=global": "npy: ntf shuffle=global",
        "contiguous: npstream src.read": "contiguous: h5py read_direct",
        "gzip: npstream src.read": "gzip: h5py read_direct",
        "gzip: ntf file order": "gzip: h5py read_direct",
        "gzip: ntf shuffle=True": "gzip: ntf file order",
        "gzip: src.read_rows global windows": "gzip: ntf file order",
    }
    rows = []
    for name in names:
        reference = references.get(name, "")
        rows.append([name, f"{median(results[name]) / GIB:.3f}", ratio(name, reference), reference])
    size = os.path.getsize(paths["gzip"]) / GIB
    print(
        f"# {args.rows} x {COLS} float32 ({args.rows * COLS * 4 / GIB:.2f} GiB; gzip-1 file {size:.2f} GiB), "
        f"chunks of {CHUNK_ROWS} rows; {machine()}"
    )
    print(f"# {time.strftime('%Y-%m-%d')}; medians of {args.runs} runs; ratios paired within each run; warm")
    print(table(["approach", "GiB/s", "ratio", "to"], rows))


if __name__ == "__main__":
    main()
