"""The ``sagaz`` command line: ``app`` (typer), ``main(argv) -> exit code`` for in-process use,
and ``run()`` for the console script."""

from sagaz.cli.app import app, main, run

__all__ = ["app", "main", "run"]
