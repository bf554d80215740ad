"""Object-store benchmark: npstream reading a remote ``.npy`` against obstore's own limit.

A C-order float32 ``.npy`` (default 256 MiB: 262,144 x 256) is served on loopback by
SeaweedFS (S3, the uncapped case) and by the tests' fault server with every response capped at
32 MB/s (``--rate``), as one connection to a cloud object store is capped. Approaches, each in
its own process, alternating, ``--runs`` times; the tables show medians:

* limit: obstore ranged GETs (``get_range`` from threads) of 4 and 8 MiB with 4, 8 or 16 in
  flight, each copied into one preallocated buffer; the run's best is that run's limit;
* ``src.read`` of 8 MiB blocks from one caller thread (``npstream.open(url)``);
* ``ntf.dataset`` in file order and with ``shuffle=True``, consumed inside TensorFlow;
* capped: the same, against one request in flight (obstore, 8 MiB ranges);
* open: ``npstream.open`` of the object (requests sent, and time against one 4 KiB GET).

Every read is checked (rows encode their index). Peak RSS is VmHWM after
``echo 5 > /proc/self/clear_refs``, minus the RSS once the framework (TensorFlow) is up.

    python benchmarks/bench_remote.py [--mb 256] [--capped-mb 64] [--runs 3] [--sweep]

``--sweep`` instead measures obstore alone over piece sizes and requests in flight, and
``src.read`` over npstream's piece size, against both servers: the numbers behind the choice of
pieces and requests in flight for remote sources (README, "Object stores").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The servers are the test suite's own (tests/remote/servers.py): one way to start them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _common import machine, make_npy, median, run_child, table

MIB = 1 << 20
CAP = 32e6  # bytes/s per response on the capped server
BLOCK = 8 * MIB
BATCH_ROWS = 1024  # 1 MiB batches: TensorFlow's per-element cost is negligible at this size


# -- measuring inside a child ------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the peak-RSS mark; the current RSS in bytes (the baseline to subtract)."""
    with open("/proc/self/clear_refs", "w") as fp:
        fp.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_since(base: int) -> int:
    return _status_kib("VmHWM") * 1024 - base


def _target(spec: dict):
    """(store, key, storage_options, url) for the object described by ``spec``."""
    from obstore.store import HTTPStore, S3Store

    if spec["kind"] == "s3":
        options = spec["options"]
        store = S3Store(
            spec["bucket"],
            config={k: v for k, v in options.items() if k != "allow_http"},
            client_options={"allow_http": True, "timeout": "120s"},
        )
        return store, spec["key"], options, f"s3://{spec['bucket']}/{spec['key']}"
    store = HTTPStore.from_url(spec["endpoint"] + "/", client_options={"allow_http": True, "timeout": "120s"})
    return store, spec["key"], {}, f"{spec['endpoint']}/{spec['key']}"


def _check_rows(block: np.ndarray, first: int) -> None:
    if not np.array_equal(block[:, 0], np.arange(first, first + len(block), dtype=block.dtype)):
        raise AssertionError(f"rows {first}..{first + len(block)}: wrong data")


def child_obstore(spec: dict, piece: int, inflight: int) -> dict:
    import obstore as obs

    store, key, _, _ = _target(spec)
    size, offset = spec["size"], spec["offset"]
    out = np.empty(size, np.uint8)
    out[:: 1 << 12] = 0  # fault the buffer in before timing
    starts = list(range(offset, size, piece))
    base = _reset_peak()

    def one(start: int) -> None:
        end = min(start + piece, size)
        data = obs.get_range(store, key, start=start, end=end)
        out[start:end] = np.frombuffer(data, np.uint8)

    began = time.perf_counter()
    with ThreadPoolExecutor(inflight) as pool:
        list(pool.map(one, starts))
    seconds = time.perf_counter() - began
    rows = out[offset:].view("<f4").reshape(-1, 256)
    _check_rows(rows, 0)
    return {"bytes": size - offset, "seconds": seconds, "rss": _peak_since(base)}


def child_read(spec: dict, piece: int | None = None) -> dict:
    import npstream
    from npstream._storage.parallel import PieceSizer

    _, _, options, url = _target(spec)
    base = _reset_peak()
    src = npstream.open(url, storage_options=options)
    if piece:  # --sweep: one fixed piece size instead of npstream's choice
        src.data._sizer = PieceSizer((piece,))
    rows_per_block = BLOCK // (src.shape[1] * src.dtype.itemsize)
    buf = np.empty((rows_per_block, *src.shape[1:]), src.dtype)
    began = time.perf_counter()
    for first in range(0, len(src), rows_per_block):
        last = min(len(src), first + rows_per_block)
        _check_rows(src.read(first, last, out=buf[: last - first]), first)
    seconds = time.perf_counter() - began
    return {
        "bytes": src.layout.data_bytes,
        "seconds": seconds,
        "rss": _peak_since(base),
        "piece": src.data._sizer.best(),
    }


def child_dataset(spec: dict, shuffle: bool) -> dict:
    import tensorflow as tf

    import npstream
    import npstream.tf as ntf

    tf.data.Dataset.range(3).map(lambda x: x + 1).reduce(np.int64(0), lambda a, x: a + x)
    _, _, options, url = _target(spec)
    base = _reset_peak()
    src = npstream.open(url, storage_options=options)
    ds = ntf.dataset(src, batch_size=BATCH_ROWS, shuffle=shuffle, seed=1)

    def count(acc, x):
        return (
            acc[0] + tf.cast(tf.shape(x)[0], tf.int64),
            acc[1] + tf.reduce_sum(tf.cast(x[:, 0], tf.float64)),
        )

    began = time.perf_counter()
    rows, total = ds.reduce((tf.constant(0, tf.int64), tf.constant(0.0, tf.float64)), count)
    seconds = time.perf_counter() - began
    rows = int(rows)
    if rows != len(src) or float(total) != rows * (rows - 1) / 2:  # every row once, intact
        raise AssertionError(f"dataset gave {rows} rows (sum {float(total)}), expected {len(src)}")
    return {
        "bytes": src.layout.data_bytes,
        "seconds": seconds,
        "rss": _peak_since(base),
        "piece": src.data._sizer.best(),
    }


def child_open(spec: dict) -> dict:
    import obstore as obs

    import npstream

    store, key, options, url = _target(spec)
    npstream.open(url, storage_options=options)  # connection and client set up
    gets, opens, requests = [], [], []
    for _ in range(15):
        began = time.perf_counter()
        obs.get_range(store, key, start=0, end=4096)
        gets.append(time.perf_counter() - began)
        began = time.perf_counter()
        src = npstream.open(url, storage_options=options)
        opens.append(time.perf_counter() - began)
        requests.append(src.data.requests)
    return {
        "open_ms": statistics.median(opens) * 1e3,
        "get_ms": statistics.median(gets) * 1e3,
        "requests": max(requests),
    }


# -- the parent ------------------------------------------------------------------------------
def _servers(path: str, capped_path: str):
    from remote import servers

    seaweed = servers.start_seaweed()
    # Not nginx's limit_rate: it lets every response send a second's worth of bytes at once
    # (measured: one 1 MiB request at a time moved 737 MB/s through a 32 MB/s limit, 8 MiB ones
    # 42 MB/s), so it does not cap small requests. The fault server paces every response.
    capped = servers.start_fault(os.path.dirname(capped_path), rate=CAP)
    try:
        from boto3.s3.transfer import TransferConfig

        key = os.path.basename(path)
        servers.s3_client(seaweed).upload_file(
            path, servers.BUCKET, key, Config=TransferConfig(multipart_chunksize=8 * MIB)
        )
    except BaseException:
        seaweed.stop()
        capped.stop()
        raise
    return servers, seaweed, capped


def _spec(servers, seaweed, capped, path: str, capped_path: str) -> tuple[dict, dict]:
    import npstream

    def layout(p: str):
        return npstream.open(p).layout

    s3 = {
        "kind": "s3",
        "bucket": servers.BUCKET,
        "key": os.path.basename(path),
        "options": servers.s3_options(seaweed),
        "size": os.path.getsize(path),
        "offset": layout(path).offset,
    }
    http = {
        "kind": "http",
        "endpoint": capped.endpoint,
        "key": os.path.basename(capped_path),
        "size": os.path.getsize(capped_path),
        "offset": layout(capped_path).offset,
    }
    return s3, http


def _run(name: str, args: list[str]) -> dict:
    result = run_child(__file__, ["--child", name, *args], timeout=900)
    mbps = result["bytes"] / result["seconds"] / 1e6 if "bytes" in result else None
    shown = f"{mbps:.0f} MB/s, rss {result['rss'] / MIB:.0f} MiB" if mbps else json.dumps(result)
    if result.get("piece"):
        shown += f", pieces of {result['piece'] / MIB:.0f} MiB"
    print(f"  {name} {' '.join(a for a in args if not a.startswith('{'))}: {shown}", file=sys.stderr)
    return result


def _mbps(r: dict) -> float:
    return r["bytes"] / r["seconds"] / 1e6


def main_bench(args, s3: dict, http: dict, capped_name: str) -> None:
    limit_variants = [(p, k) for p in (4 * MIB, 8 * MIB) for k in (4, 8, 16)]
    cases: dict[str, tuple[str, list[str]]] = {}
    for piece, k in limit_variants:
        cases[f"S3 limit: obstore {piece // MIB} MiB x {k}"] = (
            "obstore",
            [json.dumps(s3), str(piece), str(k)],
        )
    cases["S3 obstore 8 MiB x 1"] = ("obstore", [json.dumps(s3), str(8 * MIB), "1"])
    cases["S3 src.read 8 MiB blocks"] = ("read", [json.dumps(s3)])
    cases["S3 ntf.dataset file order"] = ("dataset", [json.dumps(s3), "0"])
    cases["S3 ntf.dataset shuffle=True"] = ("dataset", [json.dumps(s3), "1"])
    cases["capped obstore 8 MiB x 1"] = ("obstore", [json.dumps(http), str(8 * MIB), "1"])
    cases["capped obstore 8 MiB x 8"] = ("obstore", [json.dumps(http), str(8 * MIB), "8"])
    cases["capped obstore 1 MiB x 16"] = ("obstore", [json.dumps(http), str(MIB), "16"])
    cases["capped src.read 8 MiB blocks"] = ("read", [json.dumps(http)])
    cases["capped ntf.dataset file order"] = ("dataset", [json.dumps(http), "0"])
    cases["capped ntf.dataset shuffle=True"] = ("dataset", [json.dumps(http), "1"])
    cases["S3 open"] = ("open", [json.dumps(s3)])
    if args.only:
        cases = {name: case for name, case in cases.items() if name.startswith(args.only)}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for run in range(args.runs):
        print(f"run {run + 1}", file=sys.stderr)
        order = list(cases) if run % 2 == 0 else list(reversed(cases))
        for name in order:
            kind, child_args = cases[name]
            results[name].append(_run(kind, child_args))

    has_limit = any("limit" in n for n in results)
    limit = [
        max(_mbps(results[n][i]) for n in results if "limit" in n) if has_limit else 0
        for i in range(args.runs)
    ]
    single = [_mbps(r) for r in results.get("capped obstore 8 MiB x 1", [])] or [0.0] * args.runs
    rows = []
    for name in cases:
        if name == "S3 open" or (name.startswith("S3") and not has_limit):
            continue
        speeds = [_mbps(r) for r in results[name]]
        if name.startswith("S3"):
            ratio = f"{median([s / lim for s, lim in zip(speeds, limit, strict=True)]):.2f}x limit"
        else:
            ratio = f"{median([s / one for s, one in zip(speeds, single, strict=True)]):.1f}x one in flight"
        rows.append(
            [
                name,
                f"{median(speeds):.0f}",
                ratio,
                f"{median([r['rss'] for r in results[name]]) / MIB:.0f}",
                " ".join(f"{s:.0f}" for s in speeds),
            ]
        )
    opens = results.get("S3 open") or [{"open_ms": 0, "get_ms": 0, "requests": 0}]
    print(
        f"# {s3['size'] / MIB:.0f} MiB float32 .npy in SeaweedFS (S3, loopback) and "
        f"{http['size'] / MIB:.0f} MiB on {capped_name} capping each response at {CAP / 1e6:.0f} MB/s; "
        f"{machine()}"
    )
    print(
        f"# {time.strftime('%Y-%m-%d')}; medians of {args.runs} runs, each approach in its own process, "
        "alternating; ratios paired within a run; S3 limit = best obstore row of the run "
        f"(median {median(limit):.0f} MB/s); ntf.dataset batches of {BATCH_ROWS} rows (1 MiB)"
    )
    print(table(["approach", "MB/s", "ratio", "peak RSS delta MiB", "runs MB/s"], rows))
    print(
        f"\nopen: {max(r['requests'] for r in opens)} request(s); npstream.open "
        f"{median([r['open_ms'] for r in opens]):.1f} ms vs one 4 KiB ranged GET "
        f"{median([r['get_ms'] for r in opens]):.1f} ms (medians)"
    )


def main_sweep(args, s3: dict, http: dict, capped_name: str) -> None:
    rows = []
    for label, spec in (("S3", s3), ("capped", http)):
        for piece in (MIB, 2 * MIB, 4 * MIB, 8 * MIB):
            speeds = {}
            for k in (1, 2, 4, 8, 16):
                if label == "capped" and k == 1 and piece != 8 * MIB:
                    continue  # one in flight is the cap whatever the piece size
                runs = [
                    _mbps(_run("obstore", [json.dumps(spec), str(piece), str(k)])) for _ in range(args.runs)
                ]
                speeds[k] = median(runs)
            rows.append(
                [label, f"obstore {piece // MIB} MiB"] + [f"{speeds.get(k, 0):.0f}" for k in (1, 2, 4, 8, 16)]
            )
        for piece in (MIB, 2 * MIB, 4 * MIB, 8 * MIB):
            runs = [_mbps(_run("read", [json.dumps(spec), str(piece)])) for _ in range(args.runs)]
            rows.append(
                [
                    label,
                    f"src.read 8 MiB, pieces {piece // MIB} MiB",
                    f"{median(runs):.0f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    print(
        f"# sweep: MB/s (medians of {args.runs}); columns = requests in flight; capped = {capped_name} "
        f"at {CAP / 1e6:.0f} MB/s per response; {machine()}"
    )
    print(table(["server", "what", "1", "2", "4", "8", "16"], rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256, help="size of the S3 object in MiB")
    parser.add_argument("--capped-mb", type=int, default=64, help="size of the capped server's object in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/npstream-bench")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--only", help="run only the approaches whose name starts with this (S3, capped)")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, spec, *rest = args.child
        spec_dict = json.loads(spec)
        if kind == "obstore":
            out = child_obstore(spec_dict, int(rest[0]), int(rest[1]))
        elif kind == "read":
            out = child_read(spec_dict, int(rest[0]) if rest else None)
        elif kind == "dataset":
            out = child_dataset(spec_dict, rest[0] == "1")
        else:
            out = child_open(spec_dict)
        print(json.dumps(out))
        return
    os.makedirs(os.path.join(args.dir, "capped"), exist_ok=True)
    path = make_npy(os.path.join(args.dir, f"remote_{args.mb}mib.npy"), args.mb * 1024, 256)
    capped_path = make_npy(
        os.path.join(args.dir, "capped", f"remote_{args.capped_mb}mib.npy"), args.capped_mb * 1024, 256
    )
    servers, seaweed, capped = _servers(path, capped_path)
    try:
        s3, http = _spec(servers, seaweed, capped, path, capped_path)
        (main_sweep if args.sweep else main_bench)(args, s3, http, capped.name)
    finally:
        seaweed.stop()
        capped.stop()


if __name__ == "__main__":
    main()
