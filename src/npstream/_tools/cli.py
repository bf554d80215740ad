"""The ``npstream`` command line: ``npstream info PATH... [--key K] [--json] [-o KEY=VALUE]``.

Paths may be object-store URLs; ``info`` then reads only each object's header (one request in
the common case). Credentials come from the environment (``AWS_*``, ...) or ``-o`` options.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import FormatError, NpstreamError
from .._formats.layout import ArrayLayout, check_fits
from .._formats.open import describe_bytes, expand_paths, sniff_format
from .._storage import open_bytes

__all__ = ["main"]


def _info(layout: ArrayLayout) -> dict[str, Any]:
    problem = None
    if layout.format != "hdf5":  # h5py validated the file when it opened the dataset
        try:
            check_fits(layout)
        except FormatError as exc:
            problem = str(exc)
    addressable = layout.offset >= 0
    end = layout.offset + layout.data_bytes
    return {
        "path": layout.path,
        "key": layout.member,
        "format": layout.format,
        "header_version": ".".join(map(str, layout.header_version)) if layout.header_version else None,
        "dtype": layout.dtype.str if layout.dtype.names is None else str(layout.dtype.descr),
        "shape": list(layout.shape),
        "order": layout.order,
        "offset": layout.offset if addressable else None,
        "row_bytes": layout.row_bytes,
        "data_bytes": layout.data_bytes,
        "file_bytes": layout.file_bytes,
        "consistent": problem is None,
        "trailing_bytes": max(layout.file_bytes - end, 0) if addressable and layout.format != "npz" else None,
        "problem": problem,
    }


def _print_text(info: dict[str, Any]) -> None:
    title = info["path"] + (f" [{info['key']}]" if info["key"] else "")
    print(title)
    version = f" (header {info['header_version']})" if info["header_version"] else ""
    print(f"  format       {info['format']}{version}")
    print(f"  dtype        {info['dtype']}")
    print(f"  shape        {tuple(info['shape'])}  order {info['order']}")
    offset = "n/a (chunked)" if info["offset"] is None else info["offset"]
    print(f"  data offset  {offset}")
    print(f"  row bytes    {info['row_bytes']:,}")
    print(f"  data bytes   {info['data_bytes']:,}")
    print(f"  file bytes   {info['file_bytes']:,}")
    if info["consistent"]:
        trailing = f" ({info['trailing_bytes']:,} bytes after the data)" if info["trailing_bytes"] else ""
        print(f"  consistent   yes{trailing}")
    else:
        print(f"  consistent   NO: {info['problem']}")


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("(", "").replace(")", "").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not comma-separated integers") from None


def _attach_shape_values(argv: Sequence[str]) -> list[str]:
    """``--shape -1,256`` -> ``--shape=-1,256``: argparse would take ``-1,256`` for an option."""
    args = list(argv)
    for i in range(len(args) - 1):
        if args[i] == "--shape" and args[i + 1][:1] == "-" and args[i + 1][1:2].isdigit():
            args[i : i + 2] = [f"--shape={args[i + 1]}"]
            break
    return args


def _parse_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"storage option {text!r} is not KEY=VALUE")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npstream", description="Inspect and stream on-disk NumPy arrays.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe the arrays in files without reading their data")
    info.add_argument("paths", nargs="+", help=".npy, .npz, HDF5 or raw files, or globs")
    info.add_argument("--key", help=".npz member or HDF5 dataset path")
    info.add_argument("--json", action="store_true", help="print a JSON list of objects")
    info.add_argument("--dtype", help="raw files: numpy dtype, e.g. '<f4'")
    info.add_argument("--shape", type=_parse_shape, help="raw files: e.g. -1,256")
    info.add_argument("--offset", type=int, default=0, help="raw files: byte offset of the data")
    info.add_argument("--order", choices=("C", "F"), default="C", help="raw files: memory order")
    info.add_argument(
        "-o",
        "--storage-option",
        type=_parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="object stores: a storage option, e.g. -o endpoint=http://127.0.0.1:9000 -o allow_http=true",
    )
    args = parser.parse_args(_attach_shape_values(sys.argv[1:] if argv is None else argv))

    results: list[dict[str, Any]] = []
    failed = False
    storage_options = dict(args.storage_option) or None
    try:
        paths = expand_paths(args.paths, storage_options=storage_options)
    except (NpstreamError, OSError, ImportError) as exc:
        print(f"npstream: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        try:
            data = open_bytes(path, storage_options=storage_options)
            try:
                # One --key serves a mixed list: it applies to the .npz and HDF5 files only.
                key = args.key if args.dtype is None and sniff_format(data) in ("npz", "hdf5") else None
                layout = describe_bytes(
                    data, key=key, dtype=args.dtype, shape=args.shape, offset=args.offset, order=args.order
                )
            finally:
                data.close()
        except (NpstreamError, OSError, ImportError) as exc:
            failed = True
            print(f"npstream: {exc}", file=sys.stderr)
            if args.json:
                results.append({"path": path, "error": str(exc)})
            continue
        entry = _info(layout)
        failed |= not entry["consistent"]
        results.append(entry)
        if not args.json:
            _print_text(entry)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
