"""``.npz`` archives: find a member's ``.npy`` data inside the zip, to be read in place.

``np.savez`` stores members uncompressed (``ZIP_STORED``), so a member's bytes sit contiguously
in the archive after its local file header. ``zipfile`` finds the member (zip64 included); the
local header is read here because its extra field may differ in length from the central
directory's, and ``zipfile`` does not expose where the data starts. Compressed members
(``np.savez_compressed``) are refused: random access into a deflate stream means decompressing
from its start for every block. The message points to ``npstream convert``, which decompresses
the member once, sequentially, into a ``.npy``.
"""

from __future__ import annotations

import shlex
import struct
import zipfile
from typing import BinaryIO

from .._errors import FormatError, UsageError
from .._storage import ByteSource, open_stream
from .layout import ArrayLayout
from .npy import read_npy_layout

__all__ = ["describe_npz", "find_member", "npz_keys", "open_zip"]

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # APPNOTE.TXT 4.3.7, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_COMPRESSION = {
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def open_zip(fp: BinaryIO, path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fp)
    except zipfile.BadZipFile as exc:
        raise FormatError(
            f"{path}: not a valid .npz (zip) archive ({exc}); it is corrupt, truncated, or not "
            "written by numpy.savez"
        ) from exc


def _npy_name(path: str, member: str) -> str:
    """A suggested output name for ``member`` of ``path``: ``d.npz`` + ``x`` -> ``d-x.npy``."""
    stem = path[:-4] if path.lower().endswith(".npz") else path
    return f"{stem}-{member.replace('/', '-')}.npy"


def npz_keys(archive: zipfile.ZipFile) -> list[str]:
    """Array names as ``np.load`` shows them: member names without ``.npy``."""
    return [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]


def find_member(archive: zipfile.ZipFile, path: str, key: str | None) -> zipfile.ZipInfo:
    keys = npz_keys(archive)
    if key is None:
        if len(keys) == 1:
            return archive.infolist()[0]
        raise UsageError(
            f"{path}: the archive holds {len(keys)} arrays {keys}; choose one with key=..."
        )
    for candidate in (key, f"{key}.npy"):
        try:
            return archive.getinfo(candidate)
        except KeyError:
            pass
    raise UsageError(f"{path}: no array {key!r} in the archive; it holds {keys}")


def describe_npz(data: ByteSource, key: str | None) -> ArrayLayout:
    """The layout of member ``key`` of the ``.npz`` archive ``data`` (no consistency check)."""
    path, file_bytes = data.name, data.size
    with open_stream(data) as raw:
        archive = open_zip(raw, path)
        with archive:
            info = find_member(archive, path, key)
            member = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            name = f"{path}[{member}]"
            if info.flag_bits & 0x1:
                raise FormatError(f"{name}: the member is encrypted; npstream cannot read it")
            if info.compress_type != zipfile.ZIP_STORED:
                method = _COMPRESSION.get(info.compress_type, f"method {info.compress_type}")
                raise FormatError(
                    f"{name}: the member is {method}-compressed (np.savez_compressed); npstream "
                    "reads members in place and would have to decompress from the start for every "
                    f"block. Convert it once: `npstream convert {shlex.quote(path)} "
                    f"{shlex.quote(_npy_name(path, member))} --key {shlex.quote(member)}` (streams the "
                    "member out in bounded memory), or re-save with "
                    "np.savez (uncompressed)"
                )
            raw.seek(info.header_offset)
            local = raw.read(_LOCAL_HEADER.size)
            if len(local) < _LOCAL_HEADER.size or local[:4] != _LOCAL_MAGIC:
                raise FormatError(
                    f"{name}: the zip directory points at offset {info.header_offset}, where "
                    "there is no member header; the archive is corrupt"
                )
            fields = _LOCAL_HEADER.unpack(local)
            name_len, extra_len = fields[-2], fields[-1]
            data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            raw.seek(data_start)
            layout = read_npy_layout(raw, path=path, file_bytes=file_bytes, member=member)
            data_end = data_start + info.file_size
            if layout.offset + layout.data_bytes > data_end:
                raise FormatError(
                    f"{name}: the header says {layout.data_bytes} data bytes but the zip member "
                    f"holds only {data_end - layout.offset}; the archive is corrupt"
                )
            return layout
