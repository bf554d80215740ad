"""``npstream info``: text and JSON descriptions of files, checked against numpy, zipfile and h5py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_array
from numpy.lib import format as npformat

from npstream._tools.cli import main

h5py = pytest.importorskip("h5py")


def run_json(capsys, *args: str) -> tuple[int, list[dict]]:
    code = main(["info", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def npy_header(path: Path) -> tuple[tuple[int, int], int]:
    """numpy's own reading of a .npy header: (version, byte offset of the data)."""
    with open(path, "rb") as fp:
        version = npformat.read_magic(fp)
        npformat.read_array_header_1_0(fp) if version == (1, 0) else npformat.read_array_header_2_0(fp)
        return version, fp.tell()


def assert_describes(entry: dict, path: Path, array: np.ndarray) -> None:
    """The fields every entry has, against the array numpy reads from the file."""
    assert entry["path"] == str(path)
    assert entry["dtype"] == array.dtype.str
    assert np.dtype(entry["dtype"]) == array.dtype
    assert entry["shape"] == list(array.shape)
    row_bytes = math.prod(array.shape[1:]) * array.dtype.itemsize
    assert entry["row_bytes"] == row_bytes
    assert entry["data_bytes"] == array.nbytes
    assert entry["file_bytes"] == os.path.getsize(path)
    assert entry["consistent"] is True


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_json(tmp_path, capsys, rng, version, order):
    array = random_array(">f4", (6, 5), rng, order=order)
    path = tmp_path / "a.npy"
    with open(path, "wb") as fp:
        npformat.write_array(fp, array, version=version)
    code, entries = run_json(capsys, str(path))
    assert code == 0
    assert len(entries) == 1
    entry = entries[0]
    loaded = np.load(path)
    assert_describes(entry, path, loaded)
    assert entry["format"] == "npy"
    assert entry["order"] == ("F" if np.isfortran(loaded) else "C")
    header_version, offset = npy_header(path)
    assert entry["header_version"] == f"{header_version[0]}.{header_version[1]}"
    assert entry["offset"] == offset
    assert entry["offset"] + entry["data_bytes"] == entry["file_bytes"]


def test_npz_json_offset_points_at_the_member_bytes(tmp_path, capsys, rng):
    wanted = random_array("<i8", (4, 3), rng)
    np.savez(tmp_path / "d.npz", first=np.arange(5), x=wanted)
    code, entries = run_json(capsys, str(tmp_path / "d.npz"), "--key", "x")
    assert code == 0
    (entry,) = entries
    assert entry["format"] == "npz"
    assert entry["key"] == "x"
    assert_describes(entry, tmp_path / "d.npz", wanted)
    data = (tmp_path / "d.npz").read_bytes()
    assert data[entry["offset"] : entry["offset"] + wanted.nbytes] == wanted.tobytes()


@pytest.mark.parametrize("chunks", [None, (2, 3)])
def test_hdf5_json(tmp_path, capsys, rng, chunks):
    array = random_array("<u2", (7, 3), rng)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("g/x", data=array, chunks=chunks)
    code, entries = run_json(capsys, str(tmp_path / "d.h5"), "--key", "g/x")
    assert code == 0
    (entry,) = entries
    assert entry["format"] == "hdf5"
    assert entry["order"] == "C"
    assert_describes(entry, tmp_path / "d.h5", array)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        offset = f["g/x"].id.get_offset()
    assert entry["offset"] == offset  # None (not addressable) when chunked
    assert (entry["offset"] is None) == (chunks is not None)


@pytest.mark.parametrize("shape_arg", ["--shape=-1,3", "--shape=(-1, 3)", "--shape=5,3"])
def test_raw_json(tmp_path, capsys, rng, shape_arg):
    array = random_array(">i4", (5, 3), rng)
    (tmp_path / "x.raw").write_bytes(b"\0" * 16 + array.tobytes())
    code, entries = run_json(capsys, str(tmp_path / "x.raw"), "--dtype", ">i4", shape_arg, "--offset", "16")
    assert code == 0
    (entry,) = entries
    assert entry["format"] == "raw"
    assert entry["offset"] == 16
    assert entry["header_version"] is None
    assert_describes(entry, tmp_path / "x.raw", array)


def test_raw_shape_starting_with_minus_one_as_separate_argument(tmp_path, capsys, rng):
    # "--shape -1,256" is how the help text spells it; argparse takes "-1,256" for an option
    # unless main() keeps it attached to --shape.
    array = random_array("<f8", (4, 2), rng)
    array.tofile(tmp_path / "x.raw")
    code, entries = run_json(capsys, str(tmp_path / "x.raw"), "--dtype", "<f8", "--shape", "-1,2")
    assert code == 0
    assert entries[0]["shape"] == [4, 2]


def test_truncated_npy_is_inconsistent_with_exit_code_1(tmp_path, capsys, rng):
    array = random_array("<f4", (10, 4), rng)
    np.save(tmp_path / "t.npy", array)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-20])  # 20 of the last 3 rows' 48 bytes missing
    code, entries = run_json(capsys, str(tmp_path / "t.npy"))
    assert code == 1
    (entry,) = entries
    assert entry["consistent"] is False
    assert "truncated" in entry["problem"]
    assert "8 complete rows" in entry["problem"]
    assert entry["data_bytes"] == array.nbytes
    assert entry["file_bytes"] == len(data) - 20

    assert main(["info", str(tmp_path / "t.npy")]) == 1
    text = capsys.readouterr().out
    assert "consistent   NO" in text
    assert "truncated" in text


def test_text_output(tmp_path, capsys, rng):
    array = random_array("<i2", (3, 5), rng)
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "b.npz", x=array, y=np.arange(2))
    assert main(["info", str(tmp_path / "a.npy"), str(tmp_path / "b.npz"), "--key", "x"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == str(tmp_path / "a.npy")
    assert f"{tmp_path / 'b.npz'} [x]" in lines
    assert text.count("consistent   yes") == 2
    assert text.count("shape        (3, 5)  order C") == 2
    assert "dtype        <i2" in text
    assert "format       npy (header 1.0)" in text
    assert "format       npz (header 1.0)" in text
    _, offset = npy_header(tmp_path / "a.npy")
    assert f"data offset  {offset}" in text
    assert f"file bytes   {os.path.getsize(tmp_path / 'a.npy'):,}" in text


def test_glob_mixed_formats_and_one_key(tmp_path, capsys, rng):
    # One --key applies to the .npz and HDF5 files only; the .npy files are described as they are.
    shard = random_array("<f4", (3, 2), rng)
    np.save(tmp_path / "s1.npy", shard)
    np.savez(tmp_path / "s2.npz", x=shard, other=np.arange(3))
    with h5py.File(tmp_path / "s3.h5", "w") as f:
        f.create_dataset("x", data=shard)
    code, entries = run_json(capsys, str(tmp_path / "s*"), "--key", "x")
    assert code == 0
    assert [e["path"] for e in entries] == sorted(str(p) for p in tmp_path.glob("s*"))
    assert [e["format"] for e in entries] == ["npy", "npz", "hdf5"]
    for entry in entries:
        assert entry["shape"] == [3, 2]
        assert entry["dtype"] == "<f4"


def test_errors_are_reported_per_file(tmp_path, capsys):
    np.save(tmp_path / "good.npy", np.arange(4))
    missing = tmp_path / "missing.npy"
    code = main(["info", str(tmp_path / "good.npy"), str(missing), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    entries = json.loads(captured.out)
    assert entries[0]["consistent"] is True
    assert entries[1]["path"] == str(missing)
    assert str(missing) in entries[1]["error"]
    assert str(missing) in captured.err


def test_subprocess_matches_in_process(tmp_path, capsys, rng):
    array = random_array("<c8", (4, 2, 2), rng, order="F")
    np.save(tmp_path / "a.npy", array)
    _, in_process = run_json(capsys, str(tmp_path / "a.npy"))
    result = subprocess.run(
        [sys.executable, "-m", "npstream._tools.cli", "info", str(tmp_path / "a.npy"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == in_process
    assert in_process[0]["order"] == "F"


def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "npstream"
    if not script.exists():
        pytest.skip("the npstream console script is not installed next to this interpreter")
    (tmp_path / "t.npy").write_bytes(b"")
    np.save(tmp_path / "ok.npy", np.zeros((2, 2)))
    result = subprocess.run(
        [str(script), "info", str(tmp_path / "ok.npy"), str(tmp_path / "t.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "consistent   yes" in result.stdout
    assert str(tmp_path / "t.npy") in result.stderr
    assert "empty" in result.stderr
