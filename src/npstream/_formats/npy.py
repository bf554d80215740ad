"""The ``.npy`` format: parse a header into an :class:`ArrayLayout`.

A ``.npy`` file is a magic string ``\\x93NUMPY``, a version byte pair, a little-endian header
length (2 bytes in version 1.0, 4 bytes in 2.0 and 3.0), a header that is the text of a Python
dict literal (``descr``, ``fortran_order``, ``shape``; latin-1 up to 2.0, utf-8 in 3.0), then
the data. numpy's own readers in ``numpy.lib.format`` parse the header: they use
``ast.literal_eval`` (never ``eval``) and bound the header size. This module only turns their
answer, or their error, into npstream's terms.
"""

from __future__ import annotations

import functools
import io
import tokenize
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from .._errors import FormatError
from .._storage import ByteSource, open_stream
from .layout import ArrayLayout, Order, check_dtype, check_shape

__all__ = ["MAGIC", "describe_npy", "read_npy_layout"]

MAGIC = b"\x93NUMPY"


def _header_reader(version: tuple[int, int]) -> Callable[[BinaryIO], tuple[tuple, bool, np.dtype]]:
    if version == (1, 0):
        return npformat.read_array_header_1_0
    if version == (2, 0):
        return npformat.read_array_header_2_0
    # numpy has no public reader for 3.0 (utf-8 headers); np.load itself calls this one, which
    # numpy 2 moved from numpy.lib.format (no longer re-exported there) to numpy.lib._format_impl.
    impl = getattr(npformat, "_read_array_header", None)
    if impl is None:
        from numpy.lib import _format_impl  # type: ignore[attr-defined]

        impl = _format_impl._read_array_header  # type: ignore[attr-defined]
    return functools.partial(impl, version=version)


@functools.lru_cache(maxsize=1024)
def _parse_header(version: tuple[int, int], prefix: bytes) -> tuple[tuple, bool, np.dtype]:
    """numpy's parse of one header (its length field and text).

    Cached: the shards of one dataset repeat the same few headers, and numpy's parser
    (``ast.literal_eval``) was 60% of the time to open 10,000 shards. Errors are not cached.
    """
    return _header_reader(version)(io.BytesIO(prefix))


def _check_header_length(fp: BinaryIO, version: tuple[int, int], name: str, file_bytes: int) -> int:
    """Say "truncated" when the header length field points past the end; else the header's length."""
    start = fp.tell()
    field_size = 2 if version == (1, 0) else 4
    field = fp.read(field_size)
    fp.seek(start)
    if len(field) < field_size:
        raise FormatError(
            f"{name}: the file ends inside the .npy header's length field at byte {start + len(field)}; "
            "the file is truncated (was it still being written or copied?)"
        )
    header_bytes = int.from_bytes(field, "little")
    follow = file_bytes - (start + field_size)
    if header_bytes > follow:
        raise FormatError(
            f"{name}: the .npy header's length field says {header_bytes} bytes but only {max(follow, 0)} "
            "bytes follow it; the header is truncated or its length field corrupt (was the file "
            "still being written or copied?)"
        )
    return header_bytes


def read_npy_layout(
    fp: BinaryIO, *, path: str, file_bytes: int, member: str | None = None
) -> ArrayLayout:
    """Parse the ``.npy`` header at ``fp``'s position (``fp`` is ``path`` opened for reading)."""
    name = f"{path}[{member}]" if member else path
    start_pos = fp.tell()
    try:
        version = npformat.read_magic(fp)
    except ValueError as exc:
        fp.seek(start_pos)
        start = fp.read(8)
        if len(start) < 8:
            raise FormatError(
                f"{name}: only {len(start)} bytes, too short for a .npy header; the file is empty "
                "or truncated"
            ) from exc
        raise FormatError(
            f"{name}: not a .npy file (starts with {start!r}, expected {MAGIC!r} then a version); "
            "for raw binary data pass dtype= and shape= to npstream.open"
        ) from exc
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise FormatError(
            f"{name}: .npy format version {version[0]}.{version[1]} is not one numpy defines "
            "(1.0, 2.0, 3.0); the file is corrupt or from a newer numpy"
        )
    header_bytes = _check_header_length(fp, version, name, file_bytes)
    text_start = fp.tell() + (2 if version == (1, 0) else 4)
    _header_reader(version)  # outside the try: a missing reader is our bug
    prefix = fp.read(text_start - fp.tell() + header_bytes)
    try:
        shape, fortran, dtype = _parse_header(version, prefix)
    except Exception as exc:
        # Whatever numpy's parser raises on this header's text means the header is not valid. It
        # reports a non-dict, missing keys, a bad descr or code as ValueError, but hostile text
        # also gets SyntaxError, RecursionError or MemoryError from literal_eval, TokenError from
        # the tokenizer it retries 1.0/2.0 headers with (Python 2 files), and IndexError or
        # KeyError from descr_to_dtype (e.g. 'descr': ()).
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if detail.startswith("malformed node or string"):
            # literal_eval's words for a name, call or operator: say so without its object repr.
            detail = "it is not a plain dict literal (it holds code, a name or a call, which is never run)"
        elif detail.startswith("Header does not contain the correct keys"):
            detail += "; a header has exactly 'descr', 'fortran_order' and 'shape'"
        elif isinstance(exc, tokenize.TokenError):
            detail = "it is not a complete Python literal (a bracket or string is never closed)"
        if len(detail) > 300:
            detail = detail[:300] + "..."
        fp.seek(text_start)
        shown = fp.read(min(header_bytes, 120)).decode("utf-8" if version >= (3, 0) else "latin-1", "replace")
        shown = shown.strip()
        if shown and shown not in detail and repr(shown)[1:-1] not in detail:  # numpy may quote it
            detail += f" (the header reads {shown!r}{'...' if header_bytes > 120 else ''})"
        raise FormatError(
            f"{name}: the .npy {version[0]}.{version[1]} header is not valid: {detail}. "
            "The file is corrupt or was not written by numpy"
        ) from exc
    check_shape(tuple(shape), name)
    check_dtype(dtype, name)
    # Neither can be returned as declared: numpy allocates 'S0' as 'S1' and expands a subarray
    # dtype into extra dimensions. numpy.save writes neither.
    if dtype.subdtype is not None:
        raise FormatError(
            f"{name}: descr {dtype} is a subarray dtype; numpy.save never writes one at the top level "
            "(it moves the subarray into the shape), so the header is corrupt"
        )
    if dtype.kind in "SU" and dtype.itemsize == 0:
        raise FormatError(
            f"{name}: descr {dtype.str!r} is a string of size 0, so the array holds no values (numpy "
            "would allocate it as size 1). The header is corrupt or was not written by numpy.save"
        )
    # A 1-D or single-column array is laid out identically in both orders.
    order: Order = "F" if fortran and sum(n != 1 for n in shape[1:]) > 0 else "C"
    return ArrayLayout(
        path=path,
        format="npz" if member else "npy",
        dtype=dtype,
        shape=tuple(shape),
        order=order,
        offset=fp.tell(),
        file_bytes=file_bytes,
        header_version=version,
        member=member,
    )


def describe_npy(data: ByteSource) -> ArrayLayout:
    """The layout of the ``.npy`` file ``data`` (no consistency check)."""
    with open_stream(data) as fp:
        return read_npy_layout(fp, path=data.name, file_bytes=data.size)
