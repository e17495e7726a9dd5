"""The ``collabinfer`` command: train, profile, serve, run and measure.

Commands are thin: they parse options into configs, call the library, and
render what it returns (one module per group: :mod:`.models`, :mod:`.demo`,
:mod:`.experiment`, :mod:`.report`, :mod:`.serve`). Every command catches
:class:`~collabinfer.errors.CollabInferError` and prints its message (exit
code 2) instead of a traceback: a missing dataset or a corrupt checkpoint is
the user's to fix, and the message says how.
"""

from __future__ import annotations

import typer

from collabinfer.cli.demo import demo
from collabinfer.cli.experiment import experiment_app
from collabinfer.cli.models import models, profile, train
from collabinfer.cli.packaging import pack
from collabinfer.cli.report import report
from collabinfer.cli.serve import relay, run, serve

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
for command in (models, train, pack, profile, demo, serve, run, relay):
    app.command(help=command.__doc__)(command)
app.command("report", help=report.__doc__)(report)
app.add_typer(experiment_app, name="experiment")


def main() -> None:
    app()
