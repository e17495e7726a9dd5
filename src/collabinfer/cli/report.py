"""``collabinfer report DIR``: re-render markdown and plots from result files alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collabinfer.cli.console import console, fail
from collabinfer.errors import CollabInferError
from collabinfer.report import render_report

__all__ = ["report"]


def report(
    out: Annotated[Path, typer.Argument(help="a folder written by `demo` or `experiment`")],
) -> None:
    """Re-render markdown and plots from result files (no model is run)."""
    try:
        paths = render_report(out)
    except CollabInferError as exc:
        raise fail(exc) from exc
    for p in paths:
        console.print(f"wrote {p}")
