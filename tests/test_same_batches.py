"""One seed, one order: tf == torch == grain == jax == ``npstream.batches``, batch for batch.

Every framework runs in this one process (their pinned versions coexist), over several epochs,
shuffled and sharded, with tuple elements. JAX's shards follow its processes, so here it runs
unsharded (one process); ``test_jax.py::test_two_processes`` checks its shards against the core.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
grain = pytest.importorskip("grain")
jax = pytest.importorskip("jax")

from jax.sharding import SingleDeviceSharding  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import npstream  # noqa: E402
import npstream.grain as ng  # noqa: E402
import npstream.jax as nj  # noqa: E402
import npstream.tf as ntf  # noqa: E402
import npstream.torch as nt  # noqa: E402

ROWS = 1501
EPOCHS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("same")
    x, y = os.fspath(folder / "x.npy"), os.fspath(folder / "y.npy")
    index = np.arange(ROWS)
    np.save(x, np.stack([index, 3 * index + 1, -index], axis=1).astype(np.int32))
    np.save(y, (index * 0.5).astype(np.float64))
    return x, y


def pairs(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array(x), np.array(y)) for x, y in batches]


def core(files, **kwargs) -> list:
    stream = npstream.batches(files, **kwargs)
    return [pairs(stream) for _ in range(EPOCHS)]


def from_tf(files, **kwargs) -> list:
    ds = ntf.dataset(files, **kwargs)
    return [pairs(ds.as_numpy_iterator()) for _ in range(EPOCHS)]


def from_torch(files, **kwargs) -> list:
    loader = DataLoader(nt.dataset(files, **kwargs), batch_size=None)
    return [[(x.numpy().copy(), y.numpy().copy()) for x, y in loader] for _ in range(EPOCHS)]


def from_grain(files, **kwargs) -> list:
    ds = ng.dataset(files, **kwargs)
    it = iter(ds.repeat().to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
    return [pairs(next(it) for _ in range(len(ds))) for _ in range(EPOCHS)]


def from_jax(files, *, drop_remainder, num_shards, shard_index, **kwargs) -> list:
    assert drop_remainder and (num_shards, shard_index) == (1, 0)
    stream = nj.batches(files, sharding=SingleDeviceSharding(jax.devices()[0]), **kwargs)
    return [pairs(stream) for _ in range(EPOCHS)]


@pytest.mark.parametrize("shuffle", [True, "global", False])
@pytest.mark.parametrize("shards", [(1, 0), (2, 0), (2, 1)])
def test_every_framework_gives_the_same_batches(files, shuffle, shards) -> None:
    kwargs = dict(
        batch_size=32,
        shuffle=shuffle,
        seed=77,
        drop_remainder=True,
        num_shards=shards[0],
        shard_index=shards[1],
        memory_budget="48KB",
    )
    expected = core(files, **kwargs)
    assert len(expected[0]) == ROWS // shards[0] // 32
    if shuffle:
        assert not all(np.array_equal(a[0], b[0]) for a, b in zip(expected[0], expected[1], strict=True))
    frameworks = {"tf": from_tf, "torch": from_torch, "grain": from_grain}
    if shards[0] == 1:
        frameworks["jax"] = from_jax
    for name, run in frameworks.items():
        got = run(files, **kwargs)
        for epoch, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            assert len(mine) == len(theirs), (name, epoch)
            for (a, b), (c, d) in zip(mine, theirs, strict=True):
                np.testing.assert_array_equal(a, c, err_msg=f"{name} epoch {epoch}")
                np.testing.assert_array_equal(b, d, err_msg=f"{name} epoch {epoch}")


def test_exit_is_quiet_with_every_framework_imported(files) -> None:
    """npstream.tf's exit hook scans live objects; torch's deprecated ones must not warn then."""
    import subprocess
    import sys

    code = (
        "import sys, torch, torch.distributed, jax, grain\n"
        "import npstream.tf as ntf\n"
        "it = iter(ntf.dataset(sys.argv[1], batch_size=8)); next(it)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code, files[0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
