"""npstream: stream NumPy arrays larger than memory from disk, by rows.

``npstream.open`` reads ``.npy`` (every header version), raw binary, ``.npz`` members, HDF5
datasets and lists or globs of shards, with explicit positional reads into caller buffers:
no memory maps, no loading. ``npstream.tf`` turns any source into a ``tf.data.Dataset``;
importing ``npstream`` alone never imports TensorFlow or h5py.
"""

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
    "ConcatSource",
    "FileSource",
    "FormatError",
    "HDF5Source",
    "NpstreamError",
    "NpyWriter",
    "ReadError",
    "UsageError",
    "open",
    "save",
]

__version__ = "0.1.0"
