"""`edgeae fleet`: score, encode and sample many series (Parquet or CSV files, local or on object
storage) on a Dask cluster; each command builds its options once and makes one call into
edgeae.fleet, which imports Dask only when run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeae.contract.errors import UsageError
from edgeae.cli.app import main
from edgeae.cli.options import json_option, split_columns, variant_option
from edgeae.cli.render import emit
from edgeae.fleet import FleetOptions, SampleOptions, run_dataset, run_fleet_bench, write_sample
from edgeae.fleet.missing import DEFAULT_MAX_GAP, DEFAULT_MISSING, MISSING_CHOICES


def _storage_options(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """--storage-option KEY=VALUE as fsspec's keyword arguments; a value that reads as JSON
    (true, 3, {"a": 1}) is taken as such, any other as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option {pair!r}: expected KEY=VALUE (e.g. endpoint_url=http://host:9000)")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options or None


def _source_options(fn):
    """What every fleet command needs to find and window the series."""
    options = [
        click.option("--by", required=True, help="The column naming each series (a machine, a sensor)."),
        click.option("--order", required=True, help="The column of time steps (whole numbers or timestamps)."),
        click.option("--columns", default=None, help="Comma-separated feature columns [default: those the model was "
                                                     "trained on, else every column but --by, --order and --time]."),
        click.option("--stride", type=click.IntRange(1, 10**9), default=None,
                     help="Step between windows of a series [default: the manifest's, as edgeae score]."),
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="A Dask scheduler (tcp://host:8786) [default: a local cluster, one process per core]."),
        click.option("--workers", type=click.IntRange(1, 4096), default=None,
                     help="Worker processes of the local cluster [default: one per core]."),
        click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE",
                     help="An fsspec option for the data's file system (repeatable), e.g. endpoint_url=http://host:9000."),
        click.option("--force", is_flag=True, help="Replace an existing output."),
        click.option("--missing", type=click.Choice(MISSING_CHOICES), default=DEFAULT_MISSING, show_default=True,
                     help="Missing values (empty, NA, NaN, nan, null, NULL, N/A): skip marks a window holding one "
                          "as missing (no score, no flag); refuse stops, naming the count per column; interpolate "
                          "fills runs of at most --max-gap rows inside a series, the rest as skip."),
        click.option("--max-gap", type=click.IntRange(0, 10**6), default=DEFAULT_MAX_GAP, show_default=True,
                     help="--missing interpolate: the longest run of missing rows filled."),
        click.option("--sep", type=click.Choice([",", ";", "tab"]), default=None,
                     help="A CSV source's separator [default: read from the header line: comma, semicolon or tab]."),
        click.option("--no-header", "header_row", flag_value=False, default=True,
                     help="A CSV source has no header row: every line is data, and its columns are named by "
                          "position 1, 2, ... (so --by 1 --order 2 --columns 3,4 name them); not for Parquet."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.group()
def fleet() -> None:
    """Score, embed or sample the series of a fleet on a Dask cluster (needs: pip install 'edgeae[dask]').

    Each series (--by) is cut into windows in --order, never across two series or a gap in its
    steps; every window runs through one graph in fixed batches, so the numbers equal one
    process's, window for window, however the data is partitioned.

    \b
    Example:
      edgeae fleet score exported 's3://fleet/history/*.parquet' --by machine --order step -o scores
      edgeae fleet sample data/ --by machine --order step --timesteps 10 --per-series 50 -o sample.npy
    """


def _missing_lines(record: dict) -> list[str]:
    """The run's windows flagged and missing, and its missing values, in words."""
    missing, values = record["windows_missing"], record["missing"]
    lines = []
    if record["windows_flagged"] is not None:
        normal = record["windows_written"] - record["windows_flagged"] - missing
        lines.append(f"{record['windows_flagged']} windows flagged, {missing} missing (not scored), {normal} normal")
    if values["values"]:
        filled = f", {values['interpolated']} interpolated" if values["policy"] == "interpolate" else ""
        lines.append(f"{values['values']} missing values{filled}: {missing} windows hold one and are marked missing "
                     "(score and flag empty)")
    return lines


def _run_command(command: str, doc: str):
    """score and encode share their options; only what is computed per window differs."""

    @fleet.command(name=command, help=doc)
    @click.argument("export_dir", type=click.Path(path_type=Path))
    @click.argument("source")
    @click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
                  help="The output folder: Parquet parts and manifest.json, the run's record.")
    @click.option("--time", "time_column", default=None, help="A column whose value at each window's first row is kept "
                                                              "(window_time).")
    @click.option("--threshold", type=float, default=None, help="score: flag windows above this [default: the manifest's].")
    @_source_options
    @variant_option
    @json_option
    @click.pass_context
    def run(ctx: click.Context, export_dir: Path, source: str, output: Path, time_column: str | None,
            threshold: float | None, by: str, order: str, columns: str | None, stride: int | None,
            scheduler: str | None, workers: int | None, storage: tuple[str, ...], force: bool, missing: str,
            max_gap: int, sep: str | None, header_row: bool, variant: str, as_json: bool) -> None:
        if command == "encode" and threshold is not None:
            raise UsageError("--threshold applies to fleet score")
        options = FleetOptions(by, order, columns=split_columns(columns), time=time_column, stride=stride,
                               variant=variant, threshold=threshold, storage_options=_storage_options(storage),
                               scheduler=scheduler, workers=workers, force=force, missing=missing, max_gap=max_gap,
                               sep=sep, header_row=header_row)
        record = run_dataset(command, export_dir, source, output, options)
        short = record["series_without_windows"]
        lines = [f"wrote {record['windows_written']} windows of {record['series']} series to {output} "
                 f"(expected {record['windows_expected']}; {record['engine']['workers']} workers, "
                 f"{record['engine']['seconds']:.1f} s)"]
        if short["count"]:
            lines.append(f"{short['count']} series had no window of {record['window']['timesteps']} regular steps: "
                         + ", ".join(map(str, short["first"])) + (" ..." if short["count"] > len(short["first"]) else ""))
        if record["gaps"]:
            lines.append(f"{record['gaps']} gaps in steps: windows restart after each")
        lines.extend(_missing_lines(record))
        emit(ctx, record, lines)

    return run


_run_command("score", "Score every window of every series into Parquet: series, window_start, window_end, score, "
             "anomaly, missing (a window holding a missing value: no score, no flag).\n\n\b\nExample:\n  edgeae fleet score exported data/ --by machine --order step -o scores\n"
             "  edgeae fleet score exported 's3://bucket/fleet/*.parquet' --by id --order t --scheduler tcp://head:8786 "
             "-o /shared/scores")
_run_command("encode", "Embed every window of every series into Parquet: series, window_start, window_end, "
             "embedding_0..n, missing.\n\n\b\nExample:\n  edgeae fleet encode exported data/ --by machine --order step -o embeddings")


@fleet.command()
@click.argument("source")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="The sample as .npy (n, timesteps, features), with OUT.windows.csv and OUT.json beside it.")
@click.option("--timesteps", type=click.IntRange(1, 10**6), required=True, help="Window length.")
@click.option("--per-series", type=click.IntRange(1, 10**9), default=None, help="Windows drawn from each series.")
@click.option("--share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="The share of each series' windows drawn (stratified by series).")
@click.option("--seed", type=int, default=0, show_default=True, help="With the series id, decides which windows.")
@_source_options
@json_option
@click.pass_context
def sample(ctx: click.Context, source: str, output: Path, timesteps: int, per_series: int | None, share: float | None,
           seed: int, by: str, order: str, columns: str | None, stride: int | None, scheduler: str | None,
           workers: int | None, storage: tuple[str, ...], force: bool, missing: str, max_gap: int, sep: str | None,
           header_row: bool, as_json: bool) -> None:
    """Draw a reproducible training sample of windows across the fleet, for edgeae train --data.

    \b
    Example:
      edgeae fleet sample data/ --by machine --order step --timesteps 10 --per-series 50 -o sample.npy
      edgeae train --data sample.npy --validation-fraction 0.2
    """
    options = FleetOptions(by, order, columns=split_columns(columns), stride=stride,
                           storage_options=_storage_options(storage), scheduler=scheduler, workers=workers, force=force,
                           missing=missing, max_gap=max_gap, sep=sep, header_row=header_row)
    record = write_sample(output, source, options, SampleOptions(timesteps, per_series, share, seed))
    emit(ctx, record, [f"wrote {record['windows']} windows of {record['series']} series to {output}"])


@fleet.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--series", type=click.IntRange(2, 10**5), default=20, show_default=True, help="Synthetic series.")
@click.option("--rows", type=click.IntRange(10, 10**7), default=5000, show_default=True, help="Rows per series.")
@click.option("--files", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Parquet files the rows are spread over (row groups cut through series).")
@json_option
@click.pass_context
def bench(ctx: click.Context, export_dir: Path, series: int, rows: int, files: int, as_json: bool) -> None:
    """Score synthetic fleet data in one process, on one worker and on two: windows/s, CPU s per
    window, the ratios the goals name, and whether every window's score and flag are identical.

    \b
    Example:
      edgeae fleet bench exported --series 20 --rows 5000
    """
    report = run_fleet_bench(export_dir, series, rows, files, progress=lambda msg: click.echo(msg, err=True))
    emit(ctx, report, report["lines"])
