"""The running Kassa's version: `kassa --version` and `kassa_build_info{version}`."""

from __future__ import annotations

import importlib.metadata


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), not a copy kept in the code."""
    try:
        return importlib.metadata.version("kassa")
    except importlib.metadata.PackageNotFoundError:  # running from a tree never installed
        return "unknown"
