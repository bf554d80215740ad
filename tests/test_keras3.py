"""Keras 3 ``model.fit`` on the torch and JAX backends through npstream's adapters.

Keras picks its backend when it is first imported, so each fit runs in its own process
(``keras_worker.py``). The model must learn the known linear map the files were made from, and
the adapter must have moved through several epochs (each Keras epoch takes a whole npstream
epoch; Keras may also start iterations it discards, so epoch numbers can advance faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "keras_worker.py")
WEIGHTS = np.array([2.0, -1.0, 0.5])
EPOCHS = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("keras3")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 3)).astype(np.float32)
    y = (x @ WEIGHTS[:, None] + 0.25).astype(np.float32)
    paths = os.fspath(folder / "x.npy"), os.fspath(folder / "y.npy")
    np.save(paths[0], x)
    np.save(paths[1], y)
    return paths


@pytest.mark.parametrize(("backend", "modes"), [("torch", ["torch"]), ("jax", ["grain", "jax"])])
def test_fit_learns_the_map(files, tmp_path, backend, modes) -> None:
    pytest.importorskip(backend)
    pytest.importorskip("keras")
    if "grain" in modes:
        pytest.importorskip("grain")
    out = os.fspath(tmp_path / "out.json")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, WORKER, *files, ",".join(modes), out]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as fp:
        results = json.load(fp)
    assert sorted(results) == sorted(modes)
    for mode, result in results.items():
        assert result["backend"] == backend, mode
        np.testing.assert_allclose(np.ravel(result["kernel"]), WEIGHTS, atol=1e-3, err_msg=mode)
        np.testing.assert_allclose(result["bias"], [0.25], atol=1e-3, err_msg=mode)
        assert len(result["loss"]) == EPOCHS and result["loss"][-1] < result["loss"][0], mode
        assert result["epochs_done"] >= EPOCHS, mode
