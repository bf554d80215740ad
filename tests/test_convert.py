"""``npstream convert``: every input layout to a C-order ``.npy`` (or shards), checked against numpy/h5py.

The oracle for the output is the input as numpy (``np.load``, ``np.fromfile``) or h5py reads it,
in native byte order: the converted file must equal ``np.save`` of that array byte for byte.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
import textwrap
import zipfile

import numpy as np
import pytest
from conftest import SCALAR_DTYPES, STRUCTURED_DTYPES, assert_values_equal, random_array

import npstream
from npstream._formats.layout import native_dtype
from npstream._tools.cli import main
from npstream._tools.convert import shard_bounds, shard_name

h5py = pytest.importorskip("h5py")
# numpy warns when np.save picks header version 3.0 (utf-8 field names); that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Stored array in format:UserWarning")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_exit(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["convert", *map(str, args)])
    assert info.value.code == 2
    return capsys.readouterr().err


def native(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.astype(native_dtype(array.dtype)))


def saved_bytes(tmp_path, array: np.ndarray) -> bytes:
    """What np.save writes for ``array`` in native byte order and C order: the expected output."""
    path = tmp_path / "expected-oracle.npy"
    np.save(path, native(array))
    data = path.read_bytes()
    path.unlink()
    return data


def assert_saved(tmp_path, path, array: np.ndarray) -> None:
    """``path`` is what np.save writes for ``array`` (native, C order): same header, same values,
    and the same bytes wherever the dtype has no padding (struct padding bytes are undefined)."""
    expected = saved_bytes(tmp_path, array)
    got = path.read_bytes()
    offset = len(expected) - array.nbytes
    assert got[:offset] == expected[:offset]
    assert len(got) == len(expected)
    assert_values_equal(np.load(path), array)
    if array.dtype.names is None:
        assert got == expected


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if "npstream" in name]


def fingerprint(paths) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns) for p in paths}


# -- layouts ----------------------------------------------------------------------------------
DTYPES = [(s, s) for s in SCALAR_DTYPES] + list(STRUCTURED_DTYPES.items())


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize(("name", "spec"), DTYPES, ids=[n for n, _ in DTYPES])
def test_npy_of_every_dtype_and_order(tmp_path, capsys, rng, name, spec, byteorder):
    dtype = np.dtype(spec).newbyteorder(byteorder)
    for i, (shape, order) in enumerate([((9, 3, 2), "F"), ((9, 4), "C"), ((0, 2), "C"), ((5,), "F")]):
        array = random_array(dtype, shape, rng, order=order)
        src, dst = tmp_path / f"in{i}.npy", tmp_path / f"out{i}.npy"
        np.save(src, array)
        assert run(capsys, src, dst) == (0, "", "")  # quiet when stderr is not a terminal
        assert_saved(tmp_path, dst, array)
    assert leftovers(tmp_path) == []


def test_fortran_input_becomes_c_order(tmp_path, capsys, rng):
    array = np.asfortranarray(random_array(">f4", (3000, 70), rng))
    np.save(tmp_path / "f.npy", array)
    assert run(capsys, tmp_path / "f.npy", tmp_path / "c.npy")[0] == 0
    with npstream.open(tmp_path / "c.npy") as src:
        assert src.layout.order == "C" and src.layout.dtype == np.dtype("=f4")
    assert (tmp_path / "c.npy").read_bytes() == saved_bytes(tmp_path, array)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [">i4", "<f8", STRUCTURED_DTYPES["nested"]], ids=["i4be", "f8", "nested"])
def test_compressed_npz_members(tmp_path, capsys, rng, order, dtype):
    arrays = {
        "x": random_array(np.dtype(dtype), (700, 3, 2), rng, order=order),
        "y": np.arange(5),
    }
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    for key in ("x", "y"):
        dst = tmp_path / f"{key}.npy"
        assert run(capsys, tmp_path / "d.npz", dst, "--key", key)[0] == 0
        assert_saved(tmp_path, dst, arrays[key])
    assert leftovers(tmp_path) == []  # the Fortran member's scratch file is gone too


def test_the_refusal_message_gives_a_command_that_works(tmp_path, monkeypatch):
    array = np.arange(60, dtype="<i2").reshape(20, 3)
    np.savez_compressed(tmp_path / "d.npz", images=array, other=np.zeros(3))
    with pytest.raises(npstream.FormatError) as info:
        npstream.open(tmp_path / "d.npz", key="images")
    command = re.search(r"`(npstream convert [^`]+)`", str(info.value))
    assert command is not None, str(info.value)
    words = shlex.split(command.group(1))
    assert main(words[1:]) == 0
    out = words[3]
    np.testing.assert_array_equal(np.load(out), array)
    with npstream.open(out) as src:  # and npstream now streams it
        np.testing.assert_array_equal(src.read(0, 20), array)


def test_uncompressed_npz_member(tmp_path, capsys, rng):
    array = random_array(">c16", (40, 2), rng)
    np.savez(tmp_path / "u.npz", a=array, b=np.zeros(2))
    assert run(capsys, tmp_path / "u.npz", tmp_path / "a.npy", "--key", "a")[0] == 0
    assert (tmp_path / "a.npy").read_bytes() == saved_bytes(tmp_path, array)
    code, _, err = run(capsys, tmp_path / "u.npz", tmp_path / "b.npy")
    assert code == 1 and err.startswith("npstream: ") and "'a'" in err and "'b'" in err


def test_hdf5_datasets(tmp_path, capsys, rng):
    array = random_array(">i8", (1001, 6), rng)
    strings = random_array("S4", (50,), rng)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("g/chunked", data=array, chunks=(100, 6), compression="gzip")
        f.create_dataset("s", data=strings)
    assert run(capsys, tmp_path / "d.h5", tmp_path / "c.npy", "--key", "g/chunked")[0] == 0
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert (tmp_path / "c.npy").read_bytes() == saved_bytes(tmp_path, f["g/chunked"][()])
        assert run(capsys, tmp_path / "d.h5", tmp_path / "s.npy", "--key", "s")[0] == 0
        np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), f["s"][()])


def test_raw_binary(tmp_path, capsys, rng):
    array = random_array(">i2", (30, 4), rng)
    with open(tmp_path / "r.bin", "wb") as fp:
        fp.write(b"HEADER16BYTES..!")
        fp.write(np.asfortranarray(array).tobytes(order="F"))
    args = ["--dtype", ">i2", "--shape", "-1,4", "--offset", "16", "--order", "F"]
    assert run(capsys, tmp_path / "r.bin", tmp_path / "r.npy", *args)[0] == 0
    assert (tmp_path / "r.npy").read_bytes() == saved_bytes(tmp_path, array)


# -- merging and splitting -----------------------------------------------------------------------
def test_glob_of_shards_merges_in_name_order(tmp_path, capsys, rng):
    array = random_array("<f4", (100, 3), rng)
    (tmp_path / "in").mkdir()
    for i, (a, b) in enumerate([(0, 10), (10, 55), (55, 55), (55, 100)]):
        np.save(tmp_path / "in" / f"s{i}.npy", array[a:b])
    assert run(capsys, tmp_path / "in" / "s*.npy", tmp_path / "all.npy")[0] == 0
    assert (tmp_path / "all.npy").read_bytes() == saved_bytes(tmp_path, array)


def test_glob_of_compressed_npz_members(tmp_path, capsys, rng):
    array = random_array(">u2", (90, 2), rng)
    for i in range(3):
        np.savez_compressed(tmp_path / f"p{i}.npz", x=array[i * 30 : (i + 1) * 30], junk=np.zeros(1))
    assert run(capsys, tmp_path / "p*.npz", tmp_path / "x.npy", "--key", "x")[0] == 0
    assert (tmp_path / "x.npy").read_bytes() == saved_bytes(tmp_path, array)


def test_split_by_count_and_by_size(tmp_path, capsys, rng):
    array = random_array("<i8", (10, 4), rng)  # 32-byte rows
    np.save(tmp_path / "a.npy", array)
    assert run(capsys, tmp_path / "a.npy", tmp_path / "n", "--shards", "3")[0] == 0
    names = sorted(os.listdir(tmp_path / "n"))
    assert names == ["part-00000.npy", "part-00001.npy", "part-00002.npy"]
    assert [len(np.load(tmp_path / "n" / n)) for n in names] == [3, 3, 4]
    assert run(capsys, tmp_path / "a.npy", tmp_path / "s", "--shard-size", "100")[0] == 0
    names = sorted(os.listdir(tmp_path / "s"))
    assert [len(np.load(tmp_path / "s" / n)) for n in names] == [3, 3, 3, 1]  # 3 rows = 96 B <= 100
    for folder in ("n", "s"):
        with npstream.open(str(tmp_path / folder / "*.npy")) as src:
            np.testing.assert_array_equal(src.read(0, len(src)), array)
        for name in os.listdir(tmp_path / folder):
            raw = (tmp_path / folder / name).read_bytes()
            assert raw == saved_bytes(tmp_path, np.load(tmp_path / folder / name))
    assert leftovers(tmp_path) == []


def test_resharding_a_glob(tmp_path, capsys, rng):
    array = random_array("<f2", (1000, 8), rng)
    (tmp_path / "old").mkdir()
    for i in range(7):
        np.save(tmp_path / "old" / f"x{i}.npy", array[i * 1000 // 7 : (i + 1) * 1000 // 7])
    assert run(capsys, tmp_path / "old" / "*.npy", tmp_path / "new", "--shard-size", "4KB")[0] == 0
    sizes = [os.path.getsize(p) - 128 for p in sorted(glob.glob(str(tmp_path / "new" / "*.npy")))]
    assert sizes[:-1] == [4096] * (len(sizes) - 1) and 0 < sizes[-1] <= 4096
    with npstream.open(str(tmp_path / "new" / "*.npy")) as src:
        np.testing.assert_array_equal(src.read(0, len(src)), array)


def test_shard_plans():
    assert shard_bounds(10, 8, None, 3) == [0, 3, 6, 10]
    assert shard_bounds(10, 8, 16, None) == [0, 2, 4, 6, 8, 10]
    assert shard_bounds(10, 8, 5, None) == list(range(11))  # at least one row per shard
    assert shard_bounds(0, 8, 16, None) == [0, 0]  # an empty array: one empty shard
    assert shard_bounds(7, 0, 16, None) == [0, 7]  # zero-size rows: one shard
    with pytest.raises(npstream.UsageError, match="3 rows into 4"):
        shard_bounds(3, 8, None, 4)
    names = [shard_name(i, 100_001) for i in range(100_001)]
    assert names == sorted(names) and names[0] == "part-000000.npy"
    assert shard_name(3, 10) == "part-00003.npy"


def test_empty_arrays(tmp_path, capsys):
    np.save(tmp_path / "e.npy", np.zeros((0, 3), "f4"))
    assert run(capsys, tmp_path / "e.npy", tmp_path / "e2.npy")[0] == 0
    assert np.load(tmp_path / "e2.npy").shape == (0, 3)
    assert run(capsys, tmp_path / "e.npy", tmp_path / "es", "--shard-size", "1MB")[0] == 0
    assert os.listdir(tmp_path / "es") == ["part-00000.npy"]
    assert np.load(tmp_path / "es" / "part-00000.npy").shape == (0, 3)


# -- safety and errors ---------------------------------------------------------------------------
def test_refuses_to_overwrite_its_input(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(10))
    before = fingerprint([tmp_path / "a.npy"])
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, tmp_path / "a.npy", tmp_path / "a.npy", *extra)
        assert code == 1 and err.startswith("npstream: ") and "never overwrites its inputs" in err
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "part-00000.npy", np.arange(4))
    code, _, err = run(capsys, tmp_path / "d" / "*.npy", tmp_path / "d", "--shards", "2", "--force")
    assert code == 1 and "holds the input" in err
    assert fingerprint([tmp_path / "a.npy"]) == before
    assert np.load(tmp_path / "d" / "part-00000.npy").tolist() == [0, 1, 2, 3]
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "d") == []


def test_existing_destination_needs_force(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(10))
    np.save(tmp_path / "b.npy", np.arange(3))
    code, _, err = run(capsys, tmp_path / "a.npy", tmp_path / "b.npy")
    assert code == 1 and "already exists" in err and "--force" in err
    assert np.load(tmp_path / "b.npy").tolist() == [0, 1, 2]
    assert run(capsys, tmp_path / "a.npy", tmp_path / "b.npy", "--force")[0] == 0
    assert np.load(tmp_path / "b.npy").tolist() == list(range(10))
    # shards: --force replaces a folder of shards, never a folder holding anything else
    assert run(capsys, tmp_path / "a.npy", tmp_path / "s", "--shards", "5")[0] == 0
    code, _, err = run(capsys, tmp_path / "a.npy", tmp_path / "s", "--shards", "2")
    assert code == 1 and "already exists" in err
    assert run(capsys, tmp_path / "a.npy", tmp_path / "s", "--shards", "2", "--force")[0] == 0
    assert sorted(os.listdir(tmp_path / "s")) == ["part-00000.npy", "part-00001.npy"]
    (tmp_path / "s" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, tmp_path / "a.npy", tmp_path / "s", "--shards", "2", "--force")
    assert code == 1 and "notes.txt" in err
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, tmp_path / "a.npy", tmp_path / "s", "--force")
    assert code == 1 and "is a folder" in err
    assert leftovers(tmp_path) == []


def test_usage_errors_exit_2(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(10))
    a, out = tmp_path / "a.npy", tmp_path / "o"
    assert "not allowed with" in usage_exit(capsys, a, out, "--shards", "2", "--shard-size", "1MB")
    assert "positive integer" in usage_exit(capsys, a, out, "--shards", "0")
    assert "not a size" in usage_exit(capsys, a, out, "--shard-size", "lots")
    assert "the following arguments are required" in usage_exit(capsys, a)


def test_errors_exit_1_naming_the_problem(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(3))
    cases = [
        ([tmp_path / "missing.npy", tmp_path / "o.npy"], "missing.npy"),
        ([tmp_path / "nothing-*.npy", tmp_path / "o.npy"], "no files match"),
        ([tmp_path / "a.npy", tmp_path / "no" / "o.npy"], "does not exist"),
        ([tmp_path / "a.npy", tmp_path / "o", "--shards", "4"], "3 rows into 4"),
        ([tmp_path / "a.npy", tmp_path / "o.npy", "--key", "x"], "key="),
    ]
    for args, words in cases:
        code, out, err = run(capsys, *args)
        assert (code, out) == (1, ""), args
        assert err.startswith("npstream: ") and words in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]


@pytest.mark.parametrize("sharded", [False, True])
def test_a_read_failure_leaves_no_output(tmp_path, capsys, sharded):
    """A corrupt compressed member fails halfway through: no DST, no temporary files."""
    np.savez_compressed(tmp_path / "c.npz", x=np.arange(400_000, dtype="<i8").reshape(-1, 4))
    with zipfile.ZipFile(tmp_path / "c.npz") as archive:
        info = archive.getinfo("x.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    middle = start + info.compress_size // 2
    raw[middle : middle + 64] = bytes(64)  # damage the deflate stream in the middle
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    dst = tmp_path / ("out" if sharded else "out.npy")
    args = ["--shard-size", "256KB"] if sharded else []
    code, _, err = run(capsys, tmp_path / "c.npz", dst, *args)
    assert code == 1 and err.startswith("npstream: ") and "c.npz[x]" in err
    assert not dst.exists() and leftovers(tmp_path) == []


def test_inputs_are_not_modified(tmp_path, capsys, rng):
    array = random_array(">f8", (64, 5), rng, order="F")
    np.save(tmp_path / "f.npy", array)
    np.savez_compressed(tmp_path / "c.npz", x=array)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        f.create_dataset("x", data=array)
    inputs = [tmp_path / "f.npy", tmp_path / "c.npz", tmp_path / "h.h5"]
    before = fingerprint(inputs)
    for i, src in enumerate(inputs):
        assert run(capsys, src, tmp_path / f"o{i}.npy", *(["--key", "x"] if i else []))[0] == 0
        assert run(capsys, src, tmp_path / f"s{i}", "--shards", "3", *(["--key", "x"] if i else []))[0] == 0
    assert fingerprint(inputs) == before


def test_progress_bar_only_on_a_terminal(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1000, 100)))
    command = [sys.executable, "-m", "npstream._tools.cli", "convert", str(tmp_path / "a.npy")]
    plain = subprocess.run([*command, str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=120)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, "", "")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = subprocess.run(
            [*command, str(tmp_path / "t.npy")], stdout=subprocess.PIPE, stderr=follower, timeout=120
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0
    text = shown.decode()
    assert "100%" in text and "t.npy" in text  # the bar and the summary line
    assert "1,000 rows" in text


def test_memory_is_bounded(tmp_path):
    """192 MiB inputs of four kinds: peak RSS stays a few 8 MiB blocks above the baseline."""
    np.savez_compressed(tmp_path / "c.npz", x=np.tile(np.arange(1024, dtype="<f8"), (24576, 1)))
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((24576, 1024), ">f8")))
    np.save(tmp_path / "n.npy", np.ones((24576, 1024), "<f8"))
    with h5py.File(tmp_path / "h.h5", "w") as f:
        f.create_dataset("x", data=np.ones((24576, 1024)), chunks=(100, 1024), compression="gzip")
    code = textwrap.dedent(
        """
        import sys
        import h5py  # imported before the baseline, like numpy
        from npstream._tools.convert import convert

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
        convert(sys.argv[1], sys.argv[2], key="x" if sys.argv[1].endswith(".h5") else None)
        print((status("VmHWM") - base) / 2**20)
        """
    )
    for src in ("c.npz", "f.npy", "n.npy", "h.h5"):
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / src), str(tmp_path / f"{src}.out.npy")],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        assert float(result.stdout) < 48, (src, result.stdout)  # blocks of 8 MiB, not 192 MiB
        assert os.path.getsize(tmp_path / f"{src}.out.npy") == 128 + 192 * 2**20
        os.unlink(tmp_path / f"{src}.out.npy")


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_other_compressions(tmp_path, capsys, rng, compression):
    array = random_array(">f4", (300, 7), rng)
    with (
        zipfile.ZipFile(tmp_path / "c.npz", "w", compression=compression) as archive,
        archive.open("x.npy", "w") as member,
    ):
        np.lib.format.write_array(member, array)
    assert run(capsys, tmp_path / "c.npz", tmp_path / "x.npy")[0] == 0
    assert_saved(tmp_path, tmp_path / "x.npy", array)


def test_damaged_archives_convert_exactly_or_fail_cleanly(tmp_path, capsys):
    """Random byte damage anywhere in a compressed .npz: the exact array or an npstream error."""
    array = np.arange(40_000, dtype="<i8").reshape(-1, 4)
    np.savez_compressed(tmp_path / "good.npz", x=array)
    good = (tmp_path / "good.npz").read_bytes()
    rng = np.random.default_rng(7)
    outcomes = {"exact": 0, "error": 0}
    for _ in range(40):
        damaged = bytearray(good)
        at = int(rng.integers(0, len(damaged) - 4))
        damaged[at : at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        (tmp_path / "bad.npz").write_bytes(bytes(damaged))
        code, _, err = run(capsys, tmp_path / "bad.npz", tmp_path / "out.npy", "--force")
        if code == 0:
            np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), array)
            outcomes["exact"] += 1
        else:
            assert code == 1 and err.startswith("npstream: ") and "bad.npz" in err and err.count("\n") == 1
            outcomes["error"] += 1
        assert leftovers(tmp_path) == []
    assert outcomes["error"] > 0
