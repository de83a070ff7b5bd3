"""The kdsweep command line. Heavy libraries (torch, MLflow) load inside commands, so --help is fast."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from cli import compress as compress_commands
from cli import export as export_commands
from cli import federate as federate_commands
from cli import query as query_commands
from cli import run as run_commands
from cli import train as train_commands
from cli import worker as worker_commands
from cli import _common
from cli._common import fail

try:  # Typer 0.2x carries its own copy of Click; older Typer uses Click itself
    from typer._click import Context
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover
    from click import Context
    from click import exceptions as _click_errors

UsageError = _click_errors.UsageError
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())  # Click >= 8.2: `kdsweep` alone


def _usage_error(error: UsageError, args: list[str]) -> typer.Exit:
    """Click's usage error (a value of the wrong type or out of range, an unknown option or command,
    a missing argument) as one ``error:`` line with its exit code (2), instead of Click's usage box."""
    command = error.ctx.command_path if error.ctx is not None else "kdsweep"
    message = error.format_message().replace("Value error, ", "").rstrip(".")
    value = _value_given(getattr(error, "param", None), args)
    got = f" (got {value!r})" if value is not None and repr(value) not in message else ""
    return fail(f"{message}{got}: see `{command} --help`", error.exit_code)


def _value_given(param: Any, args: list[str]) -> str | None:
    """The last value given on the command line to option ``param`` (Click's message may not say)."""
    names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    value = None
    for i, token in enumerate(args):
        for name in names:
            if not name.startswith("-"):
                continue
            if token == name and i + 1 < len(args):
                value = args[i + 1]
            elif token.startswith(f"{name}="):
                value = token[len(name) + 1:]
    return value


class _OneLineUsageErrors:
    """Mixed into Typer's command and group classes: usage errors are raised while parsing."""

    def make_context(self, info_name: str | None, args: list[str], parent: Context | None = None,
                     **extra: Any) -> Context:
        given = list(args)  # Click consumes ``args`` as it parses
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except NoArgsIsHelpError:
            raise  # `kdsweep` alone prints the help
        except UsageError as error:
            raise _usage_error(error, given) from None


class OneLineCommand(_OneLineUsageErrors, TyperCommand):
    def invoke(self, ctx: Context) -> Any:
        """Every numeric option is checked (finite, in range: ``cli._numbers``) before the command runs."""
        from kdcore import ConfigError

        from cli._numbers import check_numbers

        try:
            check_numbers(ctx.info_name or "", ctx.params)
        except ConfigError as error:
            raise fail(str(error)) from None
        return super().invoke(ctx)


class OneLineGroup(_OneLineUsageErrors, TyperGroup):
    def resolve_command(self, ctx: Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as error:  # an unknown command
            raise _usage_error(error, args) from None


app = typer.Typer(
    name="kdsweep",
    help="Search knowledge-distillation settings with Optuna; compare every trial in MLflow.",
    cls=OneLineGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("kdsweep")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown"
        typer.echo(f"kdsweep {number}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error instead of one line (or set KDSWEEP_DEBUG=1).")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print kdsweep's version and exit.")] = None,
) -> None:
    """Search knowledge-distillation settings with Optuna; compare every trial in MLflow."""
    _common.debug = debug
    # On a tracking server MLflow prints a link for every run it closes and a progress bar for every
    # download: hundreds of lines through kdsweep's own view. The hints print the links that matter.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


app.command(cls=OneLineCommand, rich_help_panel="Search")(run_commands.run)
app.command(cls=OneLineCommand, rich_help_panel="Search")(worker_commands.worker)
app.command(cls=OneLineCommand, rich_help_panel="Train")(train_commands.train)
app.command(cls=OneLineCommand, rich_help_panel="Train")(train_commands.teacher)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.studies)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.trials)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.best)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.pareto)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.compare)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.report)
app.command(cls=OneLineCommand, rich_help_panel="Query")(query_commands.ui)
app.command(cls=OneLineCommand, rich_help_panel="Query")(export_commands.export)
app.command(cls=OneLineCommand, rich_help_panel="After the search")(compress_commands.compress)
app.command(cls=OneLineCommand, rich_help_panel="After the search")(federate_commands.federate)

def entry() -> None:
    """The ``kdsweep`` console script: the app, then an exit that skips the interpreter's teardown.

    Every command has written and closed what it writes by the time it returns (runs terminated,
    the journal fsynced, SQLite committed, files closed). What is skipped is the teardown of torch,
    MLflow, SQLAlchemy and pandas objects: 2.4 s after a short sweep on a quiet 2-core machine,
    several seconds on a busy one, all of it outside what a ``--budget`` can plan for."""
    import logging
    import sys

    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # `kdsweep trials | head`, or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
