"""Faults while reading: files that shrink, failing I/O, thousands of sources, many threads.

npstream reads with ``os.preadv`` rather than through a memory map, so a file truncated under a
reader is an ordinary exception naming the file and offset (a map would kill the process with
SIGBUS, shown below for contrast); I/O errors keep their type and errno; opening, reading and
closing leave no file descriptor or thread behind; and reads from many threads at once, or from
two sources over one file, give exactly numpy's values.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from fuzz_helpers import same_values

import npstream

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


def data_start(path: str, array: np.ndarray) -> int:
    """Where the data of a file ``np.save`` wrote from ``array`` starts: right after the header."""
    return os.path.getsize(path) - array.nbytes


# -- a file truncated under a reader --------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
def test_truncated_while_open_raises_read_error(tmp_path, order):
    expected = np.arange(1000 * 64, dtype=">f4").reshape(1000, 64)  # big-endian: the swap path too
    path = os.fspath(tmp_path / "shrinking.npy")
    np.save(path, np.asfortranarray(expected) if order == "F" else expected)
    start = data_start(path, expected)
    row_bytes = 64 * 4
    with npstream.open(path) as source:
        assert same_values(source.read(0, 1000), expected)
        kept_rows = 300
        os.truncate(path, start + kept_rows * row_bytes + 100)  # 300 rows and part of the next

        with pytest.raises(npstream.ReadError) as info:
            source.read(500, 600)
        error = info.value
        assert isinstance(error, OSError) and isinstance(error, npstream.NpstreamError)
        message = str(error)
        assert path in message
        assert "truncated" in message
        assert str(start + kept_rows * row_bytes + 100) in message, "the size the file has now"
        if order == "C":
            assert f"at offset {start + 500 * row_bytes}" in message

        # A range across the new end fails too: never a partly filled block.
        out = np.full((50, 64), 7.0, dtype=source.dtype)
        with pytest.raises(npstream.ReadError):
            source.read(280, 330, out=out)

        if order == "C":
            # Rows still wholly in the file read correctly; the source is still usable.
            assert same_values(source.read(0, kept_rows), expected[:kept_rows])
        else:
            # Fortran order needs every column's slice, so every read now reaches past the end.
            with pytest.raises(npstream.ReadError):
                source.read(0, 1)


_TRUNCATE_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import npstream

    path = sys.argv[1]
    expected = np.arange(4096 * 256, dtype="<f4").reshape(4096, 256)
    np.save(path, expected)
    source = npstream.open(path)
    assert (source.read(0, 4096) == expected).all()
    data_start = os.path.getsize(path) - expected.nbytes
    os.truncate(path, data_start + 1000 * 1024)
    report = {}
    try:
        block = source.read(2000, 2100)
        report["returned"] = block[:2, :4].tolist()
    except BaseException as exc:
        report["error"] = [type(exc).__name__, isinstance(exc, npstream.ReadError), str(exc)]
    report["still_reads"] = bool((source.read(0, 1000) == expected[:1000]).all())
    report["data_start"] = data_start
    print(json.dumps(report))
    """
)


def test_truncated_while_open_process_survives(tmp_path):
    """In a separate process: the read fails with an exception and the process carries on."""
    path = os.fspath(tmp_path / "shrinking.npy")
    child = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_CHILD, path], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, (child.returncode, child.stderr)
    report = json.loads(child.stdout)
    assert "returned" not in report, "a read past the end returned data"
    name, is_read_error, message = report["error"]
    assert is_read_error, f"{name}: {message}"
    assert path in message
    assert f"offset {report['data_start'] + 2000 * 1024}" in message
    assert report["still_reads"]


_MMAP_CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np

    path = sys.argv[1]
    np.save(path, np.arange(1 << 20, dtype="<f4"))
    mapped = np.load(path, mmap_mode="r")
    os.truncate(path, 4096)
    print(float(mapped[-1]))  # a page past the new end of the file
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGBUS on a truncated map: Linux")
def test_contrast_mmap_dies_with_sigbus_on_truncation(tmp_path):
    """What npstream avoids: numpy's memory map of a truncated file kills the process."""
    path = os.fspath(tmp_path / "mapped.npy")
    child = subprocess.run(
        [sys.executable, "-c", _MMAP_CHILD, path], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGBUS == -7, (child.returncode, child.stderr)


def test_file_replaced_after_open_keeps_reading_the_original(tmp_path):
    """The source holds its descriptor: replacing the path does not change what it reads."""
    expected = np.arange(100, dtype="<i8")
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    with npstream.open(path) as source:
        np.save(tmp_path / "y.npy", expected[:3] * 0)
        os.replace(tmp_path / "y.npy", path)
        assert same_values(source.read(0, 100), expected)


# -- I/O errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_number", [errno.EIO, errno.ENXIO, errno.ESTALE])
def test_io_error_keeps_its_type_errno_and_message(tmp_path, monkeypatch, error_number):
    path = os.fspath(tmp_path / "disk.npy")
    expected = np.arange(400, dtype="<f8").reshape(100, 4)
    np.save(path, expected)
    source = npstream.open(path)
    start = data_start(path, expected)
    original = OSError(error_number, os.strerror(error_number))

    def failing_preadv(fd, buffers, offset, *args):
        raise original

    monkeypatch.setattr(os, "preadv", failing_preadv)
    with pytest.raises(OSError) as info:
        source.read(10, 20)
    error = info.value
    assert isinstance(error, npstream.ReadError)
    assert error.errno == error_number
    assert os.strerror(error_number) in str(error)
    assert path in str(error)
    assert f"offset {start + 10 * 32}" in str(error)
    assert error.__cause__ is original
    monkeypatch.undo()
    assert same_values(source.read(10, 20), expected[10:20])
    source.close()


def test_io_error_in_one_shard_names_that_shard(tmp_path, monkeypatch):
    paths = [os.fspath(tmp_path / f"part-{i}.npy") for i in range(3)]
    for i, path in enumerate(paths):
        np.save(path, np.full((10, 2), i, dtype="<i4"))
    source = npstream.open(paths)
    bad_fd = source.parts[1].data._fd
    real_preadv = os.preadv

    def preadv(fd, buffers, offset, *args):
        if fd == bad_fd:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_preadv(fd, buffers, offset, *args)

    monkeypatch.setattr(os, "preadv", preadv)
    assert same_values(source.read(0, 10), np.zeros((10, 2), "<i4"))
    with pytest.raises(npstream.ReadError) as info:
        source.read(5, 25)
    assert info.value.errno == errno.EIO
    assert paths[1] in str(info.value)
    assert paths[0] not in str(info.value)
    source.close()


def test_short_reads_are_retried_not_returned(tmp_path, monkeypatch):
    """preadv may return fewer bytes than asked (signals, network file systems): keep reading."""
    expected = np.arange(5000, dtype="<u2")
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    real_preadv = os.preadv
    calls = []

    def dribbling(fd, buffers, offset, *args):
        calls.append(offset)
        small = [memoryview(buffers[0])[:7]]
        return real_preadv(fd, small, offset, *args)

    monkeypatch.setattr(os, "preadv", dribbling)
    with npstream.open(path) as source:
        calls.clear()  # the header was read through the same calls
        assert same_values(source.read(3, 4000), expected[3:4000])
    assert len(calls) == -(-3997 * 2 // 7)


def test_read_after_close_is_an_error(tmp_path):
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, np.arange(10.0))
    source = npstream.open(path)
    source.close()
    with pytest.raises(npstream.ReadError) as info:
        source.read(0, 5)
    assert path in str(info.value) and "closed" in str(info.value)


@pytest.mark.parametrize("layout", ["contiguous", "gzip", "lzf"])
def test_hdf5_read_error_surfaces_as_os_error(tmp_path, monkeypatch, layout):
    """Contiguous and gzip chunks are read with os.preadv; lzf falls back to h5py's reads."""
    h5py = pytest.importorskip("h5py")
    path = os.fspath(tmp_path / "x.h5")
    with h5py.File(path, "w") as f:
        options = {"contiguous": {}, "gzip": {"compression": "gzip"}, "lzf": {"compression": "lzf"}}
        chunks = None if layout == "contiguous" else (5,)
        f.create_dataset("x", data=np.arange(20.0), chunks=chunks, **options[layout])
    with npstream.open(path, key="x") as source:
        assert source.mode == ("h5py" if layout == "lzf" else layout.replace("gzip", "chunks"))

        def failing(*args, **kwargs):
            raise OSError(errno.EIO, "Can't read data (simulated)")

        if layout == "lzf":
            monkeypatch.setattr(h5py.Dataset, "read_direct", failing)
        else:
            monkeypatch.setattr(os, "preadv", failing)
        with pytest.raises(OSError) as info:
            source.read(0, 5)
        assert isinstance(info.value, npstream.ReadError)
        assert info.value.errno == errno.EIO
        assert path in str(info.value) and "Can't read data (simulated)" in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        monkeypatch.undo()
        assert same_values(source.read(0, 20), np.arange(20.0))


# -- nothing left behind ----------------------------------------------------------------------------


def _open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@needs_proc
def test_two_thousand_sources_leave_no_fd_or_thread(tmp_path):
    h5py = pytest.importorskip("h5py")
    rows = np.arange(64 * 8, dtype="<f4").reshape(64, 8)
    npy = os.fspath(tmp_path / "a.npy")
    np.save(npy, rows)
    fortran = os.fspath(tmp_path / "f.npy")
    np.save(fortran, np.asfortranarray(rows.astype(">f8")))
    raw = os.fspath(tmp_path / "a.raw")
    rows.tofile(raw)
    npz = os.fspath(tmp_path / "a.npz")
    np.savez(npz, x=rows, y=rows[:3])
    h5 = os.fspath(tmp_path / "a.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("x", data=rows, chunks=(8, 8))
    truncated = os.fspath(tmp_path / "cut.npy")
    np.save(truncated, rows)
    os.truncate(truncated, os.path.getsize(truncated) - 10)
    shards = [npy, os.fspath(tmp_path / "b.npy")]
    np.save(shards[1], rows[:5])

    openers = [
        lambda: npstream.open(npy),
        lambda: npstream.open(fortran),
        lambda: npstream.open(raw, dtype="<f4", shape=(-1, 8)),
        lambda: npstream.open(npz, key="x"),
        lambda: npstream.open(shards),
        lambda: pickle.loads(pickle.dumps(npstream.open(npy))),
    ]
    failing = [
        lambda: npstream.open(truncated),
        lambda: npstream.open(npz, key="nope"),
        lambda: npstream.open([npy, truncated]),
        lambda: npstream.open(h5, key="nope"),
    ]
    gc.collect()
    # Compared as sets of what is new, so threads or files other tests leave and later close
    # cannot make this fail or pass.
    fds_before, threads_before = set(_open_fds()), set(threading.enumerate())
    for i in range(2000):
        opener = openers[i % len(openers)] if i % 50 else (lambda: npstream.open(h5, key="x"))
        source = opener()
        block = source.read(i % 60, i % 60 + 4)
        assert block[0, 0] == rows[i % 60, 0]
        if i % 2:
            source.close()
        del source, block  # the other half relies on the finalizer alone
        if i % 10 == 0:
            with pytest.raises((npstream.NpstreamError, OSError)):
                failing[(i // 10) % len(failing)]()
    gc.collect()
    assert set(_open_fds()) - fds_before == set(), "file descriptors left open"
    assert set(threading.enumerate()) - threads_before == set(), "threads left running"


# -- concurrency ------------------------------------------------------------------------------------


def _hammer(read, expected: np.ndarray, threads: int = 16, reads_each: int = 150) -> None:
    """``threads`` threads, started together, each reading random ranges; all must match numpy."""
    barrier = threading.Barrier(threads)
    failures: list[str] = []
    n = len(expected)

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(reads_each):
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, min(n, a + 64) + 1))
            try:
                got = read(a, b, rng)
            except BaseException as exc:  # reported below, with the range
                failures.append(f"[{a}, {b}): {type(exc).__name__}: {exc}")
                return
            if not same_values(got, expected[a:b]):
                failures.append(f"[{a}, {b}): wrong values")
                return

    pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in pool), "a reader hung"
    assert not failures, failures[:5]


@pytest.mark.parametrize(
    ("dtype", "order"),
    [("<f8", "C"), (">i4", "C"), ("<f4", "F"), ([("a", ">i2"), ("b", "<f8", (2,))], "C")],
    ids=["native", "big-endian", "fortran", "structured"],
)
def test_many_threads_reading_one_source(tmp_path, dtype, order):
    rng = np.random.default_rng(1)
    expected = np.zeros((500, 6), dtype=dtype)
    expected.view(np.uint8)[...] = rng.integers(0, 256, size=expected.view(np.uint8).shape)
    path = os.fspath(tmp_path / "shared.npy")
    np.save(path, np.asfortranarray(expected) if order == "F" else expected)
    expected = np.load(path)  # what numpy makes of those bytes
    with npstream.open(path) as source:
        def read(a: int, b: int, rng: np.random.Generator) -> np.ndarray:
            if rng.integers(2):
                return source.read(a, b)
            out = np.empty((b - a, *source.shape[1:]), dtype=source.dtype)
            assert source.read(a, b, out=out) is out
            return out

        _hammer(read, expected)


def test_many_threads_reading_one_hdf5_source(tmp_path):
    h5py = pytest.importorskip("h5py")
    expected = np.arange(300 * 5, dtype="<i8").reshape(300, 5)
    path = os.fspath(tmp_path / "shared.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=expected, chunks=(7, 5), compression="gzip")
    with npstream.open(path, key="x") as source:
        _hammer(lambda a, b, rng: source.read(a, b), expected, threads=8, reads_each=40)


def test_two_sources_over_one_file_at_once(tmp_path):
    expected = np.arange(2000 * 3, dtype=">u4").reshape(2000, 3)
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    first, second = npstream.open(path), npstream.open(path)
    assert first.data._fd != second.data._fd  # independent descriptors, no shared file position
    _hammer(lambda a, b, rng: (first if rng.integers(2) else second).read(a, b), expected)
    first.close()  # closing one leaves the other working
    assert same_values(second.read(0, 2000), expected)
    second.close()


def test_concat_over_the_same_file_twice(tmp_path):
    expected = np.arange(50 * 4, dtype="<f4").reshape(50, 4)
    path = os.fspath(tmp_path / "x.npy")
    np.save(path, expected)
    with npstream.open([path, path]) as source:
        both = np.concatenate([expected, expected])
        _hammer(lambda a, b, rng: source.read(a, b), both, threads=8, reads_each=50)
