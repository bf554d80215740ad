"""Processes for ``test_tf_service.py``: a tf.data service dispatcher, a worker, and a client.

    python tf_service.py dispatcher PORT
    python tf_service.py worker DISPATCHER_PORT WORKER_PORT (plain | foreign | same:PATH)
    python tf_service.py client DISPATCHER_PORT PATH

Servers run until killed; the test stops them by pid. The client prints one JSON line: the
number of batches it received, or the error that ended its iteration.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

service = tf.data.experimental.service


def worker(dispatcher_port: int, port: int, prime: str) -> None:
    keep = []
    if prime == "foreign":
        # Unrelated Python functions with the signatures of npstream's own, traced in the same
        # order, so that they get the same names: the worst case, where nothing but npstream's
        # check can tell (a function of another signature fails on its own).
        def first_epoch(dummy):
            return np.int64(0)

        def constant(epoch, window):
            return np.full((4, 8, 3), 7.0, np.float32), np.int64(7)

        keep.append(
            tf.data.Dataset.range(1)
            .map(lambda w: tf.numpy_function(first_epoch, [w], tf.int64, stateful=False))
            .map(lambda e: tf.numpy_function(constant, [e, e], [tf.float32, tf.int64], stateful=False))
        )
    elif prime.startswith("same:"):
        # The very same npstream dataset, built here: its functions get the same names.
        import npstream.tf as ntf

        keep.append(ntf.dataset(prime[5:], batch_size=8))
    server = service.WorkerServer(
        service.WorkerConfig(
            dispatcher_address=f"127.0.0.1:{dispatcher_port}",
            worker_address=f"127.0.0.1:{port}",
            port=port,
            heartbeat_interval_ms=200,
        )
    )
    print("ready", flush=True)
    server.join()


def client(dispatcher_port: int, path: str) -> None:
    import npstream.tf as ntf

    ds = ntf.dataset(path, batch_size=8)
    distributed = ds.apply(
        service.distribute(processing_mode="parallel_epochs", service=f"grpc://127.0.0.1:{dispatcher_port}")
    )
    batches = 0
    try:
        for _ in distributed:
            batches += 1
    except tf.errors.OpError as exc:
        print(json.dumps({"batches": batches, "error": f"{type(exc).__name__}: {exc.message}"}), flush=True)
        return
    print(json.dumps({"batches": batches, "error": None}), flush=True)


def main() -> None:
    role = sys.argv[1]
    if role == "dispatcher":
        server = service.DispatchServer(service.DispatcherConfig(port=int(sys.argv[2])))
        print("ready", flush=True)
        server.join()
    elif role == "worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        client(int(sys.argv[2]), sys.argv[3])


if __name__ == "__main__":
    main()
