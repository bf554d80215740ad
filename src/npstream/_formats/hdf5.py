"""HDF5 datasets through h5py (optional extra ``hdf5``).

HDF5 owns the on-disk layout (contiguous or chunked, filters, byte order), so reads go through
``Dataset.read_direct`` straight into the caller's buffer; HDF5 converts byte order into the
destination's dtype. h5py serialises every call under one global lock, and this source adds
its own lock around each read, so concurrent readers are safe but do not overlap: HDF5 reads
(and decompression) run one at a time per process.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import numpy as np

from .._errors import FormatError, ReadError, UsageError
from .layout import ArrayLayout, check_dtype, check_shape, native_dtype
from .source import SourceBase

__all__ = ["HDF5Source", "HDF5_MAGIC", "import_h5py"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "reading HDF5 needs h5py: pip install 'npstream[hdf5]' (or pip install h5py)"
        ) from exc
    return h5py


class HDF5Source(SourceBase):
    """Rows of one HDF5 dataset. Reopens the file lazily in each process (fork or spawn)."""

    def __init__(self, path: str, key: str | None):
        self.path, self.key = path, key
        self._lock = threading.Lock()
        self._pid = -1
        self._file: Any = None
        try:
            self._describe(path)
        except BaseException:
            self.close()  # a refused dataset must not keep its file open
            raise

    def _describe(self, path: str) -> None:
        dataset = self._dataset()
        self.name = f"{path}[{dataset.name}]"
        stored = dataset.dtype
        # Before check_dtype: h5py shows variable-length data as dtype object, which is not a pickle.
        if stored.hasobject or (stored.kind in "SU" and stored.itemsize == 0):
            raise FormatError(
                f"{self.name}: the dataset holds variable-length data (h5py dtype {stored}), which "
                "cannot be read into fixed-size buffers; store fixed-length strings ('S<n>') or "
                "numbers instead"
            )
        check_dtype(stored, self.name)
        if dataset.shape is None:
            raise FormatError(f"{self.name}: the dataset has no dataspace (empty attribute-like dataset)")
        check_shape(tuple(dataset.shape), self.name)
        # An HDF5 array type (numpy subarray dtype) reads as extra trailing dimensions.
        element, element_shape = stored.subdtype if stored.subdtype else (stored, ())
        self._expand = bool(element_shape)
        self.shape = (*(int(n) for n in dataset.shape), *element_shape)
        self.dtype = native_dtype(element)
        self.chunk_rows = int(dataset.chunks[0]) if dataset.chunks else 1
        offset = dataset.id.get_offset()
        self.layout = ArrayLayout(
            path=path,
            format="hdf5",
            dtype=element,
            shape=self.shape,
            order="C",
            offset=-1 if offset is None else int(offset),
            file_bytes=os.stat(path).st_size,
            member=dataset.name,
        )

    def _dataset(self) -> Any:
        h5py = import_h5py()
        if self._pid != os.getpid():
            # HDF5 handles do not survive fork reliably: every process opens its own.
            if os.path.isdir(self.path):
                raise IsADirectoryError(21, f"{self.path} is a directory, not an HDF5 file", self.path)
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                if not os.path.exists(self.path):
                    raise FileNotFoundError(2, f"{self.path}: no such file", self.path) from exc
                if not os.access(self.path, os.R_OK):
                    raise PermissionError(13, f"{self.path}: permission denied", self.path) from exc
                raise FormatError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
            self._pid = os.getpid()
        if self.key is None:
            names = [k for k, v in self._file.items() if isinstance(v, h5py.Dataset)]
            if len(names) != 1:
                raise UsageError(
                    f"{self.path}: choose a dataset with key=...; top-level datasets: {names}"
                )
            self.key = names[0]
        try:
            dataset = self._file[self.key]
        except KeyError:
            found: list[str] = []
            self._file.visititems(
                lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None
            )
            raise UsageError(
                f"{self.path}: no dataset {self.key!r}; datasets in the file: {found[:50]}"
            ) from None
        if not isinstance(dataset, h5py.Dataset):
            raise UsageError(f"{self.path}: {self.key!r} is a {type(dataset).__name__}, not a dataset")
        return dataset

    def __reduce__(self):
        return (HDF5Source, (self.path, self.key))

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file, self._pid = None, -1

    def _read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        with self._lock:
            dataset = self._dataset()
            try:
                if self._expand:  # h5py's read_direct cannot fill the expanded shape
                    out[...] = dataset[start:stop]
                else:
                    dataset.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
            except OSError as exc:
                raise ReadError(
                    exc.errno or errno.EIO, f"{self.name}: reading rows [{start}, {stop}) failed: {exc}"
                ) from exc
