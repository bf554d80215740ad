"""Optional native helpers, compiled from C on first use and cached per machine.

npstream ships C sources, never binaries: a helper is compiled with the system's C compiler
(``cc``, or ``$CC``) the first time it is needed, into a per-user cache directory
(``$NPSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/npstream``, else ``~/.cache/npstream``),
keyed by a hash of the source and the platform, and loaded with ``ctypes``. Compiling takes a
fraction of a second; concurrent processes each compile to a private temporary file and rename
it into place, so nobody loads a half-written library.

Nothing requires a helper: when there is no compiler, the compile fails, the cache is not
writable, or ``NPSTREAM_NATIVE=0`` is set, :func:`load` returns None and callers use their
pure-Python path, which the test suite runs too (``NPSTREAM_NATIVE=0``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading

__all__ = ["cache_dir", "load", "unavailable_reason"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def cache_dir() -> str:
    base = os.environ.get("NPSTREAM_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "npstream")
    return os.path.join(base, "native")


def unavailable_reason(name: str) -> str | None:
    """Why :func:`load` returned None for ``name`` (after it was called), else None."""
    return _reasons.get(name)


def load(name: str) -> ctypes.CDLL | None:
    """The compiled helper ``name`` (``_native/<name>.c``), or None (see the module docstring)."""
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = _build(name)
            except Exception as exc:  # any failure means: use the Python path
                _reasons[name] = f"{type(exc).__name__}: {exc}"
                _loaded[name] = None
        return _loaded[name]


def _build(name: str) -> ctypes.CDLL | None:
    if os.environ.get("NPSTREAM_NATIVE", "").strip() == "0":
        _reasons[name] = "disabled by NPSTREAM_NATIVE=0"
        return None
    if sys.platform != "linux":
        _reasons[name] = f"native helpers are built on Linux only, not {sys.platform}"
        return None
    with open(os.path.join(_HERE, f"{name}.c"), "rb") as fp:
        source = fp.read()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        _reasons[name] = "no C compiler (cc) found"
        return None
    key = hashlib.sha256(source + platform.machine().encode() + platform.libc_ver()[1].encode())
    directory = os.path.join(cache_dir(), key.hexdigest()[:16])
    library = os.path.join(directory, f"lib{name}.so")
    if not os.path.exists(library):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".lib{name}-", suffix=".so", dir=directory)
        os.close(fd)
        try:
            command = [compiler, "-O2", "-shared", "-fPIC", "-o", tmp, os.path.join(_HERE, f"{name}.c")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                _reasons[name] = f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
                return None
            os.replace(tmp, library)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(library, use_errno=True)
