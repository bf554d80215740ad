"""npstream never writes to its inputs.

A session-scoped set of input files in every format is fingerprinted once (content hash, size,
inode, mode, mtime and ctime in nanoseconds); each test below runs a family of operations on
all of them (open and read every way, ``npstream info``, pickling into this and a spawned
process, concurrent reads) and checks the fingerprints are unchanged, and the last test checks
again after all of them. While sources are open, every descriptor they hold on an input is
checked to be read-only in the kernel's own record (``/proc/self/fdinfo``), and every
``open`` npstream makes is checked to ask for reading only.
"""

from __future__ import annotations

import builtins
import contextlib
import glob
import hashlib
import io
import multiprocessing
import os
import pickle
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from fuzz_helpers import same_values

import npstream
from npstream._tools.cli import main as cli_main

h5py = pytest.importorskip("h5py")


@dataclass(frozen=True)
class Input:
    path: str
    kwargs: dict
    expected: np.ndarray


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    size: int
    inode: int
    mode: int
    mtime_ns: int
    ctime_ns: int


def fingerprint(path: str) -> Fingerprint:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    st = os.stat(path)
    return Fingerprint(digest, st.st_size, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> list[Input]:
    root = tmp_path_factory.mktemp("never-writes")
    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 3, 2)).astype("<f4")
    made: list[Input] = []

    def npy(name: str, array: np.ndarray, version: tuple[int, int] | None = None) -> None:
        path = os.fspath(root / name)
        with open(path, "wb") as f:
            np.lib.format.write_array(f, array, version=version)
        made.append(Input(path, {}, array))

    npy("c.npy", base)
    npy("v2.npy", base.astype(">f8"), version=(2, 0))
    npy("v3.npy", np.zeros(5, dtype=[("\u6570", "<i2"), ("b", ">f4", (2,))]), version=(3, 0))
    npy("fortran.npy", np.asfortranarray(base))
    raw = os.fspath(root / "x.raw")
    base.tofile(raw)
    made.append(Input(raw, {"dtype": "<f4", "shape": (-1, 3, 2)}, base))
    npz = os.fspath(root / "x.npz")
    np.savez(npz, a=base, b=base[:7].astype(">i8"))
    made.append(Input(npz, {"key": "a"}, base))
    made.append(Input(npz, {"key": "b"}, base[:7].astype(">i8")))
    h5 = os.fspath(root / "x.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("contiguous", data=base)
        f.create_dataset("group/chunked", data=base.astype(">f8"), chunks=(4, 3, 2), compression="gzip")
    made.append(Input(h5, {"key": "contiguous"}, base))
    made.append(Input(h5, {"key": "group/chunked"}, base.astype(">f8")))
    shards = root / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 15), (15, 16), (16, 40)]):
        np.save(shards / f"part-{i}.npy", base[a:b])
    made.append(Input(os.fspath(shards / "part-*.npy"), {}, base))
    return made


def input_files(inputs: list[Input]) -> list[str]:
    files: set[str] = set()
    for item in inputs:
        files.update(glob.glob(item.path) if glob.has_magic(item.path) else [item.path])
    return sorted(files)


@pytest.fixture(scope="session")
def fingerprints(inputs) -> dict[str, Fingerprint]:
    return {path: fingerprint(path) for path in input_files(inputs)}


def assert_unchanged(fingerprints: dict[str, Fingerprint]) -> None:
    changed = {path: (before, fingerprint(path)) for path, before in fingerprints.items()
               if fingerprint(path) != before}
    assert not changed, changed


def test_fingerprint_notices_a_write_and_a_touch(tmp_path):
    """The check below can fail: rewriting the same bytes or only touching the file shows."""
    path = os.fspath(tmp_path / "x.bin")
    with open(path, "wb") as f:
        f.write(b"abc")
    os.utime(path, ns=(10**9, 10**9))  # far in the past: clock granularity cannot hide a write
    before = fingerprint(path)
    with open(path, "r+b") as f:
        f.write(b"abc")
    assert fingerprint(path) != before
    again = fingerprint(path)
    os.utime(path, ns=(2 * 10**9, 2 * 10**9))
    assert fingerprint(path) != again


def test_open_and_read_every_way(inputs, fingerprints):
    for item in inputs:
        with npstream.open(item.path, **item.kwargs) as source:
            n = len(source)
            assert same_values(source.read(0, n), item.expected)
            assert same_values(source[n // 3 : n // 2], item.expected[n // 3 : n // 2])
            assert same_values(source[-1], item.expected[-1])
            out = np.empty((n - 1, *source.shape[1:]), dtype=source.dtype)
            source.read(1, n, out=out)
            assert same_values(out, item.expected[1:])
            source.read(n, n)
    assert_unchanged(fingerprints)


def test_info_cli(inputs, fingerprints, capsys):
    for item in inputs:
        args = ["info", item.path]
        if "key" in item.kwargs:
            args += ["--key", item.kwargs["key"]]
        if "dtype" in item.kwargs:
            args += ["--dtype", item.kwargs["dtype"], "--shape", ",".join(map(str, item.kwargs["shape"]))]
        assert cli_main(args) == 0, capsys.readouterr().err
        assert cli_main([*args, "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert_unchanged(fingerprints)


def _read_pickled(blob: bytes, queue) -> None:
    try:
        with pickle.loads(blob) as source:
            queue.put(source.read(0, len(source)))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_pickling_here_and_in_a_spawned_process(inputs, fingerprints):
    context = multiprocessing.get_context("spawn")
    for item in inputs:
        with npstream.open(item.path, **item.kwargs) as source:
            blob = pickle.dumps(source)
            with pickle.loads(blob) as copy:
                assert same_values(copy.read(0, len(copy)), item.expected)
            if item is inputs[0] or "key" in item.kwargs:  # one spawn per format keeps this quick
                queue = context.Queue()
                child = context.Process(target=_read_pickled, args=(blob, queue))
                child.start()
                got = queue.get(timeout=120)
                child.join(timeout=120)
                assert child.exitcode == 0
                assert not isinstance(got, str), got
                assert same_values(got, item.expected)
    assert_unchanged(fingerprints)


def test_concurrent_reads(inputs, fingerprints):
    sources = [npstream.open(item.path, **item.kwargs) for item in inputs]
    errors: list[BaseException] = []

    def reader(index: int) -> None:
        try:
            for source, item in zip(sources, inputs, strict=True):
                for start in range(index, len(source), 7):
                    assert same_values(source.read(start, start + 1), item.expected[start : start + 1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for source in sources:
        source.close()
    assert not errors, errors
    assert_unchanged(fingerprints)


def _fd_flags(fd: str) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags in /proc/self/fdinfo/{fd}")


def _fds_on(files: list[str]) -> dict[str, str]:
    """Open descriptors of this process that point at one of ``files``: fd -> path."""
    real = {os.path.realpath(path) for path in files}
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target in real:
                found[fd] = target
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="needs /proc/self/fdinfo (Linux)")
def test_every_descriptor_on_an_input_is_read_only(inputs, fingerprints):
    files = input_files(inputs)
    assert not _fds_on(files), "inputs open before the test"
    sources = [npstream.open(item.path, **item.kwargs) for item in inputs]
    try:
        for source in sources:
            source.read(0, 1)  # HDF5 sources may open lazily
        held = _fds_on(files)
        assert set(held.values()) == {os.path.realpath(path) for path in files}, "every input is held open"
        for fd, path in held.items():
            flags = _fd_flags(fd)
            assert flags & 0o3 == os.O_RDONLY, f"fd {fd} on {path} has flags {flags:o}"
            assert not flags & (os.O_APPEND | os.O_TRUNC | os.O_CREAT), f"fd {fd} on {path}: {flags:o}"
    finally:
        for source in sources:
            source.close()
    assert not _fds_on(files), "close() released every descriptor"
    assert_unchanged(fingerprints)


def test_every_open_call_asks_for_reading_only(inputs, fingerprints, monkeypatch):
    """What Python-level opens npstream makes (os.open, open, io.open) ask for: never writing."""
    files = {os.path.realpath(path) for path in input_files(inputs)}
    calls: list[tuple[str, object]] = []
    real_os_open, real_open = os.open, builtins.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def recording_os_open(path, flags, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path) in files:
            calls.append((os.fspath(path), flags))
        return real_os_open(path, flags, *args, **kwargs)

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in files:
            calls.append((os.fspath(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_os_open)
    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)
    for item in inputs:
        with npstream.open(item.path, **item.kwargs) as source:
            source.read(0, len(source))
            pickle.loads(pickle.dumps(source)).close()
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(["info", *[item.path for item in inputs if not item.kwargs]])
    monkeypatch.undo()
    assert calls, "no open was recorded: the check saw nothing"
    for path, how in calls:
        if isinstance(how, int):
            assert not how & write_flags, f"os.open({path!r}, {how:o})"
        else:
            assert set(str(how)) <= set("rbt"), f"open({path!r}, {how!r})"
    assert_unchanged(fingerprints)


def test_inputs_unchanged_after_everything(inputs, fingerprints):
    """Last in this module: every operation above has left every input as it was."""
    for path, before in fingerprints.items():
        assert fingerprint(path) == before, path
