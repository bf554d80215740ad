"""``npstream.NpyWriter`` and ``npstream.save`` against numpy: ``np.save`` writes the same bytes.

The oracle is numpy twice over: the file ``np.save`` writes for the whole array must be
byte-identical to the one the writer builds block by block (header version, padding and data),
and ``np.load`` / ``npstream.open`` must read back the array. Crash safety is checked with real
``SIGKILL``s of a writing subprocess, and write failures with a real file-size limit.
"""

from __future__ import annotations

import gc
import io
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from conftest import NATIVE, SCALAR_DTYPES, STRUCTURED_DTYPES, SWAPPED, assert_values_equal, random_array
from numpy.lib import format as npformat

import npstream

ALL_DTYPES = [(s, s) for s in SCALAR_DTYPES] + list(STRUCTURED_DTYPES.items())
SHAPES = [(0,), (1,), (7,), (5, 3), (4, 0), (3, 2, 2)]


def np_save_bytes(path, array: np.ndarray) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # numpy warns when it picks version 2.0 or 3.0
        np.save(path, array)
    with open(path, "rb") as fp:
        return fp.read()


def read_bytes(path) -> bytes:
    with open(path, "rb") as fp:
        return fp.read()


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if "npstream" in name]


def blocks_of(array: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """``array`` cut into random-sized blocks, empty ones included."""
    cuts = sorted(int(c) for c in rng.integers(0, len(array) + 1, size=3))
    edges = [0, *cuts, len(array)]
    return [array[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize(("name", "spec"), ALL_DTYPES, ids=[n for n, _ in ALL_DTYPES])
def test_blocks_give_the_bytes_np_save_writes(tmp_path, rng, name, spec, byteorder):
    dtype = np.dtype(spec).newbyteorder(byteorder)
    for shape in SHAPES:
        array = random_array(dtype, shape, rng)
        path = tmp_path / "w.npy"
        with npstream.NpyWriter(path, dtype, shape[1:]) as writer:
            for block in blocks_of(array, rng):
                writer.write(block)
            assert writer.rows == len(array)
        assert read_bytes(path) == np_save_bytes(tmp_path / "ref.npy", array), (dtype, shape)
        loaded = np.load(path)
        assert loaded.dtype == dtype  # byte order and layout kept as given
        assert_values_equal(loaded, array)
        if shape[0]:
            with npstream.open(path) as src:
                assert_values_equal(src.read(0, len(src)), array)
    assert leftovers(tmp_path) == []


def test_header_versions(tmp_path, rng):
    cases = {
        (1, 0): np.dtype("<f4"),
        (2, 0): np.dtype([(f"field_{i:05d}", "<f4") for i in range(4000)]),  # header > 65535 bytes
        (3, 0): np.dtype(STRUCTURED_DTYPES["utf8"]),  # a field name outside latin-1
    }
    for version, dtype in cases.items():
        array = random_array(dtype, (3,), rng)
        path = tmp_path / f"v{version[0]}.npy"
        assert npstream.save(path, array) == 3
        with open(path, "rb") as fp:
            assert npformat.read_magic(fp) == version
        offset = len(np_save_bytes(tmp_path / "ref.npy", array)) - array.nbytes
        assert offset % 64 == 0
        assert read_bytes(path) == np_save_bytes(tmp_path / "ref.npy", array)
        assert_values_equal(np.load(path, max_header_size=10**7), array)


def test_header_room_is_reserved_for_any_row_count(tmp_path):
    """The data offset is the same for 0 rows and for the largest count numpy's shape can hold."""
    from npstream._formats.npy_writer import _encode_header, _layout_header

    for dtype, row_shape in [(np.dtype("u1"), ()), (np.dtype(STRUCTURED_DTYPES["nested"]), (2, 3))]:
        version, field, total = _layout_header(dtype, row_shape)
        for rows in (0, 1, 10**9, 2**63 - 1):
            header = _encode_header(dtype, (rows, *row_shape), version, field, total)
            assert len(header) == total
            fp = io.BytesIO(header)
            assert npformat.read_magic(fp) == version
            shape, fortran, got = npformat.read_array_header_1_0(fp)
            assert (shape, fortran, got) == ((rows, *row_shape), False, dtype)
            assert fp.tell() == total


@pytest.mark.parametrize(
    "make",
    [
        lambda a: np.asfortranarray(a),  # Fortran order
        lambda a: a[::-1],  # negative strides
        lambda a: np.repeat(a, 2, axis=0)[::2],  # a strided view
        lambda a: a.astype(a.dtype.newbyteorder(SWAPPED)),  # the other byte order
    ],
    ids=["fortran", "reversed", "strided", "swapped"],
)
def test_rows_are_converted(tmp_path, rng, make):
    expected = random_array(f"{NATIVE}f8", (40, 3, 2), rng)
    rows = make(expected)
    path = tmp_path / "c.npy"
    with npstream.NpyWriter(path, f"{NATIVE}f8", (3, 2)) as writer:
        writer.write(rows)
    assert_values_equal(np.load(path), rows)
    assert np.load(path).dtype == np.dtype(f"{NATIVE}f8")


def test_safe_casts_are_accepted_and_structs_match_by_name(tmp_path, rng):
    path = tmp_path / "c.npy"
    small = rng.integers(-100, 100, size=(6, 2)).astype("i2")
    with npstream.NpyWriter(path, ">i8", (2,)) as writer:
        writer.write(small)
        writer.write(small.astype("f4").astype("i4"))
    np.testing.assert_array_equal(np.load(path), np.concatenate([small, small]))
    struct = np.dtype([("a", "<i4"), ("b", "<f4")])
    wider = np.dtype([("a", ">i8"), ("b", ">f8")])
    rows = random_array(struct, (5,), rng)
    npstream.save(path, [rows], dtype=wider)
    loaded = np.load(path)
    assert loaded.dtype == wider
    np.testing.assert_array_equal(loaded["a"], rows["a"])
    np.testing.assert_array_equal(loaded["b"], rows["b"])


@pytest.mark.parametrize(
    ("dtype", "row_shape", "rows", "words"),
    [
        ("f4", (3,), np.zeros((2, 3), "f8"), ["float64", "float32", "astype"]),
        ("i4", (3,), np.zeros((2, 3), "u4"), ["uint32", "int32"]),
        ("S2", (), np.array([b"abc"]), ["S3", "S2"]),
        ("f4", (3,), np.zeros((2, 4), "f4"), ["(2, 4)", "(k, 3)"]),
        ("f4", (3,), np.zeros(3, "f4"), ["(3,)", "rows[None]"]),
        ("f4", (), np.float32(1), ["shape ()"]),
        ("f4", (), np.zeros((2, 2), "f4"), ["(k,)", "(2, 2)"]),
        ([("a", "i4"), ("b", "i4")], (), np.zeros(2, [("b", "i4"), ("a", "i4")]), ["cannot be written"]),
        ([("a", "i4")], (), np.zeros(2, "i4"), ["int32", "cannot be written"]),
    ],
)
def test_refuses_rows_that_do_not_fit(tmp_path, dtype, row_shape, rows, words):
    path = tmp_path / "r.npy"
    with npstream.NpyWriter(path, dtype, row_shape) as writer:
        with pytest.raises(npstream.UsageError) as info:
            writer.write(rows)
        for word in words:
            assert word in str(info.value)
        assert str(path) in str(info.value)
        assert writer.rows == 0
    assert np.load(path).shape == (0, *row_shape)  # the refused block was not written


@pytest.mark.parametrize(
    ("dtype", "words"),
    [
        (object, ["Python objects"]),
        ("S0", ["zero-size", "'S8'"]),
        ("not-a-dtype", ["not a numpy dtype"]),
    ],
)
def test_refuses_dtypes_npy_cannot_hold(tmp_path, dtype, words):
    with pytest.raises(npstream.UsageError) as info:
        npstream.NpyWriter(tmp_path / "x.npy", dtype, ())
    for word in words:
        assert word in str(info.value)
    assert os.listdir(tmp_path) == []


def test_top_level_subarray_dtype_becomes_dimensions(tmp_path):
    with npstream.NpyWriter(tmp_path / "s.npy", np.dtype(("<i2", (2,))), (3,)) as writer:
        assert writer.dtype == np.dtype("<i2") and writer.row_shape == (3, 2)
        writer.write(np.arange(12, dtype="<i2").reshape(2, 3, 2))
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), np.arange(12).reshape(2, 3, 2))


def test_exception_inside_with_keeps_the_previous_file(tmp_path):
    path = tmp_path / "keep.npy"
    np.save(path, np.arange(5))
    before = read_bytes(path)
    with pytest.raises(KeyError), npstream.NpyWriter(path, "f4", (4,)) as writer:
        writer.write(np.ones((1000, 4), "f4"))
        assert leftovers(tmp_path)  # the rows went to a temporary file
        raise KeyError("boom")
    assert read_bytes(path) == before
    assert leftovers(tmp_path) == []
    with pytest.raises(npstream.UsageError, match="aborted"):
        writer.close()


def test_abort_and_garbage_collection_publish_nothing(tmp_path):
    path = tmp_path / "never.npy"
    writer = npstream.NpyWriter(path, "u1", ())
    writer.write(np.arange(10, dtype="u1"))
    writer.abort()
    assert not path.exists() and leftovers(tmp_path) == []
    writer = npstream.NpyWriter(path, "u1", ())
    writer.write(np.arange(10, dtype="u1"))
    del writer
    gc.collect()
    assert not path.exists() and leftovers(tmp_path) == []


def test_write_after_close_is_refused_and_close_is_idempotent(tmp_path):
    writer = npstream.NpyWriter(tmp_path / "a.npy", "i8", ())
    writer.write(np.arange(3))
    writer.close()
    writer.close()
    assert writer.closed
    with pytest.raises(npstream.UsageError, match="closed"):
        writer.write(np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))


def test_replacing_keeps_permissions_and_follows_symlinks(tmp_path):
    target = tmp_path / "real.npy"
    np.save(target, np.zeros(2))
    os.chmod(target, 0o640)
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    npstream.save(link, np.arange(4.0))
    assert link.is_symlink()
    np.testing.assert_array_equal(np.load(target), np.arange(4.0))
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_missing_directory_and_directory_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        npstream.NpyWriter(tmp_path / "no" / "x.npy", "f4", ())
    assert str(tmp_path / "no") in str(info.value)
    with pytest.raises(IsADirectoryError) as info2:
        npstream.NpyWriter(tmp_path, "f4", ())
    assert str(tmp_path) in str(info2.value)


# -- never overwriting an input ----------------------------------------------------------------
def test_refuses_a_path_an_open_source_reads(tmp_path):
    path = tmp_path / "in.npy"
    np.save(path, np.arange(100.0).reshape(25, 4))
    before = read_bytes(path)
    with npstream.open(path) as src:
        with pytest.raises(npstream.UsageError) as info:
            npstream.save(path, src)
        assert "never overwrites its inputs" in str(info.value)
        hard = tmp_path / "hard.npy"
        os.link(path, hard)  # another name for the same file
        with pytest.raises(npstream.UsageError, match="this process has open"):
            npstream.NpyWriter(hard, "f4", ())
        with pytest.raises(npstream.UsageError):  # any source: not just the one being saved
            npstream.save(path, [np.zeros((1, 4))])
        npstream.save(tmp_path / "copy.npy", src)
    assert read_bytes(path) == before
    np.testing.assert_array_equal(np.load(tmp_path / "copy.npy"), np.load(path))
    assert leftovers(tmp_path) == []


def test_refuses_a_source_file_even_after_the_source_closed(tmp_path):
    shards = [tmp_path / f"s{i}.npy" for i in range(3)]
    for i, shard in enumerate(shards):
        np.save(shard, np.full((4, 2), i, "i4"))
    src = npstream.open(str(tmp_path / "s*.npy"))
    src.close()
    with pytest.raises(npstream.UsageError, match=r"s1\.npy"):
        npstream.save(shards[1], src)
    assert np.load(shards[1]).tolist() == [[1, 1]] * 4


def test_refuses_a_path_opened_while_writing(tmp_path):
    path = tmp_path / "late.npy"
    np.save(path, np.arange(3))
    before = read_bytes(path)
    writer = npstream.NpyWriter(path, "i8", ())
    writer.write(np.arange(10))
    with open(path, "rb"), pytest.raises(npstream.UsageError, match="call close\\(\\) again"):
        writer.close()
    assert read_bytes(path) == before and not writer.closed  # the rows are kept
    writer.close()  # the reader is gone now
    np.testing.assert_array_equal(np.load(path), np.arange(10))
    assert leftovers(tmp_path) == []


# -- save() ---------------------------------------------------------------------------------------
def test_save_from_sources_of_every_kind(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    array = random_array(">i4", (300, 5), rng)
    np.save(tmp_path / "a.npy", array[:100])
    np.save(tmp_path / "b.npy", array[100:])
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=array, chunks=(7, 5), compression="gzip")
    for name, src in {
        "shards": npstream.open(str(tmp_path / "[ab].npy")),
        "hdf5": npstream.open(tmp_path / "d.h5", key="x"),
    }.items():
        with src:
            out = tmp_path / f"{name}.npy"
            assert npstream.save(out, src) == 300
        loaded = np.load(out)
        assert loaded.dtype == np.dtype("=i4")  # sources deliver native byte order
        assert_values_equal(loaded, array)


def test_save_from_iterables(tmp_path, rng):
    array = random_array("<c8", (50, 2), rng)
    assert npstream.save(tmp_path / "g.npy", (array[i : i + 7] for i in range(0, 50, 7))) == 50
    assert_values_equal(np.load(tmp_path / "g.npy"), array)
    assert npstream.save(tmp_path / "e.npy", [], dtype="u2", row_shape=(3,)) == 0
    assert np.load(tmp_path / "e.npy").shape == (0, 3)
    with pytest.raises(npstream.UsageError, match="dtype= and row_shape="):
        npstream.save(tmp_path / "none.npy", iter([]))
    with pytest.raises(npstream.UsageError, match="not a path"):
        npstream.save(tmp_path / "p.npy", str(tmp_path / "g.npy"))
    with pytest.raises(npstream.UsageError, match="0-d"):
        npstream.save(tmp_path / "z.npy", np.float32(3))

    def failing():
        yield array[:10]
        raise RuntimeError("the producer failed")

    np.save(tmp_path / "old.npy", array)
    with pytest.raises(RuntimeError, match="producer"):
        npstream.save(tmp_path / "old.npy", failing())
    assert_values_equal(np.load(tmp_path / "old.npy"), array)
    assert leftovers(tmp_path) == []


# -- crashes, faults, memory (subprocesses) -----------------------------------------------------
WRITER_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import npstream
    path, blocks, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with npstream.NpyWriter(path, "<i8", (1024,)) as w:
        for i in range(blocks):
            w.write(np.full((64, 1024), i, "<i8"))
            print(i, flush=True)
            time.sleep(pause)
    print("closed", flush=True)
    """
)


def test_sigkill_mid_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "data.npy"
    old = np.arange(12.0)
    np.save(path, old)
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER_CHILD, str(path), "1000", "0.01"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(5):  # five blocks (2.5 MiB) are in the temporary file
        child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    np.testing.assert_array_equal(np.load(path), old)
    partial = [tmp_path / name for name in leftovers(tmp_path)]
    assert len(partial) == 1 and partial[0].stat().st_size >= 5 * 64 * 1024 * 8
    with pytest.raises(ValueError):  # the unfinished file is not a .npy anything accepts
        np.load(partial[0])
    with pytest.raises(npstream.FormatError):
        npstream.open(partial[0])


def test_sigkill_at_random_moments_gives_old_or_complete_file(tmp_path):
    """Whenever the kill lands (writing, fixing the header, renaming), path is old or complete."""
    path = tmp_path / "data.npy"
    old = np.arange(7)
    rng = np.random.default_rng(1)
    outcomes = set()
    for trial in range(8):
        np.save(path, old)
        child = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(path), "8", "0"])
        if trial:
            time.sleep(float(rng.uniform(0.0, 0.8)))
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=120)
        loaded = np.load(path)
        if loaded.shape == old.shape:
            np.testing.assert_array_equal(loaded, old)
            outcomes.add("old")
        else:
            assert loaded.shape == (8 * 64, 1024)
            np.testing.assert_array_equal(loaded[::64, 0], np.arange(8))
            outcomes.add("new")
        for name in leftovers(tmp_path):
            os.unlink(tmp_path / name)
    assert "new" in outcomes  # trial 0 lets the child finish


def test_write_failure_removes_the_partial_file(tmp_path):
    """A real write error (file size limit, EFBIG) inside the with block: nothing is published."""
    path = tmp_path / "big.npy"
    np.save(path, np.arange(3))
    code = textwrap.dedent(
        """
        import resource, signal, sys
        import numpy as np
        import npstream
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            with npstream.NpyWriter(sys.argv[1], "f8", (1024,)) as w:
                for _ in range(10):
                    w.write(np.zeros((64, 1024)))
        except OSError as exc:
            print(type(exc).__name__, exc)
        try:
            w.write(np.zeros((1, 1024)))
        except npstream.UsageError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    assert "writing rows failed" in result.stdout and str(path) in result.stdout
    assert "the writer is aborted" in result.stdout  # no later block could land in its place
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert leftovers(tmp_path) == []


def test_memory_stays_bounded_when_converting(tmp_path):
    """Writing a 256 MiB byte-swapped array converts through a 4 MiB buffer, not a full copy."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import npstream

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

        rows = np.ones((1 << 15, 1024), ">f8")  # 256 MiB, not native
        rows = rows[:, ::1]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        npstream.save(sys.argv[1], rows, dtype="<f8")
        print((status("VmHWM") - base) / 2**20)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert float(result.stdout) < 32, result.stdout
    assert os.path.getsize(tmp_path / "m.npy") == 128 + (1 << 28)
