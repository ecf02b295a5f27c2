"""The `aif` command: the console script's entry (``aif = gateway.cli:main``).

This module stays tiny because every run of ``aif`` imports it first:
``aif --version`` is answered here, before click or anything of aif's is
imported. Everything else goes to the click group :func:`gateway.cli.app.main`,
which loads each command's module only when that command runs (the
commands, their modules and their summaries are listed in
:mod:`gateway.cli.registry`).
"""

from __future__ import annotations

import gc
import sys

from gateway import __version__

# typing costs more than the rest of `aif --version` together; annotations need no value.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What `aif --version` prints; click's version option prints the same line.
VERSION_LINE = f"aif, version {__version__}"


class _Aif:
    """``main``: the aif command, click's group once anything but ``--version`` is asked.

    Called with no arguments (the console script, :func:`run`) it reads
    ``sys.argv`` like a click command does. Anything else (``main.main(...)``
    from click's test runner, ``main.commands``...) is the click group's.
    """

    def __call__(self, args: Any = None, **extra: Any) -> Any:
        if args is None and set(extra) <= {"prog_name"} and sys.argv[1:] == ["--version"]:
            print(VERSION_LINE)
            return None
        # Start-up allocates much and frees little (modules, classes, click's commands): the
        # cycle collector would walk the growing heap again and again, about 1.5 ms of a
        # start-up. It stays off through the commands that only read local files and end, and
        # is back on for every other (gateway.cli.app.AifGroup.resolve_command).
        collecting = gc.isenabled()
        thresholds = gc.get_threshold()  # a command may raise them (gateway.cli.app)
        gc.disable()
        try:
            return self._group()(args, **extra)
        finally:
            # The command is done and the process about to end. At exit the cycle collector
            # would walk every object once more (10-15 ms, a fifth of a start-up); frozen,
            # they are left to the operating system. Objects held only by reference cycles
            # then go unfinalized, and aif needs none finalized: files, the ledger and SSH
            # connections are closed by context managers and atexit handlers, which still run.
            gc.freeze()
            gc.set_threshold(*thresholds)
            if collecting:
                gc.enable()  # as it was, should the caller go on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group(), name)

    @staticmethod
    def _group() -> Any:
        from gateway.cli.app import main as group

        return group


main = _Aif()


def run() -> None:  # pragma: no cover - console entry for `python -c "from gateway.cli import run; run()"`
    main(prog_name="aif")


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["main", "run"]
