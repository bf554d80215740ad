"""The byte layer: local files and remote objects behind one small contract.

``open_bytes(path)`` is the only entry point the formats use; it picks the implementation:
an fsspec filesystem when one is given, obstore for ``s3://``, ``gs://``, ``az://`` and
``http(s)://`` URLs, ``os.preadv`` for local paths. ``glob_remote`` lists object stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import ByteSource, byte_view, open_stream, read_bytes
from .local import LocalFile
from .urls import is_url

__all__ = [
    "ByteSource",
    "LocalFile",
    "byte_view",
    "glob_remote",
    "is_url",
    "open_bytes",
    "open_stream",
    "read_bytes",
]


def open_bytes(
    path: str, *, storage_options: Mapping[str, Any] | None = None, filesystem: Any = None
) -> ByteSource:
    """The :class:`ByteSource` for ``path`` (``storage_options`` apply to URLs only)."""
    if filesystem is not None:
        from .fsspec import FsspecObject

        return FsspecObject(filesystem, path)
    if is_url(path):
        from .remote import RemoteObject

        return RemoteObject(path, storage_options)
    return LocalFile(path)


def glob_remote(
    pattern: str, *, storage_options: Mapping[str, Any] | None = None, filesystem: Any = None
) -> list[str]:
    """Objects matching ``pattern`` (a URL, or any path of ``filesystem``), sorted by name."""
    if filesystem is not None:
        from .fsspec import glob_paths

        return glob_paths(filesystem, pattern)
    from .remote import glob_urls

    return glob_urls(pattern, storage_options)
