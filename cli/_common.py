"""What every command shares: one-line errors with exit code 2, YAML files, the console."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr; return the exit-2 exception to raise."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def user_errors(command: F) -> F:
    """Turn kdsweep's own errors (bad input) into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kdcore.errors import KDSweepError

        _log_to_stderr()
        try:
            return command(*args, **kwargs)
        except KDSweepError as error:
            raise fail(str(error)) from None

    return wrapper


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (safe_load); ConfigError if missing, malformed or not a mapping."""
    import yaml

    from kdcore.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}: "
                          f"{getattr(error, 'problem', None) or error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def given(**flags: Any) -> dict[str, Any]:
    """The flags the user actually passed (Typer gives None for the others)."""
    return {name: value for name, value in flags.items() if value is not None}


def _log_to_stderr() -> None:
    """Show kdsweep's warnings (a rebuilt cache, a retrained teacher) on stderr."""
    logger = logging.getLogger("kdsweep")
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so a second invocation in one process still logs."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
