"""What ``npstream.open`` refuses, and how it says so (the error cases of the formats issue).

Every error is an :class:`npstream.NpstreamError`; malformed files are also ``ValueError``
(:class:`npstream.FormatError`), bad arguments ``ValueError`` (:class:`npstream.UsageError`),
missing files the built-in ``FileNotFoundError`` naming the path. Messages name the file, what
was found and what to do.
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np
import pytest
from conftest import assert_rows_equal, random_array

import npstream

h5py = pytest.importorskip("h5py")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


# --- missing files ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"dtype": "<f4"}, {"key": "x"}], ids=["sniffed", "raw", "with-key"])
def test_missing_file_is_file_not_found_naming_the_path(tmp_path, kwargs):
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError) as info:
        npstream.open(missing, **kwargs)
    assert str(missing) in str(info.value) or info.value.filename == str(missing)
    assert isinstance(info.value, OSError)


def test_missing_file_in_a_list_names_that_file(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    with pytest.raises(FileNotFoundError) as info:
        npstream.open([tmp_path / "a.npy", tmp_path / "b.npy"])
    assert str(tmp_path / "b.npy") in str(info.value) or info.value.filename == str(tmp_path / "b.npy")


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "shard-*.npy")
    with pytest.raises(FileNotFoundError, match="shard-"):
        npstream.open(pattern)


def test_existing_file_with_glob_characters_is_taken_literally(tmp_path, rng):
    literal = random_array("<i4", (3, 2), rng)
    np.save(tmp_path / "data[1].npy", literal)
    np.save(tmp_path / "data1.npy", literal + 1)  # what the name matches as a glob
    with npstream.open(tmp_path / "data[1].npy") as src:
        assert_rows_equal(src.read(0, 3), literal)
    # A pattern that is not an existing file is still a glob.
    with npstream.open(str(tmp_path / "data[0-9].npy")) as src:
        assert_rows_equal(src.read(0, 3), literal + 1)


# --- truncated .npy -----------------------------------------------------------------------------


@pytest.mark.parametrize("missing_bytes", [1, 12, 40])
def test_truncated_npy_says_truncated_and_rows_present(tmp_path, rng, missing_bytes):
    array = random_array("<f8", (10, 2), rng)  # 16-byte rows
    np.save(tmp_path / "t.npy", array)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-missing_bytes])
    rows_present = (array.nbytes - missing_bytes) // 16
    with pytest.raises(npstream.FormatError) as info:
        npstream.open(tmp_path / "t.npy")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, npstream.NpstreamError)
    assert str(tmp_path / "t.npy") in message
    assert "truncated" in message
    assert f"{rows_present} complete rows" in message
    assert "10 rows" in message
    # numpy agrees that the file cannot be read as declared.
    with pytest.raises(ValueError):
        np.load(tmp_path / "t.npy")


def test_truncated_fortran_npy_is_refused(tmp_path, rng):
    array = random_array(">i4", (6, 3), rng, order="F")
    np.save(tmp_path / "f.npy", array)
    data = (tmp_path / "f.npy").read_bytes()
    (tmp_path / "f.npy").write_bytes(data[:-4])
    with pytest.raises(npstream.FormatError, match="truncated"):
        npstream.open(tmp_path / "f.npy")


def test_raw_explicit_shape_larger_than_file_is_truncated(tmp_path):
    np.arange(10, dtype="<i4").tofile(tmp_path / "x.raw")
    with pytest.raises(npstream.FormatError, match=r"truncated") as info:
        npstream.open(tmp_path / "x.raw", dtype="<i4", shape=(4, 3))
    assert "3 complete rows" in str(info.value)


# --- raw arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "shape", "offset"),
    [(4 * 3 * 5 + 2, (-1, 3), 0), (4 * 7 + 1, None, 0), (4 * 3 * 5, (-1, 3), 4)],
    ids=["2d-leftover", "1d-leftover", "offset-makes-leftover"],
)
def test_raw_size_not_a_whole_number_of_rows(tmp_path, nbytes, shape, offset):
    (tmp_path / "x.raw").write_bytes(bytes(nbytes))
    with pytest.raises(npstream.FormatError) as info:
        npstream.open(tmp_path / "x.raw", dtype="<f4", shape=shape, offset=offset)
    message = str(info.value)
    assert str(tmp_path / "x.raw") in message
    assert "whole number" in message
    assert isinstance(info.value, ValueError)


def test_raw_shape_with_two_minus_ones(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(48))
    with pytest.raises(npstream.UsageError, match="-1") as info:
        npstream.open(tmp_path / "x.raw", dtype="<f4", shape=(-1, -1))
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, npstream.NpstreamError)


@pytest.mark.parametrize("kind", ["raw", "npy", "hdf5"])
@pytest.mark.parametrize(
    "raw_args", [{"shape": (-1, 3)}, {"offset": 4}, {"order": "F"}], ids=["shape", "offset", "order"]
)
def test_raw_arguments_without_dtype_are_a_usage_error(tmp_path, kind, raw_args):
    # Never silently ignored, whatever the file turns out to be.
    path = tmp_path / "x"
    if kind == "raw":
        path.write_bytes(bytes(48))
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros((4, 3)))
        path = path.with_suffix(".npy")
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.zeros((4, 3)))
    with pytest.raises(npstream.UsageError, match="dtype="):
        npstream.open(path, **raw_args)


def test_raw_without_dtype_is_not_guessed(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(range(48)))
    with pytest.raises(npstream.FormatError, match="dtype="):
        npstream.open(tmp_path / "x.raw")


def test_raw_inferred_shape_and_offset_read_correctly(tmp_path, rng):
    array = random_array("<u8", (6, 2, 2), rng)
    (tmp_path / "x.raw").write_bytes(b"0123456" + array.tobytes())
    with npstream.open(tmp_path / "x.raw", dtype="<u8", shape=(-1, 2, 2), offset=7) as src:
        assert src.shape == array.shape
        assert_rows_equal(src.read(0, 6), array)


# --- dtypes and shapes that have no rows to stream ----------------------------------------------


def test_zero_dimensional_npy_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.float64(3.5))
    assert np.load(tmp_path / "s.npy").shape == ()
    with pytest.raises(npstream.FormatError, match="0-dimensional") as info:
        npstream.open(tmp_path / "s.npy")
    assert str(tmp_path / "s.npy") in str(info.value)


def test_zero_dimensional_npz_member_and_hdf5_dataset_refused(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.int32(1))
    with pytest.raises(npstream.FormatError, match="0-dimensional"):
        npstream.open(tmp_path / "s.npz", key="x")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("x", data=2.0)
    with pytest.raises(npstream.FormatError, match="0-dimensional"):
        npstream.open(tmp_path / "s.h5", key="x")


class UnpicklingTrap:
    """Pickles as ``Path.touch(marker)``: unpickling it creates ``marker``, proof that it ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["object", "structured-with-object"])
def test_object_array_refused_without_unpickling(tmp_path, kind):
    marker = tmp_path / "unpickled"
    trap = UnpicklingTrap(marker)
    if kind == "object":
        array = np.empty(2, dtype=object)
        array[:] = [trap, 1]
    else:
        array = np.empty(2, dtype=[("a", "i4"), ("o", "O")])
        array["o"] = [trap, 1]
    np.save(tmp_path / "o.npy", array, allow_pickle=True)
    np.savez(tmp_path / "o.npz", x=array)

    for path in (tmp_path / "o.npy", tmp_path / "o.npz"):
        with pytest.raises(npstream.FormatError, match="object") as info:
            npstream.open(path)
        assert "unpickl" in str(info.value)
        assert not marker.exists()
    # The trap is live: numpy with allow_pickle=True does run it.
    np.load(tmp_path / "o.npy", allow_pickle=True)
    assert marker.exists()


def test_object_dtype_refused_for_raw(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(64))
    with pytest.raises(npstream.FormatError, match="object"):
        npstream.open(tmp_path / "x.raw", dtype=object)


@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 2), (5, 1), (1, 6)])
def test_fortran_order_works(tmp_path, rng, shape):
    array = random_array(">f4", shape, rng, order="F")
    np.save(tmp_path / "f.npy", array)
    with npstream.open(tmp_path / "f.npy") as src:
        assert_rows_equal(src.read(0, shape[0]), np.load(tmp_path / "f.npy"))
        assert_rows_equal(src.read(1, shape[0]), array[1:])


# --- .npz ---------------------------------------------------------------------------------------


def test_compressed_npz_member_refused_naming_deflate_and_the_fix(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=np.arange(100))
    with pytest.raises(npstream.FormatError) as info:
        npstream.open(tmp_path / "c.npz", key="x")
    message = str(info.value)
    assert str(tmp_path / "c.npz") in message
    assert "deflate" in message
    assert "np.savez" in message  # one fix: re-save uncompressed
    assert "savez_compressed" in message
    assert "npstream convert" in message and "--key x" in message  # the other: convert it once


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_other_compressions_named(tmp_path, compression):
    with (
        zipfile.ZipFile(tmp_path / "c.npz", "w", compression=compression) as archive,
        archive.open("x.npy", "w") as member,
    ):
        np.lib.format.write_array(member, np.arange(10))
    name = "bzip2" if compression == zipfile.ZIP_BZIP2 else "lzma"
    with pytest.raises(npstream.FormatError, match=name):
        npstream.open(tmp_path / "c.npz", key="x")


def test_missing_npz_key_lists_the_keys_present(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2)), labels=np.arange(2))
    with pytest.raises(npstream.UsageError) as info:
        npstream.open(tmp_path / "d.npz", key="image")
    message = str(info.value)
    assert "'image'" in message
    assert "images" in message and "labels" in message
    assert isinstance(info.value, ValueError)


def test_npz_with_several_members_needs_a_key(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.arange(2), b=np.arange(3))
    with pytest.raises(npstream.UsageError, match="key=") as info:
        npstream.open(tmp_path / "d.npz")
    assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_missing_hdf5_dataset_lists_the_datasets(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("group/images", data=np.zeros((2, 2)))
    with pytest.raises(npstream.UsageError, match="group/images"):
        npstream.open(tmp_path / "d.h5", key="images")


@pytest.mark.parametrize("kind", ["vlen-str", "vlen-int", "compound-with-vlen"])
def test_hdf5_variable_length_refused_and_file_closed(tmp_path, kind):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        if kind == "vlen-str":
            f.create_dataset("x", data=["a", "bcd"], dtype=h5py.string_dtype())
        elif kind == "vlen-int":
            data = np.empty(2, dtype=object)
            data[:] = [np.arange(2), np.arange(3)]
            f.create_dataset("x", data=data, dtype=h5py.vlen_dtype("i4"))
        else:
            dtype = np.dtype([("a", "i4"), ("s", h5py.string_dtype())])
            f.create_dataset("x", shape=(2,), dtype=dtype)
    before = open_fds()
    with pytest.raises(npstream.FormatError, match="variable-length") as info:
        npstream.open(tmp_path / "v.h5", key="x")
    assert "unpickl" not in str(info.value)  # HDF5 holds no pickles; say what is really wrong
    assert open_fds() == before  # checked while the exception (and its traceback) is alive


def test_hdf5_missing_dataset_closes_the_file(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    before = open_fds()
    with pytest.raises(npstream.UsageError):
        npstream.open(tmp_path / "d.h5", key="y")
    assert open_fds() == before


# --- shards that disagree -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("odd_dtype", "odd_row_shape", "what"),
    [("<f8", (3,), "dtype"), ("<f4", (4,), "row shape"), ("<f4", (3, 1), "row shape")],
    ids=["dtype", "row-width", "row-ndim"],
)
def test_shards_that_disagree_name_the_first_differing_file(tmp_path, odd_dtype, odd_row_shape, what):
    np.save(tmp_path / "s0.npy", np.zeros((2, 3), dtype="<f4"))
    np.save(tmp_path / "s1.npy", np.zeros((4, 3), dtype=">f4"))  # same values: byte order may differ
    np.save(tmp_path / "s2.npy", np.zeros((1, *odd_row_shape), dtype=odd_dtype))
    np.save(tmp_path / "s3.npy", np.zeros((1, 5), dtype="<i2"))  # differs too, but later
    before = open_fds()
    with pytest.raises(npstream.FormatError) as info:
        npstream.open(str(tmp_path / "s*.npy"))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "s2.npy"))
    assert "s3.npy" not in message
    assert str(tmp_path / "s0.npy") in message  # what it was compared with
    assert what in message
    assert open_fds() == before  # the shards opened before the failure were closed


def test_shards_in_a_list_keep_the_order_given_for_the_error(tmp_path):
    np.save(tmp_path / "b.npy", np.zeros((2, 3), dtype="<i8"))
    np.save(tmp_path / "a.npy", np.zeros((2, 3), dtype="<i4"))
    with pytest.raises(npstream.FormatError) as info:
        npstream.open([tmp_path / "b.npy", tmp_path / "a.npy"])
    assert str(info.value).startswith(str(tmp_path / "a.npy"))
