"""Reports: result files in, markdown and plots out; no model is ever run here.

One module per experiment (:mod:`.table1`, :mod:`.rate_accuracy`,
:mod:`.dynamic`, :mod:`.privacy`, :mod:`.reuse`), each with ``write_*(result, out)``
(save a typed result, then render it) and ``render_*(out)`` (re-render from the files alone), and
the helpers they share in :mod:`.common`. :func:`render_report` is what
``collabinfer report DIR`` runs: it renders whichever result files ``DIR`` has.

    >>> render_report(Path("results/demo"))  # doctest: +SKIP
    [PosixPath('results/demo/table1.md'), PosixPath('results/demo/table1_latency_cdf.png'), ...]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from collabinfer.errors import ConfigError
from collabinfer.report.dynamic import render_dynamic, write_dynamic
from collabinfer.report.privacy import render_privacy, write_privacy
from collabinfer.report.rate_accuracy import render_rate_accuracy, write_rate_accuracy
from collabinfer.report.reuse import render_reuse, write_reuse
from collabinfer.report.table1 import render_table1, write_table1

__all__ = [
    "RENDERERS",
    "render_dynamic",
    "render_privacy",
    "render_rate_accuracy",
    "render_report",
    "render_reuse",
    "render_table1",
    "write_dynamic",
    "write_privacy",
    "write_rate_accuracy",
    "write_reuse",
    "write_table1",
]

# result file -> the report that renders it, in the order they are rendered
RENDERERS: dict[str, Callable[[Path], list[Path]]] = {
    "table1.json": render_table1,
    "rate_accuracy.json": render_rate_accuracy,
    "dynamic.json": render_dynamic,
    "privacy.json": render_privacy,
    "reuse.json": render_reuse,
}


def render_report(out: Path) -> list[Path]:
    """Re-render every experiment whose result file is in ``out``; the files written.

    A folder with none of :data:`RENDERERS`' files (or no folder) is a
    :class:`~collabinfer.errors.ConfigError` saying which files were looked for;
    a broken result file is the ConfigError its schema raises.
    """
    if not out.is_dir():
        raise ConfigError(f"no results folder {out}")
    found = [name for name in RENDERERS if (out / name).is_file()]
    if not found:
        raise ConfigError(f"no result files in {out}: looked for {', '.join(RENDERERS)}")
    return [path for name in found for path in RENDERERS[name](out)]
