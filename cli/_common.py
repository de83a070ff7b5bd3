"""What every command shares: one-line errors (exit code 2 for bad input, 1 for a damaged store),
YAML files read with bounds, the console."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
# `kdsweep --debug` (set by cli.main for each invocation) or KDSWEEP_DEBUG=1: tracebacks, not one line.
debug = False
err_console = Console(stderr=True)


# A word of a message (a value echoed back, a path) longer than this is cut in the middle, and a
# whole message longer than _MAX_MESSAGE too: a 50 MB value must not come back as a 50 MB line.
_MAX_WORD = 120
_MAX_MESSAGE = 1000
MAX_CONFIG_BYTES = 1 << 20  # a config file holds a few dozen settings


def one_line(message: str) -> str:
    """``message`` on one line, with over-long words (echoed values, paths) and the whole cut short."""
    text = " ".join(message.split())
    text = re.sub(rf"\S{{{_MAX_WORD + 1},}}", lambda m: f"{m[0][:60]}...[{len(m[0])} chars]...{m[0][-40:]}", text)
    if len(text) > _MAX_MESSAGE:
        text = f"{text[:700]} ...[{len(text)} chars]... {text[-250:]}"
    return text


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line to stderr; return the exception (exit ``code``) to raise."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def exit_aborted(message: str) -> NoReturn:
    """A second Ctrl-C's exit: ``message`` on stderr, then exit code 130 at once.

    Everything is written by then (the abort reaped the running trials and closed their runs, the
    journal is fsynced, SQLite committed). What is skipped is the interpreter's teardown, a full
    garbage collection over torch, MLflow and pandas objects: 13 s on a loaded 2-core machine,
    and whoever pressed Ctrl-C twice wants the prompt back."""
    typer.echo(message, err=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def user_errors(command: F) -> F:
    """Turn kdsweep's own errors into one line on stderr: exit code 2 for bad input, or the error's
    own ``exit_code`` (1 for a damaged store). An OS error (a full disk, a folder without
    permission, a file cut short) is one line with exit code 1 as well. SIGTERM (what ``kill``,
    ``docker stop`` and Slurm send) stops the command as Ctrl-C does; a command that runs workers
    (``run``) installs its own handlers over this one."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kdcore.errors import KDSweepError

        _log_to_stderr()
        try:
            with _sigterm_as_ctrl_c():
                return command(*args, **kwargs)
        except KDSweepError as error:
            _traceback()
            raise fail(str(error), getattr(error, "exit_code", 2)) from None
        except OSError as error:
            _traceback()
            raise fail(_os_problem(error), 1) from None
        except KeyboardInterrupt:  # a command with more to say catches it itself
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _os_problem(error: OSError) -> str:
    """An OS error in one line: the file it names when it names one, and how to see where it came from."""
    what = error.strerror or " ".join(str(error).split()) or type(error).__name__
    if error.filename is not None:
        return f"cannot use {error.filename}: {what}"
    return f"{what} ({type(error).__name__}, errno {error.errno}): see `kdsweep --debug ...` for where"


class _sigterm_as_ctrl_c:
    """While entered (in the main thread), SIGTERM raises KeyboardInterrupt as Ctrl-C does."""

    def __enter__(self) -> None:
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def __exit__(self, *exc_info: object) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def debugging() -> bool:
    """True under `kdsweep --debug` or KDSWEEP_DEBUG=1 (any value but 0 and empty)."""
    return debug or os.environ.get("KDSWEEP_DEBUG", "0") not in ("", "0")


def _traceback() -> None:
    """The traceback of the error being handled, on stderr, when debugging (the one line follows)."""
    if debugging():
        import traceback

        traceback.print_exc(file=sys.stderr)


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings of a YAML config file; ConfigError if it cannot be read or is not a mapping."""
    return read_config(path)[1]


def read_config(path: Path) -> tuple[str, dict[str, Any]]:
    """The text of a YAML config file and the mapping it holds. ConfigError (one line, the file
    untouched) when it is missing, over 1 MB, not UTF-8, not YAML, uses aliases, or is not a mapping."""
    import yaml

    from kdcore.errors import ConfigError

    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES >> 20} MB: a config holds a few "
                          "settings; give the right file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                          f"{error.start}): give a YAML file") from None
    try:
        data = yaml.load(text, Loader=_no_alias_loader(path))  # noqa: S506 (a SafeLoader)
    except ConfigError:
        raise
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}: "
                          f"{getattr(error, 'problem', None) or error}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply: write plain settings") from None
    except ValueError as error:  # a value YAML reads but Python refuses (a 5000-digit integer, 2001-13-45)
        raise ConfigError(f"config file {path} holds a value that cannot be read ({str(error).split(';')[0]}): "
                          "fix or remove it") from None
    if data is None:
        return text, {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return text, data


def _no_alias_loader(path: Path) -> type:
    """yaml's SafeLoader without aliases: ``*name`` lets a few hundred bytes expand into gigabytes."""
    import yaml

    from kdcore.errors import ConfigError

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ConfigError(f"config file {path} uses the YAML alias *{event.anchor} at line "
                                  f"{event.start_mark.line + 1}: aliases are not allowed; write the value out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def set_threads(threads: int | None) -> int:
    """Torch threads for a command that trains in this one process (``--threads``, else 1):
    checked against the usable cores (ConfigError), then set; returns the number."""
    from kdcore.threads import plan_threads, use_threads

    _, per_job, _ = plan_threads(1, threads)
    use_threads(per_job)
    return per_job


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
