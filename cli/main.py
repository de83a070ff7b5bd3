"""The kdsweep command line. Heavy libraries (torch, MLflow) load inside commands, so --help is fast."""

from __future__ import annotations

import typer

from cli import query as query_commands
from cli import run as run_commands
from cli import train as train_commands

app = typer.Typer(
    name="kdsweep",
    help="Search knowledge-distillation settings with Optuna; compare every trial in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(rich_help_panel="Search")(run_commands.run)
app.command(rich_help_panel="Train")(train_commands.train)
app.command(rich_help_panel="Train")(train_commands.teacher)
app.command(rich_help_panel="Query")(query_commands.studies)
app.command(rich_help_panel="Query")(query_commands.trials)
app.command(rich_help_panel="Query")(query_commands.best)
app.command(rich_help_panel="Query")(query_commands.pareto)
app.command(rich_help_panel="Query")(query_commands.compare)
app.command(rich_help_panel="Query")(query_commands.report)
app.command(rich_help_panel="Query")(query_commands.ui)

if __name__ == "__main__":
    app()
