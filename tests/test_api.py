"""The public surface: ``npstream.__all__``, and what ``import npstream`` pulls in."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import npstream


def test_every_public_name_is_importable():
    assert npstream.__all__
    for name in npstream.__all__:
        assert hasattr(npstream, name), name
        namespace: dict = {}
        exec(f"from npstream import {name}", namespace)
        assert namespace[name] is getattr(npstream, name)


def test_all_is_sorted_and_unique():
    assert list(npstream.__all__) == sorted(npstream.__all__)
    assert len(set(npstream.__all__)) == len(npstream.__all__)


def test_public_names_come_from_private_modules():
    for name in npstream.__all__:
        module = getattr(npstream, name).__module__
        assert module.startswith("npstream._"), (name, module)
        assert getattr(importlib.import_module(module), name) is getattr(npstream, name)


def test_errors_are_also_builtins():
    assert issubclass(npstream.FormatError, npstream.NpstreamError)
    assert issubclass(npstream.FormatError, ValueError)
    assert issubclass(npstream.UsageError, npstream.NpstreamError)
    assert issubclass(npstream.UsageError, ValueError)
    assert issubclass(npstream.ReadError, npstream.NpstreamError)
    assert issubclass(npstream.ReadError, OSError)


FRAMEWORKS = ("tensorflow", "h5py", "keras", "torch", "torchdata", "jax", "jaxlib", "grain", "absl")


def test_import_does_not_import_a_framework():
    code = (
        "import json, sys\n"
        "import npstream\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{(*FRAMEWORKS, 'npstream')!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert "npstream" in loaded  # the probe itself works
    assert [m for m in loaded if not m.startswith("npstream")] == []


def test_adapters_are_importable_and_say_what_to_install():
    """Each adapter imports its own framework only; a missing one names the extra to install."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def fake(name, *args, **kwargs):\n"
        "    if name.split('.')[0] == sys.argv[1]:\n"
        "        raise ImportError('no ' + name)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = fake\n"
        "try:\n"
        "    __import__('npstream.' + sys.argv[2])\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    for framework in ("torch", "grain", "jax"):
        command = [sys.executable, "-c", code, framework, framework]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        assert f"pip install 'npstream[{framework}]'" in result.stdout
