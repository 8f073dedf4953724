"""PEP 517 build backend of the ``meridian`` package: maturin, tagging wheels manylinux.

maturin's own PEP 517 hooks build with ``--compatibility off`` (a ``linux_x86_64`` tag, which
PyPI refuses) unless the build arguments name a compatibility. This backend passes
``--compatibility`` from ``[tool.maturin] compatibility`` in pyproject.toml instead, so
``pip wheel ./python`` gives the same tag as ``maturin build``, after maturin's audit
checked the extension's glibc symbol versions against it. Build arguments given by the
caller (``MATURIN_PEP517_ARGS`` or ``--config-settings build-args=...``) are kept, and a
``--compatibility`` among them wins. Everything else is maturin's.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Dict, List, Mapping, Optional

import maturin
from maturin import *  # noqa: F401,F403 - the other PEP 517 hooks, unchanged

if sys.version_info >= (3, 11):
    import tomllib
else:  # maturin depends on tomli on older Pythons
    import tomli as tomllib


def _caller_args(config_settings: Optional[Mapping[str, Any]]) -> List[str]:
    """The build arguments the caller gave, as maturin would read them."""
    given: Any = None
    if config_settings:
        given = config_settings.get("maturin.build-args", config_settings.get("build-args"))
    if given is None:
        return shlex.split(os.environ.get("MATURIN_PEP517_ARGS", ""))
    if isinstance(given, str):
        return shlex.split(given)
    return [str(a) for a in given]


def _compatibility() -> Optional[str]:
    with open("pyproject.toml", "rb") as f:
        value = tomllib.load(f).get("tool", {}).get("maturin", {}).get("compatibility")
    return None if value is None else str(value)


def _settings(config_settings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    args = _caller_args(config_settings)
    compatibility = _compatibility()
    if compatibility and "--compatibility" not in args and "--manylinux" not in args:
        args = ["--compatibility", compatibility, *args]
    settings = dict(config_settings or {})
    settings.pop("build-args", None)
    settings["maturin.build-args"] = shlex.join(args)
    return settings


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Mapping[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    """maturin's ``build_wheel``, tagged with pyproject.toml's compatibility."""
    return str(
        maturin.build_wheel(wheel_directory, _settings(config_settings), metadata_directory)
    )
