"""Local files, read with positional reads (``os.preadv``) through a bounded cache of descriptors.

Why not ``np.memmap``: mapped pages count as the process's resident memory, so streaming a
file through a map grows RSS to the file's size, and a file truncated while mapped kills the
process with SIGBUS. ``os.preadv`` into the caller's buffer keeps memory at the buffer's size,
turns truncation into an ordinary exception, needs no shared file position (so any number of
threads can read through one descriptor), and costs one syscall per contiguous range wherever
it starts.

Why a cache of descriptors: a folder of 100,000 shards cannot keep a descriptor per shard open
under the usual ``ulimit -n 1024`` (the open fails with ``EMFILE``). So every :class:`LocalFile`
records its size and identity (device, inode, modification time, size) when it is opened, and
its descriptor lives in one process-wide LRU cache. The rule for the cache's size:

    capacity = max(8, min(RLIMIT_NOFILE soft limit // 2, 65536))

read when the cache is first used: npstream takes at most half of the process's descriptors and
leaves the other half to the application (TensorFlow, sockets, logs). If an open still fails with
``EMFILE``/``ENFILE`` (the application holds more than its half), the cache closes every idle
descriptor, shrinks to half of what it held, and retries once. A file whose descriptor was
closed this way is reopened on its next read, and its identity is compared: a file replaced,
rewritten or resized in between is a :class:`~npstream.ReadError` naming it, never other bytes.
A file whose descriptor stays cached keeps reading the file it opened, even if the path is
replaced (as a plain open descriptor would).

Concurrency: a descriptor is reference-counted while a read uses it, so evicting or closing it
only marks it retired and the last reader closes it; no ``preadv`` ever runs on a closed (or
reused) descriptor number. The cache's lock guards only bookkeeping, never a read or an open.

Fork: a forked child inherits the parent's descriptors (the same open files, and positional
reads share no file position); the child's cache keeps using them, forgets the reads that were
in flight in parent threads (those threads do not exist in the child), and closes only its own
copies. Descriptors are opened with ``O_CLOEXEC``, so ``exec``'d programs inherit none.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import stat as stat_module
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator

from .._errors import ReadError
from .preads import read_many

__all__ = ["LocalFile", "cache_capacity", "open_readonly", "pread_into"]

_MAX_CAPACITY = 65536
_MIN_CAPACITY = 8


def open_readonly(path: str) -> int:
    """Open ``path`` for reading only; directories get a message that suggests a glob."""
    return _open_stat(path)[0]


def _open_stat(path: str) -> tuple[int, os.stat_result]:
    """:func:`open_readonly` and the file's ``fstat`` (taken anyway, to refuse directories)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if stat_module.S_ISDIR(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(
            21,
            f"{path} is a directory; to read the arrays in it pass a glob such as "
            f"'{os.path.join(path, '*.npy')}' or a list of files",
            path,
        )
    return fd, st


def pread_into(fd: int, buf: memoryview, offset: int, name: str) -> None:
    """Fill ``buf`` from byte ``offset`` of ``fd``; a short read means the file shrank."""
    done = 0
    total = len(buf)
    while done < total:
        try:
            got = os.preadv(fd, [buf[done:] if done else buf], offset + done)
        except OSError as exc:
            raise ReadError(
                exc.errno,
                f"{name}: reading {total - done} bytes at offset {offset + done} failed: "
                f"{exc.strerror or exc}",
            ) from exc
        if got == 0:
            size = os.fstat(fd).st_size
            raise ReadError(
                f"{name}: expected {total} bytes at offset {offset} but the file ends at "
                f"{size} bytes; it was truncated or replaced after it was opened"
            )
        done += got


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def cache_capacity() -> int:
    """How many descriptors the cache keeps open (the rule is in the module docstring)."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to read, keep a modest number open
        return 256
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return _MAX_CAPACITY
    return max(_MIN_CAPACITY, min(soft // 2, _MAX_CAPACITY))


class _Handle:
    """One open descriptor, with the number of reads using it right now."""

    __slots__ = ("fd", "retired", "slot", "users")

    def __init__(self, fd: int, slot: _Slot) -> None:
        self.fd = fd
        self.users = 0
        self.retired = False  # out of the cache; the last user closes it
        self.slot = slot


class _Slot:
    """What a :class:`LocalFile` shares with the cache (never the file object itself, so files
    are garbage collected while their descriptor is cached)."""

    __slots__ = ("closed", "handle")

    def __init__(self) -> None:
        self.handle: _Handle | None = None
        self.closed = False


class _DescriptorCache:
    """The process-wide LRU of open descriptors (see the module docstring).

    Files closed by the garbage collector are closed through :meth:`close` from a finalizer,
    which may run at any allocation, including one made while this thread holds ``lock``: so
    ``close`` never waits for the lock. It queues the file, and whoever holds the lock (or
    takes it next) closes what is queued before letting go (``_locked``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: OrderedDict[_Handle, None] = OrderedDict()  # least recently used first
        self.capacity = 0  # read from RLIMIT_NOFILE on first use
        self._closing: collections.deque[_Slot] = collections.deque()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # a parent thread may have held it at the fork
        for handle in list(self.handles):
            handle.users = 0  # the readers were threads of the parent

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self.lock:
            yield
            self._close_queued()
        while self._closing and self.lock.acquire(blocking=False):  # queued after we looked
            try:
                self._close_queued()
            finally:
                self.lock.release()

    def _close_queued(self) -> None:
        """Close the files :meth:`close` queued (lock held)."""
        while self._closing:
            slot = self._closing.popleft()
            if slot.handle is not None:
                self._retire(slot.handle)

    def _retire(self, handle: _Handle) -> None:
        """Take ``handle`` out of the cache (lock held); close it now if no read uses it."""
        self.handles.pop(handle, None)
        if handle.slot.handle is handle:
            handle.slot.handle = None
        handle.retired = True
        if handle.users == 0 and handle.fd >= 0:
            os.close(handle.fd)
            handle.fd = -1

    def _trim(self, limit: int) -> None:
        """Retire least recently used handles until at most ``limit`` are cached (lock held)."""
        while len(self.handles) > limit:
            self._retire(next(iter(self.handles)))

    def _open(self, path: str) -> tuple[int, os.stat_result]:
        try:
            return _open_stat(path)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        # The application holds more descriptors than the cache left it: give back ours.
        with self._locked():
            held = len(self.handles)
            self.capacity = max(_MIN_CAPACITY, held // 2)
            self._trim(0)
        try:
            return _open_stat(path)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            raise OSError(
                exc.errno,
                f"{path}: cannot open: too many open files ({exc.strerror}); npstream had closed "
                f"all of its {held} cached descriptors, so the rest of the process holds the limit. "
                "Raise it (ulimit -n) or close files",
                path,
            ) from exc

    def insert(self, slot: _Slot, fd: int) -> _Handle:
        """Cache ``fd`` as ``slot``'s descriptor and return it in use (one user)."""
        with self._locked():
            if slot.closed:
                os.close(fd)
                raise _Closed
            handle = slot.handle
            if handle is not None:  # another thread reopened the file meanwhile
                os.close(fd)
            else:
                handle = slot.handle = _Handle(fd, slot)
                if not self.capacity:
                    self.capacity = cache_capacity()
                self._trim(self.capacity - 1)
                self.handles[handle] = None
            handle.users += 1
            self.handles.move_to_end(handle)
            return handle

    def acquire(self, slot: _Slot) -> _Handle | None:
        """``slot``'s cached descriptor in use (one more user), or ``None`` if it must be opened."""
        with self._locked():
            if slot.closed:
                raise _Closed
            handle = slot.handle
            if handle is None:
                return None
            handle.users += 1
            self.handles.move_to_end(handle)
            return handle

    def release(self, handle: _Handle) -> None:
        with self._locked():
            handle.users -= 1
            if handle.users == 0 and handle.retired and handle.fd >= 0:
                os.close(handle.fd)
                handle.fd = -1

    def close(self, slot: _Slot, wait: bool = False) -> None:
        """Close ``slot``'s file; ``wait=False`` (finalizers) never blocks, see the class docstring."""
        slot.closed = True
        self._closing.append(slot)
        if self.lock.acquire(blocking=wait):  # else the holder closes it before letting go
            try:
                self._close_queued()
            finally:
                self.lock.release()


class _Closed(Exception):
    """Raised inside this module when a closed file is read; turned into a ReadError."""


_cache = _DescriptorCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_cache.after_fork_in_child)


class LocalFile:
    """A :class:`~npstream._storage.base.ByteSource` over a local file.

    ``size`` and ``identity`` are taken when the file is opened; the descriptor lives in the
    process-wide cache and is reopened (and the identity checked) when it was evicted.
    """

    kind = "local"

    def __init__(self, path: str, *, _known: tuple[int, str] | None = None) -> None:
        self.name = path
        self._slot = _Slot()
        # The finalizer holds the slot, not the file: it runs when the file is garbage collected.
        self._closer = weakref.finalize(self, _cache.close, self._slot)
        if _known is not None:  # unpickled: open on first read, and check it is the same file
            self.size, self.identity = _known
            return
        fd, st = _cache._open(path)
        self.size = st.st_size
        self.identity = _identity(st)
        _cache.release(_cache.insert(self._slot, fd))

    def __reduce__(self):
        # The copy reopens the path lazily and checks it is still the file this one opened: a
        # worker must never read a replaced file through a layout parsed from the original.
        return (_restore, (self.name, self.size, self.identity))

    def __repr__(self) -> str:
        return f"LocalFile({self.name!r}, size={self.size})"

    @property
    def _fd(self) -> int:
        """The descriptor cached for this file now, -1 if none (for tests)."""
        handle = self._slot.handle
        return -1 if handle is None else handle.fd

    def _reopen(self) -> _Handle:
        fd, st = _cache._open(self.name)
        if _identity(st) != self.identity:
            os.close(fd)
            raise ReadError(
                errno.ESTALE,
                f"{self.name}: the file changed since it was opened (it was {self.size} bytes, "
                f"identity {self.identity}; now {st.st_size} bytes, identity {_identity(st)}); it "
                "was replaced or rewritten, so its rows may no longer be where they were. Reopen "
                "it (npstream.open) to read the new contents",
            )
        return _cache.insert(self._slot, fd)

    def _acquire(self) -> _Handle:
        try:
            handle = _cache.acquire(self._slot)
            if handle is None:
                try:
                    handle = self._reopen()
                except FileNotFoundError as exc:
                    raise ReadError(
                        errno.ENOENT,
                        f"{self.name}: the file was removed or renamed since it was opened "
                        f"({exc.strerror})",
                    ) from exc
        except _Closed:
            raise ReadError(f"{self.name}: the source was closed") from None
        return handle

    def read_into(self, offset: int, buf: memoryview) -> None:
        handle = self._acquire()
        try:
            pread_into(handle.fd, buf, offset, self.name)
        finally:
            _cache.release(handle)

    def read_many(self, offsets, lengths, out, destinations) -> None:  # type: ignore[no-untyped-def]
        """Many ranges in one call (see :func:`~npstream._storage.preads.read_many`): an optional
        ByteSource method that formats use for scattered rows when a source has it."""
        handle = self._acquire()
        try:
            read_many(handle.fd, offsets, lengths, out, destinations, self.name)
        finally:
            _cache.release(handle)

    def close(self) -> None:
        if self._closer.detach() is not None:
            _cache.close(self._slot, wait=True)


def _restore(path: str, size: int, identity: str) -> LocalFile:
    return LocalFile(path, _known=(size, identity))
