"""The CLI. The Typer app (`app`, `run`, `state`, `ALIASES`) is in `edrvctl.cli.main`, imported
on first use: `edrvctl cs list` (`edrvctl.cli.fast`) and TAB completion run without Typer and
httpx (~0.2 s of imports)."""

from __future__ import annotations

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: `cs list` does not)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ALIASES", "app", "run", "state"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from importlib import import_module

        return getattr(import_module("edrvctl.cli.main"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
