"""Folders of thousands of shards under any descriptor limit (``_storage.local``'s descriptor cache).

Local files keep their descriptors in one bounded, process-wide LRU cache: any number of shards
works under a low ``RLIMIT_NOFILE``, a descriptor evicted and reopened is checked to be the same
file (a replaced, rewritten or removed file is a ``ReadError`` naming it, never other bytes), a
descriptor is never closed under a read in flight, and forked or spawned workers read correctly.
Oracles: the arrays written, and numpy's ``np.load``.
"""

from __future__ import annotations

import errno
import gc
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import assert_rows_equal

import npstream
from npstream._storage import local

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method"
)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_cache(monkeypatch):
    """Shrink the process-wide cache to ``n`` descriptors for one test (restored afterwards)."""
    cache = local._cache

    def shrink(n: int) -> None:
        with cache.lock:
            if not cache.capacity:
                cache.capacity = local.cache_capacity()
            monkeypatch.setattr(cache, "capacity", n)
            cache._trim(n)

    return shrink


def write_shards(folder, count: int, rng: np.random.Generator, width: int = 3) -> np.ndarray:
    """``count`` .npy shards of 0-9 rows; row ``i`` of the whole is ``[i, shard, random...]``."""
    sizes = rng.integers(0, 10, size=count)
    total = int(sizes.sum())
    whole = np.zeros((total, width), dtype="<i8")
    whole[:, 0] = np.arange(total)
    whole[:, 1] = np.repeat(np.arange(count), sizes)
    whole[:, 2:] = rng.integers(-(2**40), 2**40, size=(total, width - 2))
    start = 0
    for shard, size in enumerate(sizes.tolist()):
        np.save(folder / f"part-{shard:05d}.npy", whole[start : start + size])
        start += size
    return whole


# -- the rule ---------------------------------------------------------------------------------------

_CAPACITY_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    out = []
    for soft in (10, 20, 256, 1024, 100000):
        if hard != resource.RLIM_INFINITY and soft > hard:
            continue
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        from npstream._storage.local import cache_capacity
        out.append([soft, cache_capacity()])
    print(json.dumps(out))
    """
)


def test_capacity_is_half_the_descriptor_limit_within_bounds():
    child = subprocess.run(
        [sys.executable, "-c", _CAPACITY_CHILD], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    for soft, capacity in json.loads(child.stdout):
        assert capacity == max(8, min(soft // 2, 65536)), (soft, capacity)


# -- eviction and reopening -------------------------------------------------------------------------


def test_reads_after_eviction_are_exact(tmp_path, rng, small_cache):
    whole = write_shards(tmp_path, 60, rng)
    small_cache(8)
    with npstream.open(str(tmp_path / "part-*.npy")) as source:
        assert len(local._cache.handles) <= 8
        assert_rows_equal(source.read(0, len(whole)), whole)
        for _ in range(50):
            a, b = sorted(int(x) for x in rng.integers(0, len(whole) + 1, size=2))
            assert_rows_equal(source.read(a, b), whole[a:b])
        assert len(local._cache.handles) <= 8


@pytest.mark.parametrize("change", ["replaced", "rewritten", "shrunk", "removed"])
def test_file_changed_between_reopenings_is_a_read_error(tmp_path, small_cache, change):
    expected = np.arange(40, dtype="<f8").reshape(20, 2)
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    small_cache(8)
    source = npstream.open(path)
    assert_rows_equal(source.read(0, 20), expected)
    others = [npstream.open(path) for _ in range(8)]  # evict x.npy's descriptor
    assert source.data._fd == -1
    if change == "replaced":
        np.save(tmp_path / "y.npy", expected + 1)
        os.replace(tmp_path / "y.npy", path)
    elif change == "rewritten":  # same inode, new contents and modification time
        with open(path, "r+b") as f:  # the same bytes, written again: only the time changes
            f.write(f.read())
            os.utime(f.fileno(), ns=(0, 0))
    elif change == "shrunk":
        os.truncate(path, os.path.getsize(path) - 16)
    else:
        os.remove(path)
    with pytest.raises(npstream.ReadError) as info:
        source.read(0, 20)
    message = str(info.value)
    assert path in message
    assert ("removed" if change == "removed" else "changed since it was opened") in message
    for other in others:
        other.close()
    source.close()


def test_cached_descriptor_keeps_reading_the_file_it_opened(tmp_path, small_cache):
    """While its descriptor stays cached, a source reads the file it opened, as before."""
    expected = np.arange(30, dtype="<i4")
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    small_cache(8)
    with npstream.open(path) as source:
        np.save(tmp_path / "y.npy", expected * 0)
        os.replace(tmp_path / "y.npy", path)
        assert source.data._fd >= 0
        assert_rows_equal(source.read(0, 30), expected)


def test_pickled_copy_opens_lazily_and_checks_identity(tmp_path, small_cache):
    expected = np.arange(12, dtype="<u2").reshape(6, 2)
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    source = npstream.open(path)
    copy = pickle.loads(pickle.dumps(source))
    assert copy.data._fd == -1, "unpickling opens nothing until the first read"
    assert_rows_equal(copy.read(0, 6), expected)
    later = pickle.dumps(source)
    np.save(tmp_path / "y.npy", expected[:3])
    os.replace(tmp_path / "y.npy", path)
    with pytest.raises(npstream.ReadError, match="changed since it was opened"):
        pickle.loads(later).read(0, 6)
    source.close()
    copy.close()


@needs_proc
def test_close_and_garbage_collection_release_every_descriptor(tmp_path, rng, small_cache):
    write_shards(tmp_path, 300, rng)
    small_cache(64)
    gc.collect()
    before = open_fds()
    source = npstream.open(str(tmp_path / "part-*.npy"))
    source.read(0, len(source))
    assert 0 < len(open_fds() - before) <= 64
    source.close()
    assert open_fds() - before == set()
    source = npstream.open(str(tmp_path / "part-*.npy"))
    source.read(0, len(source))
    del source
    gc.collect()
    assert open_fds() - before == set()


# -- concurrency ------------------------------------------------------------------------------------


def test_many_threads_with_constant_eviction(tmp_path, rng, small_cache):
    """16 threads read random ranges over 200 shards through 8 descriptors.

    Each read reopens and evicts descriptors other threads are using. Were one closed under a
    read in flight, its number could be reused by another shard's open and the read would return
    that shard's bytes: every row carries its own index, so any mix-up shows.
    """
    whole = write_shards(tmp_path, 200, rng)
    small_cache(8)
    source = npstream.open(str(tmp_path / "part-*.npy"))
    failures: list[str] = []
    barrier = threading.Barrier(16)

    def worker(seed: int) -> None:
        local_rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(200):
            a = int(local_rng.integers(0, len(whole)))
            b = int(local_rng.integers(a, min(len(whole), a + 40) + 1))
            try:
                got = source.read(a, b)
            except BaseException as exc:
                failures.append(f"[{a}, {b}): {type(exc).__name__}: {exc}")
                return
            if not np.array_equal(got, whole[a:b]):
                failures.append(f"[{a}, {b}): wrong values")
                return

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]
    assert len(local._cache.handles) <= 8
    source.close()


def test_close_while_other_threads_read(tmp_path, rng, small_cache):
    """Closing a source under readers: each read either returns exact rows or says "closed"."""
    whole = write_shards(tmp_path, 40, rng)
    small_cache(8)
    source = npstream.open(str(tmp_path / "part-*.npy"))
    outcomes: list[str] = []
    started = threading.Barrier(9)

    def worker() -> None:
        started.wait()
        for _ in range(300):
            try:
                got = source.read(0, len(whole))
            except npstream.ReadError as exc:
                outcomes.append("closed" if "closed" in str(exc) else f"error: {exc}")
                return
            if not np.array_equal(got, whole):
                outcomes.append("wrong values")
                return
        outcomes.append("done")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    source.close()
    for thread in threads:
        thread.join(timeout=120)
    assert set(outcomes) <= {"closed", "done"}, outcomes


# -- processes --------------------------------------------------------------------------------------


def _read_all(source) -> np.ndarray:
    return source.read(0, len(source))


@needs_fork
def test_forked_and_spawned_workers_read_exactly(tmp_path, rng, small_cache):
    whole = write_shards(tmp_path, 120, rng)
    small_cache(16)
    source = npstream.open(str(tmp_path / "part-*.npy"))
    assert_rows_equal(source.read(0, len(whole)), whole)  # descriptors cached before the fork
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            for got in pool.map(_read_all, [source, source, source]):
                assert_rows_equal(got, whole)
    # The parent's descriptors were not closed by the children.
    assert_rows_equal(source.read(0, len(whole)), whole)
    source.close()


_FORK_CHILD_READS_INHERITED = textwrap.dedent(
    """
    import os, sys, threading
    import numpy as np
    import npstream
    from npstream._storage import local

    source = npstream.open(sys.argv[1])
    whole = source.read(0, len(source))
    # Fork while another thread is inside a read, holding a descriptor in use.
    stop = threading.Event()
    def spin():
        while not stop.is_set():
            source.read(0, len(source))
    t = threading.Thread(target=spin); t.start()
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(source.read(0, len(source)), whole)
        users = sum(h.users for h in local._cache.handles)
        source.close()
        os._exit(0 if ok and users == 0 else 3)
    stop.set(); t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert np.array_equal(source.read(0, len(source)), whole), "parent lost its descriptors"
    print("ok")
    """
)


@needs_fork
def test_fork_during_reads_in_other_threads(tmp_path, rng):
    write_shards(tmp_path, 50, rng)
    child = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD_READS_INHERITED, str(tmp_path / "part-*.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr


# -- descriptor limits ------------------------------------------------------------------------------

_APP_HOLDS_DESCRIPTORS = textwrap.dedent(
    """
    import errno, json, os, resource, sys
    import numpy as np
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    import npstream
    from npstream._storage import local

    source = npstream.open(sys.argv[1] + "/part-*.npy")
    whole = source.read(0, len(source))
    held = []
    # The application takes every descriptor left after npstream cached its half.
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    report = {"cached_before": len(local._cache.handles)}
    report["exact_after_trim"] = bool(np.array_equal(source.read(0, len(source)), whole))
    report["capacity_after"] = local._cache.capacity
    # Every descriptor taken while npstream holds none: the error names the file and the fix.
    with local._cache.lock:
        local._cache._trim(0)
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    try:
        source.read(0, len(source))
        report["error"] = None
    except OSError as exc:
        report["error"] = [type(exc).__name__, exc.errno, str(exc)]
    print(json.dumps(report))
    """
)


def test_application_holding_descriptors_shrinks_the_cache(tmp_path, rng):
    write_shards(tmp_path, 100, rng)
    child = subprocess.run(
        [sys.executable, "-c", _APP_HOLDS_DESCRIPTORS, os.fspath(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["cached_before"] == 32  # half of 64
    assert report["exact_after_trim"]
    assert report["capacity_after"] < 32
    name, error_number, message = report["error"]
    assert name == "OSError"
    assert error_number == errno.EMFILE
    assert "part-" in message and "too many open files" in message and "ulimit -n" in message


_STREAM_UNDER_LOW_LIMIT = textwrap.dedent(
    """
    import json, os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    import numpy as np
    import npstream
    import npstream.tf as ntf

    pattern, expected_path = sys.argv[1], sys.argv[2]
    expected = np.load(expected_path)
    report = {}
    for shuffle in (False, True, "global"):
        ds = ntf.dataset(pattern, batch_size=64, shuffle=shuffle, seed=7, memory_budget="2MB")
        orders = []
        for epoch in range(2):
            rows = np.concatenate([batch.numpy() for batch in ds])
            assert np.array_equal(rows, expected[rows[:, 0]]), "rows differ from numpy's"
            assert np.array_equal(np.sort(rows[:, 0]), np.arange(len(expected))), "not every row once"
            orders.append(rows[:, 0])
        report[str(shuffle)] = {
            "epochs_differ": bool(not np.array_equal(orders[0], orders[1])),
            "file_order": bool(np.array_equal(orders[0], np.arange(len(expected)))),
        }
    report["open_fds"] = len(os.listdir("/proc/self/fd"))
    print(json.dumps(report))
    """
)


@pytest.mark.tf
@needs_proc
def test_stream_2100_shards_through_tf_under_a_256_descriptor_limit(tmp_path, rng):
    pytest.importorskip("tensorflow")
    shards = tmp_path / "shards"
    shards.mkdir()
    whole = write_shards(shards, 2100, rng, width=4)
    expected = tmp_path / "expected.npy"
    np.save(expected, whole)
    child = subprocess.run(
        [sys.executable, "-c", _STREAM_UNDER_LOW_LIMIT, str(shards / "part-*.npy"), str(expected)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["False"] == {"epochs_differ": False, "file_order": True}
    for mode in ("True", "global"):
        assert report[mode]["epochs_differ"] and not report[mode]["file_order"], report
    assert report["open_fds"] < 256
