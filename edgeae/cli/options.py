"""Options that several commands share, and how they become the library's arguments."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeae.cli.progress import epoch_progress
from edgeae.cli.render import require_stdout
from edgeae.contract.errors import UsageError
from edgeae.contract.parity import DEFAULT_ATOL, DEFAULT_RTOL
from edgeae.data.gaps import MAX_INTERPOLATED_GAP, MISSING_POLICIES, TRAIN_MISSING
from edgeae.data.windows import LEVEL_CHOICES
from edgeae.detection.threshold import MIN_CALIBRATION_WINDOWS
from edgeae.trainer.model import (
    ACTIVATIONS, DATA_ACTIVATION, DATA_LEVEL, DATA_PATIENCE, DATA_SCALING, DATA_VALIDATION_FRACTION, TrainConfig,
)
from edgeae.trainer.training import config_for


def _json_needs_stdout(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--json with stdout closed is refused before any work, not after it."""
    if value:
        require_stdout()
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_needs_stdout,
                           help="Print machine-readable JSON on stdout.")


provider_option = click.option("--provider", default="auto", show_default=True,
                               help="auto (CUDA if available, else CPU), cpu or cuda.")


variant_option = click.option("--variant", default="fp32", show_default=True,
                              help="Which published model to run: fp32, fp16, int8, int8-dynamic, ort, plain, or one "
                                   "of fp32's batch graphs alone: fp32-b1, fp32-unrolled.")


trusted_key_option = click.option(
    "--trusted-key", type=click.Path(path_type=Path), default=None, envvar="EDGEAE_TRUSTED_KEY", metavar="PEM",
    help="A PEM EC public key: refuse (exit 4) an export that is not signed by its private key or has changed since "
         "[default: $EDGEAE_TRUSTED_KEY; none: an unsigned export is noted once]. Needs edgeae[signing].")


sign_key_option = click.option(
    "--sign-key", type=click.Path(path_type=Path), default=None, metavar="PEM",
    help="Sign the export with this PEM EC P-256 private key (edgeae keygen makes one) before it is published; "
         "without it, a signed export that is rewritten loses its signature (noted). Needs edgeae[signing].")


self_check_option = click.option(
    "--no-self-check", "no_self_check", is_flag=True,
    help="Serve an fp16/int8 variant without first proving it on the export's golden vectors on this device.")


build_option = click.option("--build", "build", multiple=True, metavar="VARIANT",
                            help="A variant to build (repeatable): fp32-b1, fp32-unrolled, portable, fp16, int8, "
                                 "int8-dynamic, ort [default: all but int8-dynamic, whose numbers depend on the CPU; "
                                 "optimize also keeps what the export has].")


routing_option = click.option(
    "--fixed-routing", is_flag=True,
    help="Do not time the fp32 graphs here (3-45 s): batch 1 to the one-window graph, 128+ to the unrolled "
         "one, in runs of 256, the same on every machine [default: measured; bench --rewrite-routing redoes it].")



def publish_checks_options(fn):
    """The two checks an export makes before publishing a trained run, and the flags that relax them."""
    fn = click.option("--accept-unlearned", is_flag=True,
                      help="Publish a run whose loss shows it learned nothing (recorded in the manifest) instead of "
                           "refusing it.")(fn)
    return click.option("--min-calibration-windows", type=click.IntRange(1, 10**9), default=MIN_CALIBRATION_WINDOWS,
                        show_default=True,
                        help="The fewest windows an anomaly threshold is calibrated on; fewer is refused (a new normal "
                             "window outscores all n calibration windows with chance 1/(n+1)).")(fn)


no_header_option = click.option(
    "--no-header", "header_row", flag_value=False, default=None,
    help="The CSV has no header row: every line is data, and its columns are named by position 1, 2, ... "
         "(so --columns 2,3 picks the second and third).")


def missing_options(default: str, what: str):
    """--missing and --max-gap: what a missing value (an empty cell, NA, NaN, null, N/A; NaN in an
    .npy) does, for a command whose `default` policy suits `what` it does with the windows."""
    def add(fn):
        fn = click.option("--max-gap", type=click.IntRange(0, 10**9), default=None,
                          help="The longest run of missing rows in a column that --missing interpolate fills "
                               f"[default: {MAX_INTERPOLATED_GAP}].")(fn)
        return click.option(
            "--missing", type=click.Choice(MISSING_POLICIES), default=None,
            help=f"Missing values: refuse (one line with each column's count), skip (a window holding one is "
                 f"{what}), or interpolate (fill gaps of up to --max-gap rows on a straight line; a gap at the "
                 f"start or end, or a longer one, as skip) [default: {default}].")(fn)
    return add


def parity_options(recorded: bool = False):
    """--atol and --rtol, the fp32 parity bounds, for every command that checks parity; `recorded`:
    they default to what the export recorded (verify) instead of the library's defaults."""
    def note(value: float) -> str:
        return " [default: the export's recorded one]" if recorded else f" [default: {value:g}]"

    def add(fn):
        fn = click.option("--rtol", type=float, default=None if recorded else DEFAULT_RTOL,
                          help="fp32 parity bound as a share of the output's value range; an error passes within "
                               "the larger of --atol and --rtol x range" + note(DEFAULT_RTOL) + ".")(fn)
        return click.option("--atol", type=float, default=None if recorded else DEFAULT_ATOL,
                            help="fp32 parity bound, max abs error in the model's (scaled) units" + note(DEFAULT_ATOL)
                                 + ".")(fn)
    return add


def training_options(fn):
    d = TrainConfig()
    options = [
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="CSV (header, a column per feature) or NPY series/windows. Default: the seed sequence."),
        click.option("--columns", default=None, help="Comma-separated CSV column names (or indices) to use."),
        click.option("--timesteps", type=click.IntRange(1, 10**9), default=d.timesteps, show_default=True, help="Window length."),
        click.option("--features", type=int, default=None, help="Features per step [default: 5, or the data's column count]."),
        click.option("--units", type=click.IntRange(1, 10**9), default=d.units, show_default=True, help="LSTM units (the embedding size)."),
        click.option("--activation", type=click.Choice(ACTIVATIONS), default=None,
                     help=f"LSTM activation [default: {d.activation}; {DATA_ACTIVATION} with --data]."),
        click.option("--epochs", type=click.IntRange(1, 10**9), default=d.epochs, show_default=True),
        click.option("--batch-size", type=click.IntRange(1, 10**9), default=d.batch_size, show_default=True),
        click.option("--learning-rate", type=float, default=d.learning_rate, show_default=True),
        click.option("--seed", type=int, default=d.seed, show_default=True, help="Random seed (deterministic on one machine)."),
        click.option("--stride", type=click.IntRange(1, 10**9), default=None,
                     help="Step between windows of a series [default: 1]; not for ready-made windows."),
        click.option("--validation-fraction", type=float, default=None,
                     help="Last part of the series (by time) held out for validation and threshold calibration "
                          f"[default: {DATA_VALIDATION_FRACTION} with --data, else 0]."),
        click.option("--patience", type=int, default=None,
                     help="Early stopping on validation loss after this many epochs without improvement, restoring "
                          f"the best weights (0: off) [default: {DATA_PATIENCE} with a validation part, else 0]."),
        click.option("--clip-quantiles", type=(float, float), default=d.clip_quantiles, show_default=True,
                     help="Quantiles of the training data at which extreme values are clipped."),
        click.option("--scaling", type=click.Choice(["none", "minmax", "standard"]), default=None,
                     help=f"How values are scaled before the network [default: {d.scaling}; {DATA_SCALING} with --data]."),
        click.option("--time-column", default=None, metavar="NAME",
                     help="A CSV column that is the time axis, never a feature (dates, and increasing numbers "
                          "under a time-like name, are found without it)."),
        click.option("--level", type=click.Choice(LEVEL_CHOICES), default=None,
                     help="Each window's level (its mean over time): kept, removed before the network and added "
                          "back to the reconstruction (a drifting series: the model learns shapes), or auto: "
                          "removed when over 10% of the held-out windows lie at levels the training never reached "
                          f"[default: {d.level}; {DATA_LEVEL} with --data]."),
        click.option("--threshold-quantile", type=float, default=d.threshold_quantile, show_default=True,
                     help="Anomaly threshold: this quantile of the validation windows' scores (of the training "
                          "windows' when there is no validation part)."),
        click.option("--quiet", is_flag=True,
                     help="No progress on stderr (a bar on a terminal, a line every 10% of the epochs in a log)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return no_header_option(missing_options(TRAIN_MISSING, "left out of training")(fn))


def config_and_data(kw: dict) -> tuple[Any, Path | None, tuple[str, ...] | None]:
    data, columns = kw.pop("data"), split_columns(kw.pop("columns"))
    kw.pop("quiet")
    return config_for(data, columns, **kw), data, columns


def progress_printer(quiet: bool, epochs: int):
    """Training's progress: a bar on a terminal, a line every 10% in a log, none with --quiet or --json."""
    return epoch_progress(quiet, epochs)


def split_columns(columns: str | None) -> tuple[str, ...] | None:
    """--columns as names; an empty list or name is refused, since ignoring it would silently use every column."""
    if columns is None:
        return None
    names = tuple(c.strip() for c in columns.split(","))
    if not any(names):
        raise UsageError(f"--columns {columns!r} names no column; give comma-separated names or indices, or leave it out")
    if not all(names):
        raise UsageError(f"--columns {columns!r} has an empty column name; separate names with single commas")
    return names
