"""Commands that run an export on the device runtime: inspect, encode, reconstruct, score, evaluate, bench, report."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeae import runtime
from edgeae.contract import versions
from edgeae.contract.files import atomic_write_json
from edgeae.data.gaps import MAX_INTERPOLATED_GAP, SCORE_MISSING
from edgeae.data.chunks import WindowBatch
from edgeae.data.gaps import gap_windows
from edgeae.data.series import load_labelled, trained_columns
from edgeae.detection.quality import check_precision, evaluate as run_evaluation
from edgeae.exporter import publish
from edgeae.measure.bench import MAX_BATCH as MAX_BENCH_BATCH, BenchOptions, run_bench
from edgeae.runtime.providers import available_providers
from edgeae.runtime.scoring import Drift
from edgeae.runtime.routes import batch_label
from edgeae.runtime.session import placement_summary
from edgeae.verifier.plots import ReportOptions, report as write_report
from edgeae.verifier.target_report import runtime_lines
from edgeae.cli.app import DEFAULT_EXPORT, main
from edgeae.cli.options import (
    json_option, missing_options, no_header_option, provider_option, self_check_option, sign_key_option, split_columns,
    trusted_key_option, variant_option,
)
from edgeae.cli.progress import quiet_option, reported, shows_progress
from edgeae.cli.render import ResultStream, check_output, emit
from edgeae.cli.stream import ReadOptions, StreamInput, aligned
from edgeae.cli.summary import NoTable, ScoreSummary


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--keras", is_flag=True, help="Also time Keras predict and tf.function (with and without XLA).")
@click.option("--runs", type=click.IntRange(3, 10**7), default=200, show_default=True, help="Timed rounds at batch 1 (fewer at large batches).")
@click.option("--warmup", type=click.IntRange(0, 10**6), default=10, show_default=True, help="Untimed calls per path before timing.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="Intra-op threads [default: the library's own].")
@click.option("--batch", "batches", type=click.IntRange(1, MAX_BENCH_BATCH), multiple=True, default=(64, 4096),
              show_default=True, help=f"Throughput batch sizes (repeat the option; at most {MAX_BENCH_BATCH}).")
@click.option("--no-cold-start", is_flag=True, help="Skip the per-path cold start and peak memory subprocesses.")
@click.option("--role", type=click.Choice(["autoencoder", "encoder", "both"]), default="both", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Also write the JSON report to this .json file.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@click.option("--training", is_flag=True, help="Also time Keras training of the export's model shape, without and "
              "with XLA (1,769 windows, 4 epochs each; tens of seconds to minutes).")
@click.option("--rewrite-routing", is_flag=True, help="First measure here which fp32 graph serves which batch sizes "
              "and rewrite only that routing table in the export's manifest (resealed).")
@sign_key_option
@json_option
@click.pass_context
def bench(ctx: click.Context, export_dir: Path, keras: bool, runs: int, warmup: int, threads: int | None,
          batches: tuple[int, ...], no_cold_start: bool, role: str, output: Path | None, force: bool,
          training: bool, rewrite_routing: bool, sign_key: Path | None, as_json: bool) -> None:
    """Time every model of an export side by side, interleaved, with ratios against the plain export.

    \b
    Example:
      edgeae bench exported --keras --runs 300
      edgeae bench exported --batch 1024 --threads 1 --no-cold-start --json
      edgeae bench my-export --rewrite-routing --training   # on the device: measure, reseal, time
    """
    roles = ("autoencoder", "encoder") if role == "both" else (role,)
    check_output(output, force, single_array=False, suffixes=(".json",), reads=(export_dir,))
    if rewrite_routing:
        for role, routes in publish.rewrite_routing(export_dir, sign_key).items():
            click.echo(f"{role} routing: " + ", ".join(f"{batch_label(*r['batches'])} {r['file']}" for r in routes), err=True)
    options = BenchOptions(keras=keras, runs=runs, warmup=warmup, threads=threads, batches=batches,
                           cold=not no_cold_start, roles=roles, training=training)
    report = run_bench(export_dir, options, progress=lambda msg: click.echo(msg, err=True))
    if output is not None:
        atomic_write_json(output, report.to_dict())
    emit(ctx, report.to_dict(), [report.table()])


@main.command()
@click.argument("model", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@provider_option
@variant_option
@self_check_option
@trusted_key_option
@json_option
@click.pass_context
def inspect(ctx: click.Context, model: Path, provider: str, variant: str, no_self_check: bool, trusted_key: Path | None,
            as_json: bool) -> None:
    """Show an export's models, inputs/outputs and which provider runs each node.

    \b
    Example:
      edgeae inspect exported --provider cuda --variant int8
    """
    edge = runtime.load(model, provider, variant=variant, self_check=not no_self_check, trusted_key=trusted_key)
    info: dict[str, Any] = {"providers_available": available_providers(), "models": {}}
    lines = [f"available providers: {', '.join(info['providers_available'])}"]
    graphs = [(role, m) for role, m in edge.models.items()]
    graphs += [(f"{role} ({batch_label(first, last)})", other)
               for role, m in edge.models.items() for first, last, other in m.routes]
    for role, m in graphs:
        placement = m.node_placement()
        info["models"][role] = {"file": m.name, "input": m.input_name, "outputs": m.output_names,
                                "batch": 1 if m.one_window else "any", "window": [m.timesteps, m.features],
                                "session_providers": m.providers, "proven_finite": m.proven_finite,
                                "placement": placement, "placement_summary": placement_summary(placement)}
        batch = "1" if m.one_window else "batch"
        lines.append(f"{role} ({m.name}): {m.input_name} ({batch}, {m.timesteps}, {m.features}) -> {', '.join(m.output_names)}")
        lines.append(f"  session providers: {', '.join(m.providers)}")
        lines.append("  outputs: " + ("proven finite by the export's value bound, not checked per call" if m.proven_finite
                                      else "checked for inf/NaN on every call"))
        for prov, count in placement_summary(placement).items():
            lines.append(f"  {count} nodes ran on {prov}")
        for node, prov in placement.items():
            if "LSTM" in node or prov != "CPUExecutionProvider":
                lines.append(f"    {node}: {prov}")
    manifest = edge.manifest
    if manifest is not None:
        info["manifest"] = {"kind": manifest.kind, "edgeae_version": manifest.edgeae_version, "created": manifest.created,
                            "opset": manifest.opset, "window": asdict(manifest.window),
                            "parity": manifest.parity.details or None}
        table, info["version_warnings"] = versions.against_export(manifest.versions)
        info["versions"] = table
        lines.append("versions, exported with -> installed here:")
        lines += [f"  {name}: {v['export'] or '-'} -> {v['installed'] or 'not installed'}" for name, v in table.items()]
        for warning in info["version_warnings"]:
            click.echo(f"warning: {warning}", err=True)
    emit(ctx, info, lines)


def _spans(numbers: np.ndarray, limit: int = 10) -> str:
    """Sorted whole numbers as runs, '3, 7-12, 40', the first `limit` runs only: one line for a user."""
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1 if len(numbers) > 1 else np.empty(0, int)
    runs = [(int(run[0]), int(run[-1])) for run in np.split(numbers, breaks)]
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return shown + (f", ... ({len(runs)} runs in all)" if len(runs) > limit else "")


def _missing_info(index: np.ndarray, starts: np.ndarray | None, windows: int, gaps: dict[str, Any],
                  done: str) -> dict[str, Any]:
    """The windows left unscored for a missing value (`index` of `windows`, the rows they start
    at), said once on stderr and recorded as `missing_windows`, with the data's missing values
    (`gaps`: StreamInput.gaps)."""
    info = {"count": len(index), "index": index.tolist(), **gaps}
    if starts is not None:
        info["window_start"] = starts.tolist()
    if gaps["values"]:
        columns = ", ".join(f"{name}: {count}" for name, count in gaps["columns"].items())
        filled = (f"; {gaps['interpolated']} interpolated (gaps of up to {gaps['max_gap']} rows)"
                  if gaps["policy"] == "interpolate" else "")
        where = "no window holds one"
        if len(index):
            at = f"starting at rows {_spans(starts)}" if starts is not None else _spans(index)
            where = f"{len(index)} of {windows} windows hold one: not {done}, marked missing (windows {at})"
        click.echo(f"missing values: {gaps['values']} ({columns}){filled}; {where}", err=True)
    return {"missing_windows": info}


def _masked(values: np.ndarray, gap_mask: np.ndarray) -> np.ndarray:
    """Per-window `values` with the windows that hold a missing value masked: null in JSON, empty in CSV."""
    if not gap_mask.any():
        return values
    return np.ma.masked_array(values, np.broadcast_to(gap_mask.reshape(-1, *[1] * (values.ndim - 1)), values.shape))


def _score_payload(edge: Any, batch: WindowBatch, columns: tuple[str, ...],
                   threshold: float | None) -> tuple[dict[str, np.ndarray], Drift | None]:
    """score's columns for a batch of windows (score, anomaly, window_start, start_time/end_time,
    one score_<feature> per feature: its part of the score, missing: 1 for a window not scored for
    a missing value, its score, flag and parts empty) and the batch's drift counts."""
    result = edge.score(batch.windows, threshold=threshold)
    gap_mask = result.missing
    payload: dict[str, np.ndarray] = {"score": _masked(result.scores, gap_mask)}
    if result.flags is not None:
        payload["anomaly"] = _masked(result.flags.astype(np.int8), gap_mask)
    if batch.starts is not None:
        payload["window_start"] = batch.starts
    if batch.start_times is not None:
        payload["start_time"], payload["end_time"] = batch.start_times.astype(str), batch.end_times.astype(str)
    for j, name in enumerate(columns):
        payload[f"score_{name}"] = _masked(result.contributions[:, j], gap_mask)
    payload["missing"] = gap_mask.astype(np.int8)
    return payload, result.drift


def _run_payload(edge: Any, name: str, batch: WindowBatch, with_missing: bool) -> dict[str, np.ndarray]:
    """encode's or reconstruct's arrays for a batch; `missing` where the data holds a missing value."""
    gap_mask = gap_windows(batch.windows)
    result = edge.encode(batch.windows) if name == "encode" else edge.reconstruct(batch.windows)
    payload = {"embedding" if name == "encode" else "reconstruction": _masked(result, gap_mask)}
    if with_missing:
        payload["missing"] = gap_mask.astype(np.int8)
    return payload


def _stream(ctx: click.Context, edge: Any, name: str, source: StreamInput, output: Path | None,
            threshold: float | None) -> None:
    """Run every batch of windows and write each result as it comes (ResultStream); what is said
    once for all windows (drift, missing windows) is said at the end, as one whole-file run says it."""
    role = "encoder" if name == "encode" else "autoencoder"
    size = edge.models[role].chunk if role in edge.models else 1
    # encode's and reconstruct's `missing` column is there when the data holds a missing value: a
    # CSV written row by row must know before its header (one counting pass), a joined result drops it at the end
    streamed = output is not None and output.suffix.lower() == ".csv"
    with_missing = name != "score" and (bool(source.count()) or not streamed)
    drift, windows, gap_index, gap_starts = None, 0, [], []
    # score says what it found to a person (the table goes to --output or, with --json, to stdout)
    summary = None if name != "score" or ctx.params.get("as_json") else ScoreSummary(
        source.columns, edge.threshold if threshold is None else threshold, source.source, edge.timesteps)
    with (NoTable() if summary is not None and output is None else ResultStream(ctx, output)) as result:
        for batch in reported(aligned(source.batches(), size), f"{name} {source.source}", source.estimate()):
            if name == "score":
                payload, part = _score_payload(edge, batch, source.columns, threshold)
                drift = part if drift is None or part is None else drift + part
                gap_mask = payload["missing"].astype(bool)
            else:
                payload = _run_payload(edge, name, batch, with_missing)
                gap_mask = gap_windows(batch.windows)
            index = np.flatnonzero(gap_mask)
            gap_index.append(index + windows)
            gap_starts.append(batch.starts[index] if batch.starts is not None else index)
            windows += len(batch)
            result.add(payload)
            if summary is not None:
                summary.add(payload)
        gaps, info = source.gaps, {}
        starts = np.concatenate(gap_starts) if batch.starts is not None else None
        if drift is not None:
            drift = replace(drift, names=source.columns)  # as the file names them
            if drift:
                click.echo(f"warning: {drift.warning()}", err=True)
            info["drift"] = drift.to_dict()
        if name == "score" or gaps["values"]:
            done = {"encode": "encoded", "reconstruct": "reconstructed", "score": "scored"}[name]
            info.update(_missing_info(np.concatenate(gap_index), starts, windows, gaps, done))
        elif with_missing:
            result.drop("missing")
        result.close(info, {"start_time": source.time_dtype, "end_time": source.time_dtype})
    if summary is not None:
        summary.show(output)


def runtime_command(name: str, doc: str):
    """encode / reconstruct / score share their options; only the call differs."""

    time_option = click.option(
        "--time-column", default=None, metavar="NAME",
        help="A CSV column of timestamps: each window's start_time and end_time, as written.") if name == "score" \
        else (lambda fn: fn)

    @main.command(name=name, help=doc)
    @click.argument("model", type=click.Path(path_type=Path))
    @click.argument("data", type=click.Path(path_type=Path))
    @click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
                  help="Write .csv, .json, .npz, or .npy for one array (default: " + (
                      "a summary on stdout, every window with --json" if name == "score" else "JSON on stdout") +
                       "). The input is read in "
                       "chunks; a .csv is written row by row, so its memory stays bounded for any input length; "
                       "JSON, .npz and .npy hold every window's result until written.")
    @click.option("--stride", type=click.IntRange(1, 10**9), default=None,
                  help="Window stride for a series [default: the model's, as for evaluate and report].")
    @click.option("--columns", default=None, help="Comma-separated CSV columns to use (the model's names in any "
                                                   "order are put in its order).")
    @click.option("--threshold", type=float, default=None, help="score: flag windows above this (default: the manifest's).")
    @time_option
    @missing_options(SCORE_MISSING, {"score": "reported as missing, neither flagged nor normal",
                                     "encode": "given a NaN row", "reconstruct": "given NaN"}[name])
    @no_header_option
    @click.option("--force", is_flag=True, help="Replace an existing --output file.")
    @provider_option
    @variant_option
    @self_check_option
    @trusted_key_option
    @quiet_option
    @json_option
    @click.pass_context
    @shows_progress
    def command(ctx: click.Context, model: Path, data: Path, output: Path | None, stride: int | None,
                columns: str | None, threshold: float | None, missing: str | None, max_gap: int | None,
                header_row: bool | None, force: bool, provider: str, variant: str, no_self_check: bool,
                trusted_key: Path | None, as_json: bool,
                time_column: str | None = None) -> None:
        edge = runtime.load(model, provider, variant=variant, self_check=not no_self_check, trusted_key=trusted_key)
        check_output(output, force, single_array=name != "score", reads=(model, data))
        read = ReadOptions(stride, split_columns(columns), time_column, missing or SCORE_MISSING,
                           MAX_INTERPOLATED_GAP if max_gap is None else max_gap, header_row is not False)
        _stream(ctx, edge, name, StreamInput(edge, data, read), output, threshold)

    return command

runtime_command("encode", "Encode windows to embeddings with the encoder.\n\n\b\nExample:\n  edgeae encode exported series.csv -o embeddings.npy")
runtime_command("reconstruct", "Reconstruct windows (raw units) with the autoencoder.\n\n\b\nExample:\n  edgeae reconstruct exported windows.npy -o recon.npy")
runtime_command("score", "Per-window reconstruction error, each feature's part of it (score_<feature>), with anomaly flags where a threshold is known; warns (stderr, and \"drift\" in JSON) when more than 1% of a feature's values lie outside the training range. Prints a summary (windows, flagged, the highest-scoring windows and the features behind them); the full table goes to --output, or to stdout as JSON with --json.\n\n\b\nExample:\n  edgeae score exported readings.csv -o scores.csv\n  edgeae score exported readings.csv --json | jq '.score'\n  edgeae score runs/sensors readings.csv --time-column timestamp -o scores.csv")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--labels", "labels_column", required=True, help="CSV column holding 1 for anomalous rows, 0 for normal.")
@click.option("--columns", default=None, help="Comma-separated CSV feature columns (as at training).")
@click.option("--stride", type=click.IntRange(1, 10**9), default=None,
              help="Step between scored windows [default: the model's, as for score and report].")
@click.option("--threshold", type=float, default=None, help="Flag above this [default: the manifest's].")
@click.option("--precision", type=float, default=0.9, show_default=True,
              help="Also suggest the lowest threshold whose precision reaches this, in (0, 1].")
@provider_option
@trusted_key_option
@json_option
@click.pass_context
def evaluate(ctx: click.Context, export_dir: Path, data: Path, labels_column: str, columns: str | None,
             stride: int | None, threshold: float | None, precision: float, provider: str, trusted_key: Path | None,
             as_json: bool) -> None:
    """Detection quality on a labelled series: ROC AUC, average precision, precision/recall/F1 at the
    threshold; VUS-PR and VUS-ROC, event-wise F1 and affiliation F1 as the benchmarks report them
    (TSB-AD, Orion); point-adjusted F1, marked optimistic; and thresholds suggested by the labels
    (best F1; lowest with --precision).

    A window counts as anomalous when any of its rows is labelled 1. The range measures run on the
    rows: each row takes the highest score of the windows covering it (and so is flagged when any
    of them is); VUS buffers run up to one window.

    \b
    Example:
      edgeae evaluate exported test.csv --columns temp,pressure --labels is_anomaly
    """
    check_precision(precision)  # before anything is loaded
    model = runtime.load(export_dir, provider, trusted_key=trusted_key)
    series, labels = load_labelled(data, model.features, split_columns(columns), trained_columns(model.manifest, data),
                                   labels_column)
    detection, _ = run_evaluation(model, series.values, labels, stride, threshold, precision)
    emit(ctx, detection.to_dict(), detection.lines())


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Picture this CSV/NPY series instead of the windows the model was trained on.")
@click.option("--columns", default=None, help="Comma-separated CSV feature columns (as at training).")
@click.option("--labels", "labels_column", default=None, help="CSV column marking anomalous rows (1), shown on the score plot.")
@click.option("--features", "features", default=None, metavar="A,B,C",
              help="Features to draw in reconstruction.png [default: those with the largest part in the worst "
                   "window's score, up to 6].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the PNGs here instead of into the export folder (whose manifest then lists them).")
@click.option("--force", is_flag=True, help="Replace existing PNGs of the same names (an export's own, listed in its manifest, "
                   "are always redrawn).")
@provider_option
@json_option
@click.pass_context
def report(ctx: click.Context, export_dir: Path, data: Path | None, columns: str | None, labels_column: str | None,
           features: str | None, out: Path | None, force: bool, provider: str, as_json: bool) -> None:
    """Draw the export as PNGs: reconstructions, score over time, loss curves, parity.

    Needs matplotlib: pip install 'edgeae[plot]'.

    \b
    Example:
      edgeae report exported
      edgeae report runs/demo --data test.csv --columns value --labels is_anomaly
      edgeae report runs/sensors --data test.csv --features acc_x,acc_z
    """
    options = ReportOptions(data, split_columns(columns), labels_column,
                            None if features is None else tuple(f.strip() for f in features.split(",")))
    paths = write_report(export_dir, options, out, "cpu" if provider == "auto" else provider, force=force)
    emit(ctx, {"plots": [str(p) for p in paths]}, [f"wrote {p}" for p in paths])


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--runtime", "runtimes", multiple=True, metavar="RUNTIME",
              help="A runtime to measure (repeatable): onnxruntime, onnxruntime-web, tract, openvino, onnx-reference "
                   "[default: all].")
@sign_key_option
@quiet_option
@json_option
@click.pass_context
@shows_progress
def targets(ctx: click.Context, export_dir: Path, runtimes: tuple[str, ...], sign_key: Path | None,
            as_json: bool) -> None:
    """Run every published file on each runtime against Keras on the golden windows; record the table in targets.json.

    'ok': within the file's tolerance; 'wrong': it runs and misses (e.g. a relu LSTM computed
    as tanh); 'fails': it does not load or run (the runtime's own message is kept);
    'not installed': pip install 'edgeae[runtimes]', and for onnxruntime-web `npm ci --prefix node`.

    \b
    Example:
      edgeae targets exported
      edgeae targets exported --runtime tract --runtime onnx-reference
    """
    measured = publish.measure_targets(export_dir, runtimes or None, sign_key)
    on = measured["measured_on"]
    emit(ctx, measured, [f"measured on {on['cpu']} ({', '.join(on['extensions']) or 'no vector extensions listed'}), "
                         f"onnxruntime {on['onnxruntime']}:", *runtime_lines(measured["files"]),
                         f"recorded in {export_dir}"])
