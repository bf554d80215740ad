"""Any fsspec filesystem as a byte source: the escape hatch for stores obstore does not speak.

``npstream.open(path, filesystem=fs)`` reads ``path`` through ``fs`` (hf://, sftp://, webhdfs,
a forked DataLoader worker's own s3fs, ...). npstream does not depend on fsspec: the object is
duck-typed, and only ``fs.info(path)`` (size and, when the backend reports one, an ETag or
modification time), ``fs.cat_file(path, start, end)`` and, for globs, ``fs.glob(pattern)`` are
used. fsspec's HTTP backend returns the whole object when a server ignores ``Range`` (measured:
16 MiB for a 2 MiB range), so every answer's length is checked here: a wrong length is a
:class:`~npstream.ReadError`, never wrong data.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .._errors import ReadError, UsageError
from .parallel import PieceSizer, read_in_pieces

__all__ = ["FsspecObject", "glob_paths"]

_VERSION_KEYS = (
    "ETag", "etag", "e_tag", "generation", "version_id", "mtime", "LastModified", "last_modified",
)  # fmt: skip


def _check_filesystem(filesystem: Any) -> None:
    if not callable(getattr(filesystem, "cat_file", None)) or not callable(getattr(filesystem, "info", None)):
        raise UsageError(
            "filesystem= must be an fsspec filesystem (with cat_file and info), got "
            f"{type(filesystem).__name__}"
        )


def _display(filesystem: Any, path: str) -> str:
    """``path`` with its protocol, as the user would write it."""
    if "://" in path:
        return path
    unstrip = getattr(filesystem, "unstrip_protocol", None)
    try:
        return str(unstrip(path)) if callable(unstrip) else path
    except Exception:  # a backend's own naming must never hide the real error
        return path


class FsspecObject:
    """A :class:`~npstream._storage.base.ByteSource` over one file of an fsspec filesystem."""

    kind = "remote"

    def __init__(self, filesystem: Any, path: str) -> None:
        _check_filesystem(filesystem)
        self.filesystem = filesystem
        self.path = os.fspath(path)
        self.name = _display(filesystem, self.path)
        try:
            info = filesystem.info(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"{self.name}: no such file") from None
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"{self.name}: access denied ({exc})") from None
        except Exception as exc:
            raise ReadError(f"{self.name}: asking for its size failed: {type(exc).__name__}: {exc}") from None
        if info.get("type") == "directory":
            raise IsADirectoryError(
                errno.EISDIR, f"{self.name} is a directory; pass a glob such as '{self.name}/*.npy' or a list"
            )
        if info.get("size") is None:
            raise ReadError(f"{self.name}: the filesystem does not report the file's size")
        self.size = int(info["size"])
        version = next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), None)
        self.identity = f"{self.size}:{version}"
        self._sizer = PieceSizer()

    def __reduce__(self):
        return (FsspecObject, (self.filesystem, self.path))

    def __repr__(self) -> str:
        return f"FsspecObject({self.name!r}, size={self.size})"

    def close(self) -> None:
        """Nothing to release: the filesystem object owns its connections."""

    def read_into(self, offset: int, buf: memoryview) -> None:
        view = buf if buf.format == "B" and buf.ndim == 1 else buf.cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise ReadError(
                f"{self.name}: expected {len(view)} bytes at offset {offset} but the file is "
                f"{self.size} bytes long"
            )
        if len(view):
            read_in_pieces(self._read_range, offset, view, self._sizer)

    def _read_range(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        try:
            data = self.filesystem.cat_file(self.path, start=offset, end=end)
        except FileNotFoundError:
            raise ReadError(errno.ENOENT, f"{self.name}: the file was deleted after it was opened") from None
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"{self.name}: access denied ({exc})") from None
        except Exception as exc:
            raise ReadError(
                f"{self.name}: reading bytes [{offset}, {end}) failed: {type(exc).__name__}: {exc}"
            ) from None
        if len(data) != len(view):
            raise ReadError(
                f"{self.name}: asked for the {len(view)} bytes [{offset}, {end}) and got {len(data)}; "
                "the server ignored the Range header or the file changed after it was opened"
            )
        view[:] = data


def glob_paths(filesystem: Any, pattern: str) -> list[str]:
    """``filesystem.glob(pattern)``, sorted by name; no match is ``FileNotFoundError``."""
    _check_filesystem(filesystem)
    matches = sorted(filesystem.glob(pattern))
    if not matches:
        raise FileNotFoundError(errno.ENOENT, f"no files match the pattern {pattern!r}")
    return [_display(filesystem, m) if "://" in pattern else m for m in matches]
