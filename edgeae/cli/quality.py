"""The quality-bench command: edgeae's default detector beside simple baselines on labelled public series."""
from __future__ import annotations

from typing import Any

import click

from edgeae.exporter.quality_bench import run_quality_bench, shipped_series
from edgeae.cli.app import main
from edgeae.cli.options import json_option
from edgeae.cli.render import emit

SERIES = ("InternalBleeding16", "ecg-diff-count-3 TEST", "ecg-diff-count-3 TRAIN_A")


@main.command(name="quality-bench")
@click.option("--epochs", type=click.IntRange(1, 10**9), default=None,
              help="Training epochs, to cut the run short [default: the pipeline's, with early stopping].")
@click.option("--series", "names", type=click.Choice(SERIES), multiple=True,
              help="Only this series (repeatable) [default: all].")
@click.option("--quiet", is_flag=True, help="No progress output.")
@json_option
@click.pass_context
def quality_bench(ctx: click.Context, epochs: int | None, names: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Does the autoencoder help on data like yours? Train edgeae with the default flags (as `pipeline
    --data TRAIN`) on labelled series the aeon package ships, and print its VUS-PR, VUS-ROC, event-wise
    F1, affiliation F1, ROC AUC and F1 at the calibrated threshold beside two baselines (the series'
    one-step difference and a moving z-score), with the CPU and the date.

    Needs pip install 'edgeae[train,dataset]'. Trains one model per training file (minutes each).

    \b
    Example:
      edgeae quality-bench
      edgeae quality-bench --epochs 5 --series InternalBleeding16 --json
    """
    series = shipped_series()
    chosen = tuple(s for s in series if not names or s.name in names)
    say: Any = None if quiet else (lambda message: click.echo(message, err=True))
    result = run_quality_bench(chosen, epochs, say)
    emit(ctx, result.to_dict(), result.table())
