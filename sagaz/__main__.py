"""``python -m sagaz``: the same as the ``sagaz`` command."""

from sagaz.cli import run

if __name__ == "__main__":
    run()
