"""`kdsweep federate`: seed 004's federated stage on a trial's distilled student."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli._common import console, set_threads, user_errors
from cli.query import StorageOpt, StudyArg
from cli.train import StoreOpt, ThreadsOpt, TrackingOpt


@user_errors
def federate(
    study: StudyArg,
    trial: Annotated[Optional[int], typer.Option(help="Trial number (default: the best by validation accuracy within the study's limits).")] = None,
    clients: Annotated[int, typer.Option(help="Simulated edge clients, each with its shard of the training split.", min=1)] = 4,
    rounds: Annotated[int, typer.Option(help="FedAvg rounds.", min=1)] = 20,
    local_epochs: Annotated[int, typer.Option(help="Epochs each client trains per round, with the KD loss on its shard's cached teacher logits.", min=1)] = 1,
    partition: Annotated[str, typer.Option(help="How the shards are dealt: iid, or dirichlet:A (label skew; smaller A is more skewed, e.g. dirichlet:0.5).")] = "iid",
    seed: Annotated[int, typer.Option(help="Seed of the partition and of the clients' batch order.")] = 0,
    lr: Annotated[Optional[float], typer.Option(help="The clients' peak learning rate (default: a tenth of the trial's: they fine-tune a trained student).")] = None,
    store: StoreOpt = None,
    tracking_uri: TrackingOpt = None,
    storage: StorageOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a trial's distilled student across simulated clients with FedAvg (seed 004); each round and the final table go to MLflow; an interrupted run resumes with the same command."""
    from sweeps.pipelines.federate import federate_trial, table_line

    set_threads(threads)

    def progress(result) -> None:
        clients_text = " ".join(f"{acc:.3f}" for acc in result.client_val_acc)
        console.print(f"round {result.round}/{rounds}: global val_acc {result.val_acc:.4f} (clients before "
                      f"averaging: {clients_text}), {result.time_s:.1f}s", highlight=False, soft_wrap=True)

    try:
        done = federate_trial(study, trial=trial, clients=clients, rounds=rounds, local_epochs=local_epochs,
                              partition=partition, seed=seed, lr=lr, storage=storage, tracking_uri=tracking_uri,
                              store=store, on_round=progress)
    except KeyboardInterrupt:
        typer.echo("interrupted: the rounds done are saved; run the same command to resume", err=True)
        raise typer.Exit(130) from None
    resumed = f" (resumed after round {done.resumed_after})" if done.resumed_after else ""
    console.print(f"trial {done.trial} of '{study}' federated over {clients} clients ({partition}), "
                  f"{done.rounds} rounds{resumed}; MLflow run {done.run_id}", highlight=False, soft_wrap=True)
    console.print(table_line(done), highlight=False, soft_wrap=True, markup=False)
