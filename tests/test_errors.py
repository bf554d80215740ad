"""Bad input gets a clear, catchable error that names the file, what is wrong and the fix.

Format problems raise :class:`npstream.NpstreamError` subclasses that are also ``ValueError``;
missing files, permissions and directories raise the built-in ``OSError`` subclasses. Each test
checks the exception type and the words of the message a user needs (the file name, what was
found, and where sensible how to fix it). Malformed headers are written by hand with
``fuzz_helpers.npy_bytes``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from fuzz_helpers import header_text, npy_bytes, write

import npstream

F4_3 = header_text("<f4", (3,))


def open_fails(path: str | list[str], error: type[BaseException], *words: str, **kwargs: object) -> str:
    """``npstream.open(path, **kwargs)`` raises ``error``; its message holds every word (any case)."""
    with pytest.raises(error) as info:
        npstream.open(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    lowered = message.lower()
    for word in words:
        assert word.lower() in lowered, f"{word!r} not in message: {message}"
    if issubclass(error, npstream.NpstreamError) and not issubclass(error, OSError):
        assert isinstance(info.value, ValueError), "format and usage errors are also ValueError"
    return message


def saved(path: pathlib.Path, array: np.ndarray, **kwargs: object) -> str:
    np.save(path, array, **kwargs)  # type: ignore[arg-type]
    return os.fspath(path)


# -- the start of the file ------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.npy", b"")
    open_fails(path, npstream.FormatError, path, "empty", "0 bytes")


def test_empty_file_without_suffix(tmp_path):
    path = write(tmp_path / "empty", b"")
    open_fails(path, npstream.FormatError, path, "empty")


@pytest.mark.parametrize("size", [1, 5, 7])
def test_file_shorter_than_the_magic(tmp_path, size):
    path = write(tmp_path / "short.npy", npy_bytes(F4_3)[:size])
    open_fails(path, npstream.FormatError, path, f"only {size} bytes", "truncated")


@pytest.mark.parametrize("magic", [b"\x93NUMPX", b"NUMPY\x93", b"\x00" * 6, b"PK\x05\x06\x00\x00"])
def test_wrong_magic(tmp_path, magic):
    good = npy_bytes(F4_3, bytes(12))
    path = write(tmp_path / "wrong.npy", magic + good[6:])
    message = open_fails(path, npstream.FormatError, path, "not a .npy file", "dtype=")
    assert repr(magic[:6])[2:-1] in message, "the message shows the bytes found"


def test_unknown_content_without_suffix_says_to_pass_dtype(tmp_path):
    path = write(tmp_path / "data.bin", b"\x01\x02\x03\x04 some bytes that are no known format")
    open_fails(path, npstream.FormatError, path, "not a .npy, .npz or HDF5 file", "pass dtype=")


@pytest.mark.parametrize("version", [(9, 9), (1, 1), (0, 0), (4, 0), (255, 255)])
def test_unknown_format_version(tmp_path, version):
    path = write(tmp_path / "version.npy", npy_bytes(F4_3, bytes(12), version=version))
    open_fails(path, npstream.FormatError, path, f"version {version[0]}.{version[1]}", "1.0, 2.0, 3.0")


# -- the header's length and text -----------------------------------------------------------------


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("keep", [9, 12, 20, 60, 127])
def test_header_truncated(tmp_path, version, keep):
    """A file cut inside its header (or its length field) says it is truncated."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.arange(3, dtype="<f4"), version=version)
    whole = buffer.getvalue()
    header_end = len(whole) - 12
    assert keep < header_end
    path = write(tmp_path / "cut.npy", whole[:keep])
    message = open_fails(path, npstream.FormatError, path, "truncated")
    field_end = 10 if version == (1, 0) else 12
    if keep >= field_end:
        # The message gives both numbers: what the length field promised and what is there.
        assert f"says {header_end - field_end} bytes" in message
        assert f"only {keep - field_end} bytes" in message


@pytest.mark.parametrize(("version", "length"), [((1, 0), 5000), ((1, 0), 65535), ((2, 0), 2**32 - 1)])
def test_header_length_points_past_the_end(tmp_path, version, length):
    content = npy_bytes(F4_3, bytes(12), version=version, length=length)
    path = write(tmp_path / "long.npy", content)
    field_end = 10 if version == (1, 0) else 12
    open_fails(path, npstream.FormatError, path, f"says {length} bytes", f"only {len(content) - field_end}")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2, 3]", ["not a dictionary"]),
        ("'descr'", ["not a dictionary"]),
        ("", ["header"]),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)", ["never closed"]),
        ("{'descr' '<f4'}", ["not a dictionary"]),
        ("{'descr': '<f4',, 'shape': (3,)}", ["cannot parse header"]),
        ("\x00\x01\x02 binary", ["header"]),
    ],
    ids=["list", "string", "blank", "unclosed", "set", "syntax", "binary"],
)
def test_header_that_is_not_a_dict_literal(tmp_path, text, words):
    path = write(tmp_path / "notdict.npy", npy_bytes(text, bytes(12)))
    open_fails(path, npstream.FormatError, path, "header is not valid", "corrupt", *words)


def test_header_that_is_not_utf8_in_version_3(tmp_path):
    path = write(tmp_path / "utf8.npy", npy_bytes(F4_3.encode() + b"\xff\xfe", bytes(12), version=(3, 0)))
    open_fails(path, npstream.FormatError, path, "header is not valid", "utf-8", "can't decode")


@pytest.mark.parametrize("missing", ["descr", "fortran_order", "shape"])
def test_header_lacking_a_key(tmp_path, missing):
    entries = {"descr": "'<f4'", "fortran_order": "False", "shape": "(3,)"}
    del entries[missing]
    text = "{" + ", ".join(f"'{k}': {v}" for k, v in entries.items()) + "}"
    path = write(tmp_path / "nokey.npy", npy_bytes(text, bytes(12)))
    message = open_fails(path, npstream.FormatError, path, "header is not valid", "keys", f"'{missing}'")
    for present in entries:
        assert present in message, "the message lists the keys that are there"


def test_header_with_an_extra_key(tmp_path):
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'evil': 1}"
    path = write(tmp_path / "extra.npy", npy_bytes(text, bytes(12)))
    open_fails(path, npstream.FormatError, path, "keys", "evil")


CODE_HEADERS = [
    "{{'descr': __import__('os').system('touch {sentinel}'), 'fortran_order': False, 'shape': (3,)}}",
    "{{'descr': '<f4', 'fortran_order': False, 'shape': (__import__('os').system('touch {sentinel}'),)}}",
    "{{'descr': '<f4', 'fortran_order': open({sentinel!r}, 'w').close(), 'shape': (3,)}}",
    "{{'descr': '<f4', 'fortran_order': False, 'shape': (3,), **{{'x': exec('open({sentinel!r}, \"w\")')}}}}",
    "{{'descr': (lambda: open({sentinel!r}, 'w'))(), 'fortran_order': False, 'shape': (3,)}}",
    "[c for c in ().__class__.__base__.__subclasses__() if open({sentinel!r}, 'w')]",
]


@pytest.mark.parametrize("template", CODE_HEADERS)
@pytest.mark.parametrize("version", [(1, 0), (3, 0)])
def test_header_carrying_code_is_never_run(tmp_path, template, version):
    sentinel = os.fspath(tmp_path / "SENTINEL")
    text = template.format(sentinel=sentinel)
    path = write(tmp_path / "code.npy", npy_bytes(text, bytes(12), version=version))
    message = open_fails(path, npstream.FormatError, path, "header is not valid")
    assert not os.path.exists(sentinel), "the header's code ran"
    if "__import__" in text or "lambda" in text:
        assert "never run" in message
    # np.load (same parser) agrees that the file is bad and, likewise, runs nothing.
    with pytest.raises(ValueError):
        np.load(path)
    assert not os.path.exists(sentinel)


class _TouchOnUnpickle:
    """Pickles to a call that creates a file: unpickling the array would run it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_object_array_is_refused_without_unpickling(tmp_path):
    sentinel = os.fspath(tmp_path / "UNPICKLED")
    array = np.array([_TouchOnUnpickle(sentinel), 1, "x"], dtype=object)
    path = saved(tmp_path / "objects.npy", array, allow_pickle=True)
    assert not os.path.exists(sentinel)
    open_fails(path, npstream.FormatError, path, "object", "never unpickles", "fixed-size dtype")
    assert not os.path.exists(sentinel), "npstream unpickled the data"


@pytest.mark.parametrize("descr", ["|O", [("a", "<f4"), ("b", "|O")], [("a", [("b", "|O")])]])
def test_object_dtype_in_header(tmp_path, descr):
    path = write(tmp_path / "obj.npy", npy_bytes(header_text(descr, (3,)), bytes(64)))
    open_fails(path, npstream.FormatError, path, "object", "never unpickles")


@pytest.mark.parametrize("descr", ["<q9", "hello", 42, None, "<f4 ", [("a",)], "V-1"])
def test_unknown_dtype_descr(tmp_path, descr):
    path = write(tmp_path / "descr.npy", npy_bytes(header_text(descr, (3,)), bytes(64)))
    open_fails(path, npstream.FormatError, path, "header is not valid", "descr", repr(descr)[:4])


def test_top_level_subarray_descr(tmp_path):
    """numpy.save never writes one; read() could not return rows of that dtype."""
    path = write(tmp_path / "sub.npy", npy_bytes(header_text(("<f4", (2,)), (3,)), bytes(24)))
    open_fails(path, npstream.FormatError, path, "subarray", "corrupt")


@pytest.mark.parametrize("descr", ["|S0", "<U0"])
def test_zero_size_string_descr(tmp_path, descr):
    """numpy allocates 'S0' as 'S1', so rows of the declared dtype cannot be returned."""
    path = write(tmp_path / "s0.npy", npy_bytes(header_text(descr, (3,)), bytes(24)))
    open_fails(path, npstream.FormatError, path, "size 0", repr(descr))


# -- the shape --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(-3,), (3, -1), (-1, -1)])
def test_negative_shape(tmp_path, shape):
    path = write(tmp_path / "neg.npy", npy_bytes(header_text("<f4", shape), bytes(64)))
    open_fails(path, npstream.FormatError, path, f"shape {shape}", ">= 0")


@pytest.mark.parametrize("shape", [(3.0,), ("3",), [3], 3, (None,), (3, 2.5), (True, 2)])
def test_non_integer_shape(tmp_path, shape):
    path = write(tmp_path / "float.npy", npy_bytes(header_text("<f4", shape), bytes(64)))
    message = open_fails(path, npstream.FormatError, path, "shape")
    assert repr(shape) in message or str(shape) in message


@pytest.mark.parametrize(
    "shape", [(2**62, 2**62), (0, 2**62, 2**62), (2**61, 2), (1, 2**64), (2**100,)],
    ids=["2^62x2^62", "empty-but-huge", "2^61x2", "2^64", "2^100"],
)
def test_overflowing_shape(tmp_path, shape):
    path = write(tmp_path / "huge.npy", npy_bytes(header_text("<f4", shape), bytes(64)))
    message = open_fails(path, npstream.FormatError, path, "more than any array", "2**63 - 1", "corrupt")
    assert str(shape) in message


def test_overflowing_raw_shape(tmp_path):
    path = write(tmp_path / "huge.raw", bytes(64))
    open_fails(path, npstream.FormatError, path, "more than any array", dtype="<f8", shape=(0, 2**40, 2**40))


@pytest.mark.parametrize("order", ["C", "F"])
def test_data_shorter_than_the_header_says(tmp_path, order):
    array = np.arange(40, dtype="<f4").reshape(10, 4)
    path = saved(tmp_path / "short.npy", np.asfortranarray(array) if order == "F" else array)
    size = os.path.getsize(path)
    os.truncate(path, size - 43)  # 7 whole rows and 5 bytes of the eighth
    message = open_fails(path, npstream.FormatError, path, "truncated", "10 rows", "43 missing")
    if order == "C":
        assert "holds 7 complete rows" in message
    else:
        assert "fortran order" in message.lower()


def test_data_missing_entirely(tmp_path):
    path = saved(tmp_path / "header-only.npy", np.zeros((5, 2), "<f8"))
    with open(path, "rb") as f:
        header = f.read(128)
    write(path, header)
    open_fails(path, npstream.FormatError, path, "truncated", "holds 0 complete rows", "80 missing")


def test_raw_shape_larger_than_the_file(tmp_path):
    path = write(tmp_path / "short.raw", bytes(4 * 29))
    open_fails(
        path, npstream.FormatError, path, "truncated", "holds 7 complete rows", dtype="<f4", shape=(10, 4)
    )


def test_zero_dimensional_array(tmp_path):
    path = saved(tmp_path / "scalar.npy", np.float32(3.5))
    open_fails(path, npstream.FormatError, path, "0-dimensional", "numpy.load")


def test_zero_dimensional_raw_shape(tmp_path):
    path = write(tmp_path / "scalar.raw", bytes(4))
    open_fails(path, npstream.UsageError, path, "shape ()", "at least one dimension", dtype="<f4", shape=())


# -- the file system --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, {"dtype": "<f4"}, {"dtype": "S3"}, {"dtype": "<f4", "shape": (10**6,)}, {"key": "x"}]
)
def test_directory(tmp_path, kwargs):
    folder = tmp_path / "arrays.npy"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        npstream.open(folder, **kwargs)
    assert info.value.errno == errno.EISDIR
    assert info.value.filename == os.fspath(folder)
    message = str(info.value)
    assert os.fspath(folder) in message and "directory" in message
    if not kwargs:
        assert os.path.join(folder, "*.npy") in message, "the fix: a glob over the folder"


@pytest.mark.parametrize("kwargs", [{}, {"dtype": "<f4"}, {"key": "x"}])
def test_missing_file(tmp_path, kwargs):
    path = os.fspath(tmp_path / "nowhere.npy")
    with pytest.raises(FileNotFoundError) as info:
        npstream.open(path, **kwargs)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == path
    assert path in str(info.value)


def test_missing_file_among_shards(tmp_path):
    good = saved(tmp_path / "a.npy", np.zeros(3))
    missing = os.fspath(tmp_path / "b.npy")
    with pytest.raises(FileNotFoundError) as info:
        npstream.open([good, missing])
    assert missing in str(info.value)


def test_glob_matching_nothing(tmp_path):
    pattern = os.fspath(tmp_path / "shard-*.npy")
    with pytest.raises(FileNotFoundError) as info:
        npstream.open(pattern)
    assert pattern in str(info.value) and "no files match" in str(info.value)


def _permission_denied_files(folder: pathlib.Path) -> dict[str, dict[str, object]]:
    """One file per way of opening, each to be made unreadable; value: npstream.open kwargs."""
    np.save(folder / "x.npy", np.arange(6.0))
    np.savez(folder / "x.npz", x=np.arange(6.0))
    np.arange(6.0).tofile(folder / "x.raw")
    import h5py

    with h5py.File(folder / "x.h5", "w") as f:
        f["x"] = np.arange(6.0)
    return {
        os.fspath(folder / "x.npy"): {},
        os.fspath(folder / "x.npz"): {"key": "x"},
        os.fspath(folder / "x.raw"): {"dtype": "<f8"},
        os.fspath(folder / "x.h5"): {"key": "x"},
    }


# The child drops the capabilities that let root ignore file permissions (effective and
# permitted, so access(2) agrees), checks that a mode-000 file really is unreadable, then
# reports what npstream.open raised for each file.
_PERMISSION_CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    import npstream

    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # (effective, permitted, inheritable) x 2 words
    if libc.capget(header, data) != 0:
        sys.exit(77)
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    for word in (0, 1, 2):
        data[word] &= keep
    if libc.capset(header, data) != 0:
        sys.exit(77)
    files = json.loads(sys.argv[1])
    try:
        open(next(iter(files)), "rb").close()
        sys.exit(77)  # still readable: cannot simulate
    except PermissionError:
        pass
    report = {}
    for path, kwargs in files.items():
        try:
            npstream.open(path, **kwargs).close()
            report[path] = None
        except BaseException as exc:
            report[path] = [type(exc).__name__, getattr(exc, "errno", None), getattr(exc, "filename", None),
                            str(exc), isinstance(exc, PermissionError)]
    print(json.dumps(report))
    """
)


def test_permission_denied(tmp_path):
    pytest.importorskip("h5py")
    files = _permission_denied_files(tmp_path)
    for path in files:
        os.chmod(path, 0)
    try:
        if os.geteuid() != 0:
            report = {}
            for path, kwargs in files.items():
                with pytest.raises(PermissionError) as info:
                    npstream.open(path, **kwargs)
                exc = info.value
                report[path] = [type(exc).__name__, exc.errno, exc.filename, str(exc), True]
        else:
            if not sys.platform.startswith("linux"):
                pytest.skip("root can read any file; dropping that capability needs Linux")
            child = subprocess.run(
                [sys.executable, "-c", _PERMISSION_CHILD, json.dumps(files)],
                capture_output=True, text=True, timeout=120,
            )
            if child.returncode == 77:
                pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE to make a file unreadable")
            assert child.returncode == 0, child.stderr
            report = json.loads(child.stdout)
    finally:
        for path in files:
            os.chmod(path, 0o644)
    for path, outcome in report.items():
        assert outcome is not None, f"{path}: opened although unreadable"
        name, code, filename, message, is_permission_error = outcome
        assert is_permission_error, f"{path}: raised {name}: {message}"
        assert code == errno.EACCES
        assert filename == path
        assert path in message


def test_permission_error_propagates_unchanged(tmp_path, monkeypatch):
    """Whatever the kernel says about permissions reaches the caller as PermissionError."""
    path = saved(tmp_path / "locked.npy", np.arange(4.0))
    real_open = os.open

    def deny(file, flags, *args, **kwargs):
        if os.fspath(file) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    for kwargs in ({}, {"dtype": "<f8"}):
        with pytest.raises(PermissionError) as info:
            npstream.open(path, **kwargs)
        assert info.value.errno == errno.EACCES
        assert info.value.filename == path
        assert path in str(info.value)


# -- raw files --------------------------------------------------------------------------------------


def test_raw_size_not_whole_rows(tmp_path):
    path = write(tmp_path / "odd.raw", bytes(10))
    open_fails(path, npstream.FormatError, path, "10 bytes", "2 whole", "2 bytes left over", "check dtype",
               dtype="<f4")


def test_raw_size_not_whole_rows_of_a_shape(tmp_path):
    path = write(tmp_path / "odd.raw", bytes(4 * 10))
    open_fails(path, npstream.FormatError, path, "12-byte units", "3 whole", "4 bytes left over",
               dtype="<f4", shape=(-1, 3))


def test_raw_offset_past_the_end(tmp_path):
    path = write(tmp_path / "small.raw", bytes(16))
    open_fails(path, npstream.FormatError, path, "offset 100", "past the end", "16-byte",
               dtype="<f4", offset=100)


@pytest.mark.parametrize("name", ["data.bin", "data.raw", "data.dat", "data"])
def test_raw_without_dtype(tmp_path, name):
    path = write(tmp_path / name, np.arange(16, dtype="<f4").tobytes())
    open_fails(path, npstream.FormatError, path, "pass dtype=")


def test_raw_options_without_dtype(tmp_path):
    path = saved(tmp_path / "x.npy", np.arange(4.0))
    open_fails(path, npstream.UsageError, path, "need dtype=", shape=(-1,))


@pytest.mark.parametrize("dtype", ["not-a-dtype", "<f3", object, "O"])
def test_raw_bad_dtype(tmp_path, dtype):
    path = write(tmp_path / "x.raw", bytes(64))
    open_fails(path, npstream.NpstreamError, path, "dtype", dtype=dtype)


def test_raw_subarray_dtype_suggests_the_shape(tmp_path):
    path = write(tmp_path / "x.raw", bytes(4 * 12))
    open_fails(path, npstream.UsageError, path, "subarray", "dtype='<f4'", "shape=(-1, 2, 3)",
               dtype=("<f4", (2, 3)))


# -- .npz -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.npz", b"PK\x03\x04" + b"not really a zip archive" * 4),
        ("bad.npz", b"this file is named .npz but is not a zip"),
        ("bad", b"PK\x03\x04" + bytes(100)),
    ],
    ids=["zip-magic", "npz-name", "zip-magic-no-suffix"],
)
def test_npz_that_is_not_a_zip(tmp_path, name, content):
    path = write(tmp_path / name, content)
    open_fails(path, npstream.FormatError, path, "not a valid .npz (zip) archive", "numpy.savez")


def test_npz_truncated(tmp_path):
    path = os.fspath(tmp_path / "cut.npz")
    np.savez(path, x=np.arange(100.0))
    os.truncate(path, os.path.getsize(path) // 2)
    open_fails(path, npstream.FormatError, path, "truncated")


def test_npz_missing_key(tmp_path):
    path = os.fspath(tmp_path / "two.npz")
    np.savez(path, images=np.zeros((2, 3)), labels=np.zeros(2))
    open_fails(path, npstream.UsageError, path, "no array 'masks'", "images", "labels", key="masks")


def test_npz_several_members_without_key(tmp_path):
    path = os.fspath(tmp_path / "two.npz")
    np.savez(path, images=np.zeros((2, 3)), labels=np.zeros(2))
    open_fails(path, npstream.UsageError, path, "key=", "images", "labels")


def test_npz_compressed_member(tmp_path):
    path = os.fspath(tmp_path / "small.npz")
    np.savez_compressed(path, x=np.zeros(100))
    open_fails(path, npstream.FormatError, path, "compressed", "np.savez", "npstream convert", key="x")


def test_npz_member_that_is_not_npy(tmp_path):
    path = os.fspath(tmp_path / "odd.npz")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"plain text, not an array")
    open_fails(path, npstream.FormatError, path, "[x]", "not a .npy file", key="x")


def test_npz_member_with_truncated_data(tmp_path):
    path = os.fspath(tmp_path / "short.npz")
    member = io.BytesIO()
    np.save(member, np.arange(10, dtype="<f8"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member.getvalue()[:-8])  # a member whose header promises more
        archive.writestr("y.npy", bytes(4096))  # bytes after it, so only the member's size tells
    open_fails(path, npstream.FormatError, path, "[x]", "holds only", "corrupt", key="x")


# -- HDF5 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"not an HDF5 file at all", b"\x89HDF\r\n\x1a\n" + bytes(100)], ids=["text", "magic-only"]
)
def test_file_that_is_not_hdf5(tmp_path, content):
    pytest.importorskip("h5py")
    path = write(tmp_path / "data.h5", content)
    open_fails(path, npstream.FormatError, path, "not a readable HDF5 file")


def test_hdf5_missing_dataset(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = os.fspath(tmp_path / "data.h5")
    with h5py.File(path, "w") as f:
        f["group/images"] = np.zeros((2, 3))
    open_fails(path, npstream.UsageError, path, "no dataset 'images'", "group/images", key="images")


def test_hdf5_subarray_dtype_is_refused_or_read(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = os.fspath(tmp_path / "sub.h5")
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("x", (3,), dtype=np.dtype(("<f4", (2,))))
        dataset[...] = np.arange(6, dtype="<f4").reshape(3, 2)
        expected = dataset[...]
    try:
        source = npstream.open(path, key="x")
    except npstream.FormatError as exc:
        assert path in str(exc) and "subarray" in str(exc)
        return
    with source:
        rows = source.read(0, len(source))
        assert rows.shape == (len(source), *source.shape[1:]) and rows.dtype == source.dtype
        np.testing.assert_array_equal(rows, expected)


# -- shards -----------------------------------------------------------------------------------------


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


@pytest.mark.parametrize(
    ("second", "words"),
    [
        (np.zeros((3, 4), "<f8"), ["dtype float64", "float32"]),
        (np.zeros((3, 5), "<f4"), ["row shape (5,)", "row shape (4,)"]),
        (np.zeros((3, 4, 1), "<f4"), ["row shape (4, 1)", "row shape (4,)"]),
        (np.zeros((3, 4), "<i4"), ["dtype int32", "float32"]),
    ],
    ids=["dtype", "row-shape", "rank", "kind"],
)
def test_shards_that_disagree(tmp_path, second, words):
    first = saved(tmp_path / "x-0.npy", np.zeros((3, 4), "<f4"))
    other = saved(tmp_path / "x-1.npy", second)
    before = _open_fds()
    message = open_fails(os.fspath(tmp_path / "x-*.npy"), npstream.FormatError, first, other, *words)
    assert "same dtype and row shape" in message
    assert _open_fds() - before == set(), "the shards opened before the error were left open"


def test_shards_in_different_byte_orders_agree(tmp_path):
    """Byte order is storage, not type: '<f4' and '>f4' shards read as one native array."""
    a = np.arange(12, dtype="<f4").reshape(3, 4)
    b = np.arange(12, 20, dtype=">f4").reshape(2, 4)
    saved(tmp_path / "x-0.npy", a)
    saved(tmp_path / "x-1.npy", b)
    with npstream.open(os.fspath(tmp_path / "x-*.npy")) as source:
        np.testing.assert_array_equal(source.read(0, 5), np.concatenate([a, b.astype("<f4")]))


def test_bad_shard_is_named_and_nothing_leaks(tmp_path):
    saved(tmp_path / "x-0.npy", np.zeros((3, 4), "<f4"))
    bad = saved(tmp_path / "x-1.npy", np.zeros((3, 4), "<f4"))
    os.truncate(bad, os.path.getsize(bad) - 20)
    saved(tmp_path / "x-2.npy", np.zeros((3, 4), "<f4"))
    before = _open_fds()
    message = open_fails(os.fspath(tmp_path / "x-*.npy"), npstream.FormatError, bad, "truncated")
    assert os.fspath(tmp_path / "x-0.npy") not in message
    assert _open_fds() - before == set()
