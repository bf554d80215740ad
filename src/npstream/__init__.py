"""npstream: stream NumPy arrays larger than memory from disk, by rows.

``npstream.open`` reads ``.npy`` (every header version), raw binary, ``.npz`` members, HDF5
datasets and lists or globs of shards, with explicit positional reads into caller buffers:
no memory maps, no loading. ``npstream.batches`` streams any of them as numpy batches (seeded
shuffles, shards, exact resume); ``npstream.tf`` turns them into a ``tf.data.Dataset``.
Importing ``npstream`` alone never imports a framework or h5py.
"""

from ._core.batches import Batches, batches
from ._errors import FormatError, NpstreamError, ReadError, UsageError
from ._formats.concat import ConcatSource
from ._formats.file import FileSource
from ._formats.hdf5 import HDF5Source
from ._formats.layout import ArrayLayout
from ._formats.npy_writer import NpyWriter, save
from ._formats.open import open
from ._formats.source import ArraySource

__all__ = [
    "ArrayLayout",
    "ArraySource",
    "Batches",
    "ConcatSource",
    "FileSource",
    "FormatError",
    "HDF5Source",
    "NpstreamError",
    "NpyWriter",
    "ReadError",
    "UsageError",
    "batches",
    "open",
    "save",
]

__version__ = "0.1.0"
