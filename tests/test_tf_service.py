"""npstream datasets on the tf.data service: an error, never data from someone else's function.

A tf.data graph names its Python functions by a per-process counter, so a service worker (another
process) either lacks the function or runs one of its own under the same name. A real dispatcher
and worker run on loopback, each in its own process; the worker is plain, has traced an unrelated
function that returns what npstream's read function returns, or has built the same npstream
dataset itself. In every case the client's iteration must end in an error before any batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = [
    pytest.mark.tf,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow"),
]

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_service.py")
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready", or nothing if it died
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"{args[0]} did not start: {proc.communicate()[1][-3000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def run_on_service(path: str, prime: str) -> dict:
    dispatcher_port, worker_port = free_port(), free_port()
    servers = [start("dispatcher", str(dispatcher_port))]
    try:
        servers.append(start("worker", str(dispatcher_port), str(worker_port), prime))
        client = subprocess.run(
            [sys.executable, SCRIPT, "client", str(dispatcher_port), path],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        assert client.returncode == 0, client.stderr[-3000:]
        return json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        for proc in servers:
            stop(proc)


def test_service_workers_cannot_deliver_foreign_data(tmp_path) -> None:
    path = os.fspath(tmp_path / "rows.npy")
    np.save(path, np.arange(4000 * 3, dtype=np.float32).reshape(4000, 3))
    primes = ["plain", "foreign", f"same:{path}"]
    with ThreadPoolExecutor(len(primes)) as pool:
        results = dict(zip(primes, pool.map(lambda p: run_on_service(path, p), primes), strict=True))
    for prime, result in results.items():
        assert result["batches"] == 0, (prime, result)
        assert result["error"], (prime, result)
    # A worker that runs an impostor of the read function is caught by the window's token.
    for prime in ("foreign", f"same:{path}"):
        error = results[prime]["error"]
        assert "did not come from the read function of this dataset" in error, (prime, error)
