"""Would a native TensorFlow read op pay? npstream's Python read path against a compiled kernel.

Issue 7 part 4 (design B of the tf.data-service research): a C++ op that ``pread``s row ranges
straight into its output tensor, with the plan in graph ops. This measures that design's upper
bound against ``npstream.tf.dataset`` on the same file, in the same rounds, each approach in its
own process: file order (one op call per window, split into batches with
``from_tensor_slices``) and block shuffle (the window's ~1 MB blocks read in a seeded order,
then rows mixed with ``tf.gather``), warm and cold. The op is not part of npstream: build the
research prototype first and pass the library (``sh .../service/op/build.sh DIR``):

    python benchmarks/bench_native_op.py --op /tmp/npstream-speed/op/npstream_read_rows.so
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import GIB, evict, median, table
from bench_pipeline import SCENARIOS, SHUFFLE, make_data, open_source, tf_count, tf_init, warm_file

WINDOW_BYTES = 25 << 20


def op_dataset(tf, lib, path: str, sc, mode: str, windows: int):
    rows_total = os.path.getsize(path) // sc.row_bytes
    window_rows = max(1, WINDOW_BYTES // sc.row_bytes // sc.batch) * sc.batch
    block_rows = max(1, (1 << 20) // sc.row_bytes)
    blocks = rows_total // block_rows
    dtype = tf.as_dtype(np.dtype(sc.dtype))
    paths = tf.constant([path])

    @tf.autograph.experimental.do_not_convert
    def read(w):
        if mode == "none":
            starts = tf.reshape(w * window_rows, [1])
            counts = tf.constant([window_rows], tf.int64)
        else:
            order = tf.random.experimental.stateless_shuffle(tf.range(blocks, dtype=tf.int64), seed=[1, 0])
            per = window_rows // block_rows
            chosen = order[w * per : (w + 1) * per]
            starts, counts = chosen * block_rows, tf.fill([per], tf.constant(block_rows, tf.int64))
        n = tf.size(starts)
        x = lib.npstream_read_rows(tf.repeat(paths, n), tf.zeros([n], tf.int64), starts, counts,
                                   dtype=dtype, row_shape=list(sc.row_shape))  # fmt: skip
        if mode != "none":
            mix = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(x)[0]), seed=[2, w])
            x = tf.gather(x, mix)
        return x

    @tf.autograph.experimental.do_not_convert
    def split(x):
        rows = tf.shape(x)[0] // sc.batch * sc.batch
        return tf.data.Dataset.from_tensor_slices(tf.reshape(x[:rows], [-1, sc.batch, *sc.row_shape]))

    return tf.data.Dataset.range(windows).map(read, num_parallel_calls=2, deterministic=True).flat_map(split)


def child(job: dict) -> dict:
    tf = tf_init()
    sc = SCENARIOS[job["scenario"]]
    path, mode = job["path"], job["mode"]
    want = min(os.path.getsize(path), 2 * GIB) // sc.row_bytes
    if job["kind"] == "op":
        lib = tf.load_op_library(job["op"])
        window_rows = max(1, WINDOW_BYTES // sc.row_bytes // sc.batch) * sc.batch
        ds = op_dataset(tf, lib, path, sc, mode, want // window_rows)
    else:
        import npstream.tf as ntf

        ds = ntf.dataset(open_source(path, sc), batch_size=sc.batch, shuffle=SHUFFLE[mode], seed=1)
        ds = ds.take(want // sc.batch)
    if job["temp"] == "cold":
        evict(path)
    began = time.perf_counter()
    cpu = time.process_time()
    got = tf_count(tf, ds)
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu
    return {"speed": got * sc.row_bytes / seconds, "cpu_per_gb": cpu / (got * sc.row_bytes / 1e9)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--op", required=True, help="the built prototype library (.so)")
    parser.add_argument("--dir", default="/tmp/npstream-speed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="image,1KiB")
    parser.add_argument("--modes", default="none,block")
    parser.add_argument("--temps", default="warm,cold")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    path = os.path.join(args.dir, "data.bin")
    make_data(path, 4 * GIB)
    jobs = [
        {"kind": kind, "scenario": sc, "mode": mode, "temp": temp, "path": path, "op": args.op}
        for sc in args.scenarios.split(",")
        for mode in args.modes.split(",")
        for temp in args.temps.split(",")
        for kind in ("npstream", "op")
    ]
    results: list[dict] = []
    rng = random.Random(3)
    for run in range(args.runs):
        order = jobs[:]
        rng.shuffle(order)
        order.sort(key=lambda j: j["temp"] == "cold")  # warm ones first, the file still cached
        for job in order:
            if job["temp"] == "warm":
                warm_file(path)
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
            proc = subprocess.run([sys.executable, __file__, "--op", args.op, "--child", json.dumps(job)],
                                  capture_output=True, text=True, env=env, timeout=1800)  # fmt: skip
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            results.append({**job, "run": run, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(f"run {run + 1} {job['kind']} {job['scenario']} {job['mode']} {job['temp']}: "
                  f"{results[-1]['speed'] / GIB:.2f} GiB/s", file=sys.stderr)  # fmt: skip
    rows = []
    for sc in args.scenarios.split(","):
        for mode in args.modes.split(","):
            for temp in args.temps.split(","):
                pick = [r for r in results if (r["scenario"], r["mode"], r["temp"]) == (sc, mode, temp)]
                ours = {r["run"]: r for r in pick if r["kind"] == "npstream"}
                op = {r["run"]: r for r in pick if r["kind"] == "op"}
                ratios = [op[k]["speed"] / ours[k]["speed"] for k in ours if k in op]
                rows.append([
                    sc, mode, temp, f"{median([r['speed'] for r in ours.values()]) / GIB:.2f}",
                    f"{median([r['speed'] for r in op.values()]) / GIB:.2f}", f"{median(ratios):.2f}",
                    f"{median([r['cpu_per_gb'] for r in ours.values()]):.2f}",
                    f"{median([r['cpu_per_gb'] for r in op.values()]):.2f}",
                ])  # fmt: skip
    print(table(["rows", "order", "cache", "npstream GiB/s", "op GiB/s", "op / npstream", "npstream CPU s/GB",
                 "op CPU s/GB"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
