"""Keras 3 ``model.fit`` through an npstream adapter, for ``test_keras3.py``.

Run as ``python keras_worker.py X Y MODE OUT`` with ``KERAS_BACKEND`` set (keras reads it when
imported). MODE is ``torch`` (a DataLoader over ``npstream.torch.dataset``), ``grain``
(``npstream.grain.dataset(...).repeat()`` with ``steps_per_epoch``) or ``jax`` (a generator over
``npstream.jax.batches``). Fits a one-unit Dense layer to ``y = x @ w + b`` for a few epochs and
writes the learned weights and which batches (by their first row's target) each epoch held.
"""

from __future__ import annotations

import json
import sys

EPOCHS = 4


def main() -> None:
    x_path, y_path, mode, out = sys.argv[1:5]
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    kwargs = dict(batch_size=64, shuffle=True, seed=0)
    seen: list[float] = []  # first target of every batch, in the order training took them

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

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.epochs_seen = getattr(self.model, "epochs_seen", 0) + 1

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=steps, verbose=0, callbacks=[Record()])
    kernel, bias = (np.asarray(v).tolist() for v in model.layers[0].get_weights())
    with open(out, "w") as fp:
        json.dump(
            {
                "kernel": kernel,
                "bias": bias,
                "loss": history.history["loss"],
                "seen": seen,
                "epochs_done": epochs_done(),
                "backend": keras.backend.backend(),
            },
            fp,
        )


if __name__ == "__main__":
    main()
