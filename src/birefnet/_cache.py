"""The package's cache folder on disk (GT skeletons of ``birefnet eval``, compiled CPU kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$BIREFNET_CACHE``, else ``$XDG_CACHE_HOME/birefnet``, else ``~/.cache/birefnet``."""
    if os.environ.get("BIREFNET_CACHE"):
        return Path(os.environ["BIREFNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "birefnet"
