"""Keras 3 ``model.fit`` through an npstream adapter, for ``test_keras3.py``.

Run as ``python keras_worker.py X Y MODES OUT`` with ``KERAS_BACKEND`` set (keras reads it when
imported). MODES is a comma-separated list of ``torch`` (a DataLoader over
``npstream.torch.dataset``), ``grain`` (``npstream.grain.dataset(...).repeat()`` with
``steps_per_epoch``) and ``jax`` (a generator over ``npstream.jax.batches``). For each, fits a
one-unit Dense layer to ``y = x @ w + b`` for a few epochs and writes, per mode, the learned
weights, the losses and how many npstream epochs the adapter moved through.
"""

from __future__ import annotations

import json
import sys

EPOCHS = 4


def main() -> None:
    x_path, y_path, modes, out = sys.argv[1:5]
    results = {mode: fit(x_path, y_path, mode) for mode in modes.split(",")}
    with open(out, "w") as fp:
        json.dump(results, fp)


def fit(x_path: str, y_path: str, mode: str) -> dict:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    kwargs = dict(batch_size=64, shuffle=True, seed=0)
    seen: list[float] = []  # first target of every batch Grain produced (it reads ahead of training)

    if mode == "torch":
        from torch.utils.data import DataLoader

        import npstream.torch as nt

        ds = nt.dataset((x_path, y_path), **kwargs)
        data, steps = DataLoader(ds, batch_size=None), None
        epochs_done = lambda: ds.epoch  # noqa: E731
    elif mode == "grain":
        import npstream.grain as ng

        ds = ng.dataset((x_path, y_path), **kwargs)

        def record(batch):
            seen.append(float(batch[1][0, 0]))
            return batch

        data, steps = ds.repeat().map(record), len(ds)
        epochs_done = lambda: len(seen) // len(ds)  # noqa: E731
    else:
        import jax
        from jax.sharding import SingleDeviceSharding

        import npstream.jax as nj

        stream = nj.batches((x_path, y_path), sharding=SingleDeviceSharding(jax.devices()[0]), **kwargs)

        def endless():
            while True:
                yield from stream

        data, steps = endless(), len(stream)
        epochs_done = lambda: stream.epoch  # noqa: E731

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=steps, verbose=0)
    kernel, bias = (np.asarray(v).tolist() for v in model.layers[0].get_weights())
    return {
        "kernel": kernel,
        "bias": bias,
        "loss": history.history["loss"],
        "epochs_done": epochs_done(),
        "backend": keras.backend.backend(),
    }


if __name__ == "__main__":
    main()
