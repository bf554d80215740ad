"""``npstream.jax.batches``: global arrays whose parts are exactly the core's shards.

Several CPU devices and several processes need JAX to start with flags, so those runs happen in
subprocesses (``jax_worker.py``); the oracle is ``npstream.batches`` with the per-process
arguments the module docstring promises.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
from jax.sharding import SingleDeviceSharding  # noqa: E402

import npstream  # noqa: E402
import npstream.jax as nj  # noqa: E402
from npstream import UsageError  # noqa: E402

ROWS = 1001
WORKER = os.path.join(os.path.dirname(__file__), "jax_worker.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("jax")
    x, y = os.fspath(folder / "x.npy"), os.fspath(folder / "y.npy")
    index = np.arange(ROWS)
    np.save(x, np.stack([index, -index], axis=1).astype(np.float32))
    np.save(y, index.astype(np.int64))
    return x, y


def core_rows(path: str, epoch: int, **kwargs) -> list[list[int]]:
    b = npstream.batches(path, shuffle=True, seed=21, memory_budget="64KB", drop_remainder=True, **kwargs)
    b.set_epoch(epoch)
    return [x[:, 0].astype(np.int64).tolist() for x in b]


def run_workers(args_list: list[list[str]], tmp_path) -> list[dict]:
    outs = [os.fspath(tmp_path / f"out{i}.json") for i in range(len(args_list))]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, args[0], out, *args[1:]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, out in zip(args_list, outs, strict=True)
    ]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    seen = []
    for out in outs:
        with open(out) as fp:
            seen.append(json.load(fp))
    return seen


def test_four_devices_one_process(files, tmp_path) -> None:
    (seen,) = run_workers([[files[0], "4"]], tmp_path)
    assert seen["process"] == [0, 1] and seen["shard"] == [0, 1]
    for epoch, steps in enumerate(seen["epochs"]):
        expected = core_rows(files[0], epoch, batch_size=16)
        assert [s["rows"] for s in steps] == expected
        assert [s["sum"] for s in steps] == [float(sum(rows)) for rows in expected]  # on the devices
    assert seen["epochs"][0] != seen["epochs"][1]


def test_two_processes(files, tmp_path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = run_workers([[files[0], "2", str(port), str(i), "2"] for i in range(2)], tmp_path)
    assert [s["process"] for s in seen] == [[0, 2], [1, 2]]
    assert [s["shard"] for s in seen] == [[0, 2], [1, 2]]
    assert seen[0]["state"] == seen[1]["state"]  # one state for every host
    for epoch in range(2):
        steps = [s["epochs"][epoch] for s in seen]
        assert len(steps[0]) == len(steps[1]) == 62  # 500 rows per process, batches of 8
        for i in range(2):
            assert [s["rows"] for s in steps[i]] == core_rows(
                files[0], epoch, batch_size=8, num_shards=2, shard_index=i
            )
        for a, b in zip(*steps, strict=True):  # the global batch: both parts, summed on the devices
            assert a["sum"] == b["sum"] == float(sum(a["rows"]) + sum(b["rows"]))
        rows = [r for s in steps for step in s for r in step["rows"]]
        assert len(set(rows)) == len(rows)


def test_one_device_tuples_state_and_restore(files) -> None:
    sharding = SingleDeviceSharding(jax.devices()[0])
    kwargs = dict(sharding=sharding, batch_size=16, shuffle="global", seed=4, memory_budget="64KB")
    stream = nj.batches(files, **kwargs)
    assert len(stream) == ROWS // 16
    reference = npstream.batches(
        files, batch_size=16, shuffle="global", seed=4, memory_budget="64KB", drop_remainder=True
    )
    whole = [tuple(np.array(v) for v in x) for _ in range(2) for x in reference]
    got = []
    for _ in range(2):
        for x, y in stream:
            assert isinstance(x, jax.Array) and x.sharding == sharding
            got.append((np.asarray(x), np.asarray(y)))
    for (a, b), (c, d) in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    fresh = nj.batches(files, **kwargs)
    it = iter(fresh)
    for _ in range(30):
        next(it)
    state = json.loads(json.dumps(fresh.state()))
    restored = nj.batches(files, **kwargs)
    restored.restore(state)
    resumed = [np.asarray(x) for x, _ in restored]
    for a, (c, _) in zip(resumed, whole[30:62], strict=True):
        np.testing.assert_array_equal(a, c)
    assert restored.epoch == 1
    with pytest.raises(UsageError, match="seed"):
        nj.batches(files, **{**kwargs, "seed": 5}).restore(state)


def test_errors(files, tmp_path) -> None:
    sharding = SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(UsageError, match="batch_size"):
        nj.batches(files[0], sharding=sharding, batch_size=0)
    names = os.fspath(tmp_path / "names.npy")
    np.save(names, np.array(["a", "b"] * 10))
    with pytest.raises(UsageError, match=r"names\.npy.*JAX"):
        nj.batches(names, sharding=sharding, batch_size=2)
    with pytest.raises(UsageError, match="sharding"):
        nj.batches(files[0], sharding="not a sharding", batch_size=4)
