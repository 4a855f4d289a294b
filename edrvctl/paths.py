"""Where things live on disk (XDG base directories). Shared by `serve` and the CLI; cheap to
import."""

from __future__ import annotations

import os
from pathlib import Path

APP = "edrvctl"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / APP


def config_file() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / "config.yaml"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / APP


def default_store() -> Path:
    return data_dir() / "edrvctl.db"


def token_file(store: Path) -> Path:
    """The admin token `serve` creates lives beside its store."""
    return store.parent / "token"


def server_file(store: Path) -> Path:
    """Where a running `serve` writes its URLs, so the CLI finds a local server by itself."""
    return store.parent / "server.json"


def write_secret(path: Path, text: str) -> None:
    """Create a file readable by its owner only (mode 0600 from the start, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
