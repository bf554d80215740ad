"""The byte layer: local files and (later) remote objects behind one small contract.

``open_bytes(path)`` is the only entry point the formats use; it picks the implementation.
"""

from __future__ import annotations

from .base import ByteSource, byte_view, open_stream, read_bytes
from .local import LocalFile

__all__ = ["ByteSource", "LocalFile", "byte_view", "open_bytes", "open_stream", "read_bytes"]


def open_bytes(path: str) -> ByteSource:
    """The :class:`ByteSource` for ``path``."""
    return LocalFile(path)
