"""Writer benchmark: ``npstream.NpyWriter`` against a raw ``os.write`` loop of the same bytes + fsync.

Each approach writes ``--gib`` GiB (default 2) of float32 rows of 256 columns in 8 MiB blocks
to a new file in ``--dir`` and makes it durable:

* raw write loop: ``os.write`` of one 8 MiB buffer, repeated, then ``os.fsync`` (the limit);
* NpyWriter: ``with NpyWriter(path, "<f4", (256,)) as w: w.write(block)`` repeated (placeholder
  header, data, header fix-up, fsync, rename, directory fsync);
* NpyWriter, big-endian rows: the same, but the blocks arrive as ``>f4`` and are converted
  through the writer's 4 MiB buffer (the slow path: byte order, casts, strided views).

Each approach runs in its own process (peak RSS is its own: VmHWM after ``clear_refs`` minus
the RSS after imports and after the block was built), approaches alternate within each run
(the order rotates from run to run), the file is deleted after each, and the table shows
medians of ``--runs`` with the ratio to the raw loop taken within each run.

    python benchmarks/bench_write.py [--gib 2] [--runs 3] [--dir /tmp/npstream-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import GIB, machine, median, run_child, table

BLOCK_ROWS = 8192  # x 256 float32 = 8 MiB
COLS = 256
APPROACHES = ["raw write loop + fsync", "NpyWriter", "NpyWriter, big-endian rows"]


def _status(key: str) -> int:
    with open("/proc/self/status") as fp:
        return next(int(line.split()[1]) * 1024 for line in fp if line.startswith(key + ":"))


def child(approach: str, path: str, gib: float) -> dict:
    import npstream

    dtype = ">f4" if approach == "NpyWriter, big-endian rows" else "<f4"
    block = np.arange(BLOCK_ROWS * COLS, dtype=dtype).reshape(BLOCK_ROWS, COLS)
    blocks = int(gib * GIB) // block.nbytes
    with open("/proc/self/clear_refs", "w") as fp:
        fp.write("5")
    base = _status("VmRSS")
    start = time.perf_counter()
    if approach == "raw write loop + fsync":
        view = memoryview(block.reshape(-1).view(np.uint8))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(blocks):
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with npstream.NpyWriter(path, "<f4", (COLS,)) as writer:
            for _ in range(blocks):
                writer.write(block)
    seconds = time.perf_counter() - start
    nbytes = blocks * block.nbytes
    assert os.path.getsize(path) >= nbytes
    if approach != "raw write loop + fsync":
        with npstream.open(path) as src:  # the header says what was written
            assert src.shape == (blocks * BLOCK_ROWS, COLS)
    return {"seconds": seconds, "bytes": nbytes, "rss": _status("VmHWM") - base}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/npstream-bench")
    parser.add_argument("--child", nargs=3, metavar=("APPROACH", "PATH", "GIB"))
    args = parser.parse_args()
    if args.child:
        approach, path, gib = args.child
        print(json.dumps(child(approach, path, float(gib))))
        return
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "write.npy")
    results: dict[str, list[dict]] = {a: [] for a in APPROACHES}
    for run in range(args.runs):
        # Rotate the order: the approach after a deleted 2 GiB file may find the disk still busy.
        for approach in APPROACHES[run % 3 :] + APPROACHES[: run % 3]:
            try:
                results[approach].append(run_child(__file__, ["--child", approach, path, str(args.gib)]))
            finally:
                if os.path.exists(path):
                    os.unlink(path)
    raw = results[APPROACHES[0]]
    rows = []
    for approach in APPROACHES:
        speeds = [r["bytes"] / r["seconds"] for r in results[approach]]
        ratios = [s / (b["bytes"] / b["seconds"]) for s, b in zip(speeds, raw, strict=True)]
        rows.append(
            [
                approach,
                f"{median(speeds) / GIB:.2f}",
                f"{median(ratios):.2f}",
                f"{median([r['rss'] for r in results[approach]]) / 2**20:.1f}",
                " ".join(f"{s / GIB:.2f}" for s in speeds),
            ]
        )
    print(f"# write {args.gib:.1f} GiB in 8 MiB blocks, then fsync; {machine()}")
    print(f"# {time.strftime('%Y-%m-%d')}; medians of {args.runs} runs (ratio: paired within a run)")
    print(table(["approach", "GiB/s", "ratio to raw", "peak RSS delta MiB", "runs GiB/s"], rows))


if __name__ == "__main__":
    main()
