"""What both command lines (``gated``/``gatectl`` and ``gated-billing``) share at the edge: the
exit codes, a refused operation as one line on stderr, and one log format.

Exit codes, the same in both:

- 0: done (or the answer is yes);
- 1: a question answered no: ``gatectl badge`` denied, ``cache lookup`` not found, a reader not ok,
  ``doctor`` found a warning; ``gated-billing serve`` stopped because one of its parts failed;
- 2: refused: any :class:`~gated.errors.GatedError` (a bad config file, a missing key, an unknown
  member, a rule that says no), a bad command line, ``doctor`` found a failure;
- 3: ``gatectl`` found no daemon on the control socket.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from gated.errors import GatedError

EXIT_OK = 0
EXIT_NO = 1
EXIT_REFUSED = 2
EXIT_NOT_RUNNING = 3

LOG_FORMAT = "level=%(levelname)s logger=%(name)s %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LazyConsole:
    """A rich Console made on first use. A daemon started by these command lines (``gated run``)
    prints nothing through one, and rich costs a gate ~3 MiB of memory it would keep."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


err_console = LazyConsole(stderr=True)


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr as one line, exactly as given: no markup is read from it
    (a ``[stripe]`` in a message stays), and it is never wrapped at the terminal's width."""
    from rich.text import Text

    err_console.print(
        Text.assemble(("error:", "red"), " ", " ".join(message.splitlines())),
        soft_wrap=True,
        highlight=False,
    )


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """End the command with one ``error:`` line and ``code`` (2, refused, unless said otherwise)."""
    error_line(message)
    raise typer.Exit(code)


class RefusalsAsOneLine(TyperGroup):
    """A command group whose commands may raise any :class:`GatedError`: it becomes one line on
    stderr and exit code 2, in one place for every command. Any other exception is a bug and keeps
    its traceback."""

    # ``ctx`` is click's Context, which recent typer releases vendor: typed loosely to hold for either.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GatedError as exc:
            fail(str(exc))


def setup_logging(level: str | None = None, *, default: str = "WARNING") -> None:
    """Log key=value lines on stderr, one event per line (journald adds its own timestamps).

    The level is ``level`` if given, else ``$GATED_LOG_LEVEL``, else ``default``; a daemon passes
    ``default="INFO"``, a one-shot command keeps the warnings only.
    """
    name = (level or os.environ.get("GATED_LOG_LEVEL") or default).upper()
    if name not in LOG_LEVELS:
        raise GatedError(f"log level {name!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level=name, format=LOG_FORMAT, stream=sys.stderr, force=True)
