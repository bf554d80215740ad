"""Property tests on damaged and hand-made ``.npy`` files: numpy's answer or an npstream error.

Each example writes one file and asks both numpy (``np.load``) and npstream (``npstream.open``
then ``read``) for its contents. The property: npstream returns exactly what numpy returns
(shape, dtype up to byte order, and every element's bytes, NaN payloads included), or raises an
:class:`npstream.NpstreamError`; never another exception type and never a hang. ``npstream info``
must agree: it succeeds exactly when ``npstream.open`` does, and never raises.

Where the two may disagree, and why (``REFUSED_BY_DESIGN``): numpy loads these, npstream refuses
them with a FormatError because it cannot return rows of the declared dtype and shape:

* a 0-d array (shape ``()``) has no rows;
* a top-level subarray descr such as ``('<f4', (2,))`` (numpy.save never writes one; numpy.load
  reshapes it away, and only when the element counts happen to fit);
* a zero-size string descr ``'S0'``/``'U0'`` (numpy allocates those as size 1).

Bytes after the data are accepted by both (numpy reads only the elements the header declares;
``npstream info`` reports them as trailing bytes).

Three generators: valid files from ``numpy.lib.format.write_array`` mutated by bit flips, byte
changes, truncation, insertions, deletions, trailing bytes and new length fields or versions;
hand-written headers from random dict entries (descr, shape, fortran_order, missing, extra and
odd values); and random bytes after the magic. ``NPSTREAM_FUZZ_EXAMPLES`` sets the examples per
test (``make fuzz`` runs 10,000); the default keeps ``make test`` quick.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import math
import os
import sys
import warnings
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from fuzz_helpers import NPY_MAGIC, npy_bytes, same_values
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import npstream
from npstream._tools.cli import main as cli_main

EXAMPLES = int(os.environ.get("NPSTREAM_FUZZ_EXAMPLES") or 400)

settings.register_profile(
    "npstream-fuzz",
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=2),
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("npstream-fuzz")
HANG_SECONDS = 60  # a backstop far above the deadline: dump every thread's stack and exit

RUNS: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request):
    yield tmp_path_factory.mktemp("fuzz")
    if os.environ.get("NPSTREAM_FUZZ_EXAMPLES"):  # the long run reports what it did
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nfuzz examples run: {dict(RUNS)}; total {sum(RUNS.values())}")
            print(f"fuzz outcomes: {dict(OUTCOMES.most_common())}")


# -- what the files hold ----------------------------------------------------------------------------

DTYPES = [
    "<f4", ">f8", "<f2", ">f2", "<i2", ">u4", "|u1", "|i1", "|b1", "<c8", ">c16", "|S3", "<U2", ">U1",
    "<M8[s]", ">m8[ms]", "|V3", "<i8", ">i8",
    [("a", "<i4"), ("b", ">f8")],
    {"names": ["x", "y"], "formats": ["<u2", ">f4"], "offsets": [0, 4], "itemsize": 12},  # padding
    [("p", ">f4", (2,)), ("s", "|S2")],
    [("outer", [("inner", "<i2"), ("z", ">c8")]), ("t", "<M8[D]")],
]
WIDE = [("\u6570", "<f4"), ("b", ">i2")]  # a field name outside latin-1: header version 3.0 only


@st.composite
def valid_npy(draw) -> bytes:
    """A file exactly as numpy writes it, of random dtype, shape, order, version and bytes."""
    wide = draw(st.integers(0, 15)) == 0
    dtype = np.dtype(WIDE if wide else draw(st.sampled_from(DTYPES)))
    ndim = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 0]))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    body = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(math.prod(shape) * dtype.itemsize)
    array = np.frombuffer(body, dtype=dtype).reshape(shape) if body else np.zeros(shape, dtype)
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    version = (3, 0) if wide else draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


# Fragments a corrupted header might gain: other types, signs, huge numbers, code, Python 2.
HEADER_FRAGMENTS = [
    "-", "-1", "0", "2**62", "9223372036854775808", "1e3", "3.5", "True", "None", "L", "j", ",", "(", ")",
    "[", "]", "{", "}", "'", '"', ":", "'shape': (", "'descr': '|O', ", "__import__('os')", "\\x00", "\n",
    "'fortran_order': True, ", "'<U0'", "('<f4', (2,))", "\u6570", "#",
]  # fmt: skip

MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("byte"), st.integers(0, 2**20), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("truncate"), st.integers(0, 2**20), st.booleans()),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=8), st.booleans()),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 16), st.booleans()),
    st.tuples(st.just("fragment"), st.integers(0, 2**20), st.sampled_from(HEADER_FRAGMENTS)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(
        st.just("length"),
        st.one_of(st.integers(-16, 16), st.integers(0, 2**32 - 1), st.sampled_from([0, 65535, 2**32 - 1])),
    ),
    st.tuples(st.just("version"), st.sampled_from([0, 1, 2, 3, 4, 255]), st.sampled_from([0, 1, 255])),
)


def mutate(content: bytes, mutations: list[tuple]) -> bytes:
    """Apply ``mutations`` in order; positions land in the header when their flag says so."""
    data = bytearray(content)
    field = 2 if content[6] == 1 else 4
    header_end = 8 + field + int.from_bytes(content[8 : 8 + field], "little")

    def where(position: int, in_header: bool) -> int:
        span = min(header_end, len(data)) if in_header else len(data)
        return position % max(span, 1)

    for kind, *args in mutations:
        if kind == "flip" and data:
            at = where(args[0], args[2])
            data[at] ^= 1 << args[1]
        elif kind == "byte" and data:
            data[where(args[0], args[2])] = args[1]
        elif kind == "truncate":
            del data[where(args[0], args[1]) :]
        elif kind == "insert":
            at = where(args[0], args[2])
            data[at:at] = args[1]
        elif kind == "delete":
            at = where(args[0], args[2])
            del data[at : at + args[1]]
        elif kind == "fragment":
            at = 8 + field + args[0] % max(header_end - 8 - field, 1)
            data[at:at] = args[1].encode("utf-8")
        elif kind == "append":
            data += args[0]
        elif kind == "length" and len(data) >= 8 + field:
            old = int.from_bytes(data[8 : 8 + field], "little")
            value = old + args[0] if -16 <= args[0] <= 16 else args[0]
            data[8 : 8 + field] = (value % (1 << (8 * field))).to_bytes(field, "little")
        elif kind == "version" and len(data) >= 8:
            data[6:8] = bytes(args)
    return bytes(data)


# Characters for random text, from a fixed alphabet: printable ASCII, controls, latin-1, wider
# code points and a lone surrogate. (Hypothesis's default text strategy would also write a codec
# cache under .hypothesis in the repository.)
ALPHABET = st.sampled_from(
    [chr(c) for c in range(32, 127)]
    + ["\x00", "\t", "\n", "\r", "\x7f", "\xe9", "\xff", "\u6570", "\U0001f600", "\ud800"]
)


def some_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALPHABET, max_size=max_size)


DESCRS = [
    "<f4", ">f8", "|u1", "<i8", "|b1", "<c16", "|S5", ">U3", "<M8[us]", "|V4", "f4", "float32", "<f16", "<q9",
    "|O", "O", "|S0", "<U0", "|V0", "", "<", "<M8", "int", "|S-1", ">V2",
]  # fmt: skip
FIELD = st.tuples(st.sampled_from(["a", "b", "", "a"]), st.sampled_from([*DESCRS[:10], "|O", "|S0"]))
SUBARRAY_FIELD = st.tuples(st.sampled_from(["x", "y"]), st.sampled_from(["<f4", ">i2"]), st.just((2,)))
DESCR_VALUES = st.one_of(
    st.sampled_from(DESCRS),
    st.lists(FIELD, max_size=3),
    st.lists(SUBARRAY_FIELD, max_size=2),
    st.tuples(st.sampled_from(["<f4", "|u1"]), st.sampled_from([(2,), (), (0,), (-1,)])),
    some_text(6),
    st.integers(-2, 8),
    st.none(),
)
DIMENSION = st.one_of(
    st.integers(0, 6),
    st.integers(-3, -1),
    st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**30]),
    st.booleans(),
    st.floats(allow_nan=True),
    st.none(),
    some_text(2),
)
SHAPE_VALUES = st.one_of(
    st.lists(st.integers(0, 6), max_size=3).map(tuple),
    st.lists(DIMENSION, max_size=3).map(tuple),
    st.lists(st.integers(0, 6), max_size=3),
    st.integers(-1, 6),
    st.none(),
)
GOOD_DESCRS = st.sampled_from([np.lib.format.dtype_to_descr(np.dtype(spec)) for spec in [*DTYPES, WIDE]])
SMALL_SHAPES = st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple)
FORTRAN_VALUES = st.sampled_from([False, True, 0, 1, None, "False", 1.0])
EXTRA_KEYS = st.sampled_from(["descr", "shape", "fortran_order", "extra", "", "DESCR", 1])
ANY_VALUE = st.one_of(DESCR_VALUES, SHAPE_VALUES, FORTRAN_VALUES)


def _declared_bytes(descr: object, shape: object) -> int | None:
    """The data size the header would need, when it is a sane small number."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            itemsize = np.lib.format.descr_to_dtype(descr).itemsize
        dims = [operator_index(n) for n in shape]  # type: ignore[union-attr]
        size = math.prod(dims) * itemsize
    except Exception:
        return None
    return size if 0 <= size <= 4096 else None


def operator_index(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(n)
    return n


@st.composite
def handmade_npy(draw) -> bytes:
    """A header written as text from random entries, followed by (about) the data it asks for."""
    plausible = draw(st.booleans())  # a real descr, a small shape and a bool, all present
    values = {
        "descr": draw(GOOD_DESCRS if plausible else DESCR_VALUES),
        "fortran_order": draw(st.booleans() if plausible else FORTRAN_VALUES),
        "shape": draw(SMALL_SHAPES if plausible else SHAPE_VALUES),
    }
    entries = [(key, value) for key, value in values.items() if plausible or draw(st.integers(0, 9))]
    for _ in range(draw(st.integers(0, 9)) // 8):  # sometimes an extra or repeated key
        entries.append((draw(EXTRA_KEYS), draw(ANY_VALUE)))
    entries = draw(st.permutations(entries))
    closing = draw(st.sampled_from(["}", ", }", "}", ", }", ""]))
    text = "{" + ", ".join(f"{key!r}: {value!r}" for key, value in entries) + closing
    if draw(st.integers(0, 9)) == 0:
        text = draw(some_text(80))
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
    try:
        header = text.encode("latin-1" if version < (3, 0) else "utf-8", "surrogatepass")
    except UnicodeEncodeError:  # wider characters in a 1.0/2.0 header: bytes numpy must refuse
        header = text.encode("utf-8", "surrogatepass")
    needed = _declared_bytes(values["descr"], values["shape"])
    if needed is None or draw(st.integers(0, 4)) == 0:
        size = draw(st.integers(0, 300))
    else:
        size = max(0, needed + draw(st.sampled_from([0, 0, 0, 0, -1, 1, 7])))
    body = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)
    return npy_bytes(header, body, version=version, pad=draw(st.booleans()))


# -- the property -----------------------------------------------------------------------------------


def _header_as_numpy_reads_it(path: str) -> tuple | None:
    """(shape, fortran_order, dtype) from numpy's own header reader, or None if it refuses."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(f)
            if version == (2, 0):
                return np.lib.format.read_array_header_2_0(f)
            from numpy.lib import _format_impl  # numpy 2; numpy 1 kept it in numpy.lib.format

            return _format_impl._read_array_header(f, version)
    except Exception:
        return None


def refused_by_design(path: str) -> str | None:
    """Why npstream may refuse a file numpy loads (module docstring), or None."""
    header = _header_as_numpy_reads_it(path)
    if header is None:
        return None
    shape, _, dtype = header
    if shape == ():
        return "0-d array"
    if dtype.subdtype is not None:
        return "top-level subarray descr"
    if dtype.kind in "SU" and dtype.itemsize == 0:
        return "zero-size string descr"
    return None


def same_dtype_up_to_byte_order(got: np.dtype, expected: np.dtype) -> bool:
    if got.itemsize != expected.itemsize or got.names != expected.names:
        return False
    if expected.names is not None:
        return all(
            got.fields[name][1] == expected.fields[name][1]  # type: ignore[index]
            and same_dtype_up_to_byte_order(got.fields[name][0], expected.fields[name][0])  # type: ignore[index]
            for name in expected.names
        )
    if expected.subdtype is not None:
        return got.subdtype is not None and got.subdtype[1] == expected.subdtype[1] and (
            same_dtype_up_to_byte_order(got.subdtype[0], expected.subdtype[0])
        )
    return got == expected.newbyteorder("=")


def outcome(label: str) -> None:
    OUTCOMES[label] += 1
    if currently_in_test_context():
        event(label)


def check_file(path: str, pick: int) -> None:
    """The property for one file; ``pick`` chooses a sub-range to read as well."""
    with warnings.catch_warnings():
        # numpy warns about Python 2 headers and deprecated dtype aliases; both tools see them.
        warnings.simplefilter("ignore")
        try:
            expected, numpy_error = np.load(path, allow_pickle=False), None
        except Exception as exc:  # numpy's own choice of exception is not under test
            expected, numpy_error = None, exc
        try:
            source = npstream.open(path)
        except npstream.NpstreamError as exc:
            source, error = None, exc
        except Exception as exc:
            raise AssertionError(
                f"npstream.open raised {type(exc).__name__}, not an NpstreamError: {exc}"
            ) from exc
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            status = cli_main(["info", path, "--json"])
        assert (status == 0) == (source is not None), f"npstream info exit {status} vs open: {out.getvalue()}"
        assert isinstance(json.loads(out.getvalue()), list)

    if source is None:
        assert os.fspath(path) in str(error), f"the message does not name the file: {error}"
        if expected is None:
            outcome("both refuse")
            return
        reason = refused_by_design(path)
        assert reason is not None, (
            f"numpy loads shape {expected.shape} dtype {expected.dtype}, npstream refuses: {error}"
        )
        outcome(f"npstream refuses by design: {reason}")
        return

    with source:
        rows = len(source)
        try:
            whole = source.read(0, rows)
            start = pick % (rows + 1)
            stop = start + (pick // 7) % (rows - start + 1)
            part = source.read(start, stop)
        except npstream.NpstreamError as exc:
            raise AssertionError(f"opened, but reading the unchanged file failed: {exc}") from exc
    assert numpy_error is None, (
        f"npstream reads shape {source.shape} dtype {source.dtype}, numpy refuses: "
        f"{type(numpy_error).__name__}: {numpy_error}"
    )
    assert expected is not None
    assert source.shape == expected.shape and rows == (expected.shape[0] if expected.ndim else None)
    assert same_dtype_up_to_byte_order(source.dtype, expected.dtype), (source.dtype, expected.dtype)
    assert whole.dtype == source.dtype and whole.flags.c_contiguous
    assert same_values(whole, expected), "values differ from np.load"
    assert same_values(part, expected[start:stop]), f"rows [{start}, {stop}) differ from np.load"
    outcome("both read, equal")


@contextlib.contextmanager
def hang_guard():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def run(workdir, name: str, content: bytes, pick: int) -> None:
    RUNS[name] += 1
    path = os.fspath(workdir / f"{name}.npy")
    with open(path, "wb") as f:
        f.write(content)
    with hang_guard():
        check_file(path, pick)


@FUZZ
@given(base=valid_npy(), mutations=st.lists(MUTATIONS, max_size=4), pick=st.integers(0, 2**16))
def test_mutated_npy(workdir, base, mutations, pick):
    run(workdir, "mutated", mutate(base, mutations), pick)


# Cases these tests found, kept so every run checks them.
FOUND = [
    # One Fortran-order row of shape (2, 2): contiguous, but not in C order (was read as C).
    npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2, 2)}", bytes(range(16))),
    # descr_to_dtype raises IndexError on an empty tuple (was not turned into a FormatError).
    npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), 'descr': ()}"),
    # Python 2 tokenizer retry raises tokenize.TokenError on an unclosed brace.
    npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)", bytes(12)),
    # Shapes numpy cannot allocate even when empty, and string dtypes of size 0.
    npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4)}"),
    npy_bytes("{'descr': '|S0', 'fortran_order': False, 'shape': (3,)}", b"abc"),
    npy_bytes("{'descr': ('<f4', (1,)), 'fortran_order': False, 'shape': (3,)}", bytes(12)),
]


@pytest.mark.parametrize("index", range(len(FOUND)))
def test_found_cases(workdir, index):
    for pick in range(0, 40, 3):
        run(workdir, "found", FOUND[index], pick)


@pytest.mark.parametrize("shape", [(1, 2, 2), (1, 3, 1, 2), (2, 1, 3), (1, 5), (4, 1, 1)])
def test_found_fortran_rows_raw(tmp_path, shape):
    """The Fortran-order case FOUND[0] through the raw-file path, which shares the reader."""
    expected = np.asfortranarray(np.arange(math.prod(shape), dtype=">i4").reshape(shape))
    path = os.fspath(tmp_path / "f.raw")
    with open(path, "wb") as f:
        f.write(expected.tobytes(order="F"))
    with npstream.open(path, dtype=">i4", shape=shape, order="F") as source:
        assert same_values(source.read(0, shape[0]), expected)
        assert same_values(source.read(shape[0] - 1, shape[0]), expected[-1:])


@FUZZ
@given(content=handmade_npy(), pick=st.integers(0, 2**16))
def test_handmade_header(workdir, content, pick):
    run(workdir, "handmade", content, pick)


@FUZZ
@given(
    version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]) | st.binary(min_size=2, max_size=2),
    rest=st.binary(max_size=300),
    pick=st.integers(0, 2**16),
)
def test_random_bytes_after_magic(workdir, version, rest, pick):
    run(workdir, "random", NPY_MAGIC + version + rest, pick)


def test_unmutated_files_read_equal(workdir):
    """The generators' starting point is sound: every valid file reads back exactly (no mutation)."""

    @settings(FUZZ, max_examples=min(EXAMPLES, 300))
    @given(base=valid_npy(), pick=st.integers(0, 2**16))
    def unmutated(base, pick):
        before = OUTCOMES.copy()
        run(workdir, "valid", base, pick)
        changed = OUTCOMES - before
        assert changed.keys() <= {"both read, equal", "npstream refuses by design: 0-d array"}, changed

    unmutated()
