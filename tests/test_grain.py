"""``npstream.grain.dataset`` against the neutral core, through Grain's own pipeline pieces.

The oracle is ``npstream.batches`` with the same arguments: element ``i`` of the Grain dataset
must be batch ``i % len`` of epoch ``i // len`` of that stream.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

grain = pytest.importorskip("grain")
from absl import flags  # noqa: E402

import npstream  # noqa: E402
import npstream.grain as ng  # noqa: E402
from npstream import UsageError  # noqa: E402

ROWS = 1001
MODES = [False, True, "global"]


@pytest.fixture(scope="module", autouse=True)
def absl_flags() -> None:
    # Grain's worker processes read absl flags; outside absl.app.run they must be marked parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("grain")
    x, y = os.fspath(folder / "x.npy"), os.fspath(folder / "y.npy")
    index = np.arange(ROWS)
    np.save(x, np.stack([index, -index], axis=1).astype(np.float32))
    np.save(y, index.astype(np.int64))
    return x, y


def core_epochs(data, epochs: int, **kwargs) -> list:
    b = npstream.batches(data, **kwargs)
    return [
        tuple(np.array(v) for v in x) if isinstance(x, tuple) else np.array(x)
        for _ in range(epochs)
        for x in b
    ]


def assert_same(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if isinstance(b, tuple):
            assert isinstance(a, tuple)
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)
        else:
            np.testing.assert_array_equal(a, b)


def kwargs_for(shuffle, **more):
    return dict(batch_size=16, shuffle=shuffle, seed=3, memory_budget="64KB", **more)


@pytest.mark.parametrize("shuffle", MODES)
def test_index_is_batch_of_epoch_and_repeat_gives_epochs(files, shuffle) -> None:
    kwargs = kwargs_for(shuffle, num_shards=2, shard_index=1)
    ds = ng.dataset(files, **kwargs)
    expected = core_epochs(files, 3, **kwargs)
    assert len(ds) == len(expected) // 3 == 32
    assert_same(list(ds.repeat(3)), expected)  # MapDataset iteration: threads, in order
    assert_same([ds[i] for i in (70, 3, 64, 3)], [expected[i] for i in (70, 3, 64, 3)])  # random access
    assert_same(list(ds), expected[:32])  # a MapDataset is deterministic: epoch 0 again


def test_map_and_elements_are_owned_copies(files) -> None:
    kwargs = kwargs_for(True)
    ds = ng.dataset(files[0], **kwargs)
    doubled = list(ds.map(lambda x: x * 2).to_iter_dataset(grain.ReadOptions(num_threads=2)))
    assert_same(doubled, [x * 2 for x in core_epochs(files[0], 1, **kwargs)])
    a = ds[5]
    assert a.flags.writeable
    a[...] = -1  # changing an element in place changes nothing Grain serves later
    np.testing.assert_array_equal(ds[5], core_epochs(files[0], 1, **kwargs)[5])


def test_iterator_state_resumes_exactly(files) -> None:
    kwargs = kwargs_for(True)
    ds = ng.dataset(files, **kwargs)
    expected = core_epochs(files, 3, **kwargs)
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    it = iter(ds.repeat().to_iter_dataset(options))
    for taken in range(80):  # across the end of epoch 0 (63 batches) and into epoch 1
        assert_same([next(it)], [expected[taken]])
        if taken in (9, 62, 63, 79):
            state = it.get_state()
            assert state == {"next_index": taken + 1}
            fresh = iter(ds.repeat().to_iter_dataset(options))
            fresh.set_state(state)
            assert_same([next(fresh) for _ in range(70)], expected[taken + 1 : taken + 71])


def test_pickles_by_path_not_content(files) -> None:
    ds = ng.dataset(files, **kwargs_for("global"))
    ds[40]  # readers, cached windows and buffers exist now: none of them may travel
    data = pickle.dumps(ds)
    assert len(data) < 4096 < os.path.getsize(files[0])
    clone = pickle.loads(data)
    assert_same([clone[i] for i in range(50)], [ds[i] for i in range(50)])


@pytest.mark.slow
def test_mp_prefetch_workers(files) -> None:
    kwargs = kwargs_for(True)
    ds = ng.dataset(files, **kwargs)
    expected = core_epochs(files, 2, **kwargs)
    workers = grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=2)

    # Grain's default slicing (i::W): exactly the order without workers.
    it = iter(ds.repeat(2).to_iter_dataset().mp_prefetch(workers))
    try:
        assert_same(list(it), expected)
    finally:
        it.close()

    # sequential_slice=True: worker i serves whole windows i, i+2, ...: the epoch's batches once.
    pipeline = ds.to_iter_dataset().mp_prefetch(workers, sequential_slice=True)
    it = iter(pipeline)
    try:
        got = list(it)
    finally:
        it.close()
    spec = ds.spec
    shares = [npstream.Batches(spec, share=(i, 2)) for i in range(2)]
    interleaved = []
    parts = [[tuple(np.array(v) for v in x) for x in share] for share in shares]
    while any(parts):
        for part in parts:
            if part:
                interleaved.append(part.pop(0))
    assert_same(got, interleaved)
    rows = np.sort(np.concatenate([y for _, y in got]))
    np.testing.assert_array_equal(rows, np.arange(ROWS))

    # An iterator's state through workers resumes exactly.
    it = iter(ds.repeat().to_iter_dataset().mp_prefetch(workers, sequential_slice=True))
    try:
        for _ in range(21):
            next(it)
        state = it.get_state()
        after = [next(it) for _ in range(30)]
    finally:
        it.close()
    fresh = iter(ds.repeat().to_iter_dataset().mp_prefetch(workers, sequential_slice=True))
    try:
        fresh.set_state(state)
        assert_same([next(fresh) for _ in range(30)], after)
    finally:
        fresh.close()


def test_errors(files) -> None:
    ds = ng.dataset(files[0], **kwargs_for(False))
    for bad in (-1, 1.5, "3"):
        with pytest.raises(UsageError, match="index"):
            ds[bad]
    with pytest.raises(UsageError, match="slice"):
        ds.set_slice(slice(0, 10, 2))
    with pytest.raises(UsageError, match="seed"):
        ng.dataset(files[0], batch_size=4, shuffle=True, num_shards=2, shard_index=0)
    empty = ng.dataset(files[0], batch_size=600, num_shards=2, shard_index=0, drop_remainder=True)
    assert len(empty) == 0
    with pytest.raises(UsageError, match="no batches"):
        empty[0]
