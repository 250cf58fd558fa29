"""The `edgeae` command: thin click wrappers over the Python API, one exit-code table.

No logic lives here beyond parsing options and printing; heavy imports (TensorFlow,
tf2onnx) happen inside the library functions the training commands call, so the runtime
commands (encode, reconstruct, score, inspect) start without them.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .artifacts import check_output_file, check_target
from .bench import MAX_BATCH as MAX_BENCH_BATCH
from .errors import (
    EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EdgeAEError, ExportExistsError,
    ParityError, UsageError,
)

DEFAULT_EXPORT = Path("exported")
DEFAULT_TRAINING = Path("runs/train")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a service stop, a CI timeout) takes Ctrl-C's path, exit 130.

    Python's default SIGTERM kills the process on the spot, leaving staging folders and
    locks behind; raising KeyboardInterrupt lets their context managers clean up. Only the
    main thread may set handlers, and the previous one is restored, so a program that
    calls the CLI in-process keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class EdgeGroup(click.Group):
    """Turns every failure into one line on stderr and its documented exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's own usage errors (bad option, missing argument) become one `error:` line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with _sigterm_as_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                click.echo(exc.format_message(), err=True)  # a bare `edgeae` shows its help, as ever
            else:
                print_error(f"{exc.format_message()} (see --help)")
            code = exc.exit_code
        except click.exceptions.Abort:
            print_error("interrupted; nothing was published")
            code = EXIT_INTERRUPTED
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + a code
            if isinstance(exc, SystemExit):
                raise
            code, message = describe_failure(exc)
            if ctx.params.get("debug"):
                traceback.print_exception(exc)
            print_error(message)
            ctx.exit(code)


def one_line(text: str) -> str:
    """`text` with control characters, line and paragraph separators and lone surrogates (from
    undecodable file names) escaped: a path holding a newline must not split an error in two."""
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") else ch for ch in text)


def print_error(message: str) -> None:
    """The only place an error reaches the user: one `error:` line on stderr."""
    click.echo(f"error: {one_line(message)}", err=True)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for any exception (the only such table)."""
    if isinstance(exc, EdgeAEError):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; nothing was published"
    if isinstance(exc, MemoryError):
        return EXIT_RUNTIME, "out of memory: the input or batch is too large for this machine"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return EXIT_USAGE, f"{exc.strerror or exc}{where}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {first} (rerun with --debug)"


def require_stdout() -> None:
    """With its descriptor closed at start Python's sys.stdout is None, and click.echo would drop
    the result without a word: a command whose result goes to stdout refuses instead."""
    if sys.stdout is None:
        raise UsageError("cannot write the result: standard output is closed")


def emit(ctx: click.Context, payload: dict, lines: list[str]) -> None:
    """Machine-readable JSON on stdout with --json, otherwise human lines."""
    as_json = ctx.find_root().params.get("as_json") or ctx.params.get("as_json")
    if as_json or lines:
        require_stdout()
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))
    else:
        for line in lines:
            click.echo(line)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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
self_check_option = click.option(
    "--no-self-check", "no_self_check", is_flag=True,
    help="Serve an fp16/int8 variant without first proving it on the export's golden vectors on this device.")
build_option = click.option("--build", "build", multiple=True, metavar="VARIANT",
                            help="A variant to build (repeatable): fp32-b1, fp32-unrolled, fp16, int8, int8-dynamic, "
                                 "ort [default: all but int8-dynamic, whose numbers depend on the CPU].")


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: " + "; ".join(f"{k} {v.split(' (')[0]}" for k, v in EXIT_CODES.items()))
@click.version_option(__version__, prog_name="edgeae")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def main(debug: bool) -> None:
    """Train a Keras LSTM sequence autoencoder, export it to ONNX, prove parity, run it on the edge.

    \b
    Example:
      edgeae pipeline --out exported --force
      edgeae score exported readings.csv --output scores.csv
    """


# ---------------------------------------------------------------- training options


def training_options(fn):
    from .model import DATA_PATIENCE, DATA_VALIDATION_FRACTION, TrainConfig

    d = TrainConfig()
    options = [
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="CSV (header, a column per feature) or NPY series/windows. Default: the seed sequence."),
        click.option("--columns", default=None, help="Comma-separated CSV column names (or indices) to use."),
        click.option("--timesteps", type=click.IntRange(1, 10**9), default=d.timesteps, show_default=True, help="Window length."),
        click.option("--features", type=int, default=None, help="Features per step [default: 5, or the data's column count]."),
        click.option("--units", type=click.IntRange(1, 10**9), default=d.units, show_default=True, help="LSTM units (the embedding size)."),
        click.option("--activation", default=d.activation, show_default=True, help="LSTM activation."),
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
        click.option("--scaling", type=click.Choice(["none", "minmax", "standard"]), default=d.scaling, show_default=True),
        click.option("--threshold-quantile", type=float, default=d.threshold_quantile, show_default=True,
                     help="Anomaly threshold: this quantile of the validation windows' scores (of the training "
                          "windows' when there is no validation part)."),
        click.option("--quiet", is_flag=True, help="No progress output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config_and_data(kw: dict) -> tuple[Any, Path | None, tuple[str, ...] | None]:
    from .data import load_series
    from .model import DATA_PATIENCE, DATA_VALIDATION_FRACTION, TrainConfig

    data, columns = kw.pop("data"), kw.pop("columns")
    columns_t = _split_columns(columns)
    if columns_t and data is None:
        raise UsageError("--columns chooses columns of --data; the seed data has none to choose")
    kw.pop("quiet")
    if kw["features"] is None:
        kw["features"] = load_series(data, columns_t).values.shape[-1] if data is not None else TrainConfig.features
    if kw["validation_fraction"] is None:
        kw["validation_fraction"] = DATA_VALIDATION_FRACTION if data is not None else 0.0
    if kw["patience"] is None:
        kw["patience"] = DATA_PATIENCE if kw["validation_fraction"] > 0 else 0
    return TrainConfig(**kw), data, columns_t


def _progress(quiet: bool, epochs: int):
    if quiet:
        return None
    from .model import print_progress

    return print_progress(epochs)


def _early_stop_lines(summary: dict) -> list[str]:
    if summary["epochs_run"] >= summary["config"]["epochs"]:
        return []
    return [f"stopped early after {summary['epochs_run']} epochs; kept the weights of epoch {summary['best_epoch']}, "
            "the best validation loss"]


def _detector_lines(folder: Path) -> list[str]:
    from .artifacts import read_manifest

    d = read_manifest(folder).get("detector")
    if not d:
        return []
    return [f"anomaly threshold {d['threshold']:.4g}: the {d['quantile']:g} quantile of the scores of {d['windows']} "
            f"{d['calibrated_on']} window(s)" + (" (no validation part: expect more flags)" if "note" in d else "")]


def _parity_lines(report) -> list[str]:
    lines = ["parity " + ("passed" if report else "FAILED") + ":"]
    for key, s in report.summary().items():
        lines.append(f"  {key}: max abs {s['max_abs']:.2e} (tol {s['tolerance_abs']:.0e}), "
                     f"rel-to-range {s['max_rel_range']:.2e}, mean abs {s['mean_abs']:.2e} "
                     f"over {s['comparisons']} input sets  {'ok' if s['passed'] else 'FAIL'}")
    if report.encoder_matches_autoencoder is not None:
        lines.append(f"  encoder == autoencoder's internal encoding: max abs {report.encoder_matches_autoencoder.max_abs:.2e}")
    variants = report.variant_lines()
    if variants:
        lines += ["  variants, each against the tolerance its export recorded:", *("  " + v for v in variants)]
    for key, counts in report.placement.items():
        lines.append(f"  nodes of {key}: " + ", ".join(f"{n} on {p}" for p, n in counts.items()))
    return lines


# ---------------------------------------------------------------- training commands


@main.command()
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_TRAINING, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing folder at --out.")
@json_option
@click.pass_context
def train(ctx: click.Context, out: Path, force: bool, as_json: bool, **kw: Any) -> None:
    """Train the autoencoder and save it (model.keras + training record) to --out.

    \b
    Example:
      edgeae train --epochs 50 --out runs/small
      edgeae train --data sensors.csv --columns temp,pressure --validation-fraction 0.2 --patience 20
    """
    from .training import save_training, train as train_model

    quiet = kw["quiet"]
    config, data, columns = _config_and_data(kw)
    check_target(out, force)  # fail before training, not after
    training = train_model(config, data, columns, _progress(quiet, config.epochs))
    save_training(training, out, force)
    summary = training.summary()
    emit(ctx, {"out": str(out), **summary}, [
        f"trained {summary['parameters']:,} parameters for {summary['epochs_run']} epochs: final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        *_early_stop_lines(summary),
        f"saved to {out}",
    ])


@main.command()
@click.argument("training_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@click.option("--threshold-quantile", type=float, default=None,
              help="Recalibrate the anomaly threshold at this quantile [default: the one chosen at training].")
@build_option
@json_option
@click.pass_context
def export(ctx: click.Context, training_dir: Path, out: Path, opset: int | None, atol: float, provider: str,
           force: bool, threshold_quantile: float | None, build: tuple[str, ...], as_json: bool) -> None:
    """Export a trained model to autoencoder.onnx + encoder.onnx, verify parity, publish to --out.

    \b
    Example:
      edgeae export runs/train --out exported --force
    """
    from . import publish
    from .training import load_training
    from .variants import check_variant_names

    run, target = training_dir.resolve(), out.resolve()
    if target == run or target in run.parents:
        raise UsageError(f"refusing to export to {out}: it is the training folder {training_dir} or holds it; "
                         "choose another --out")
    check_target(out, force)  # before TensorFlow loads and the model runs
    built = build or None
    check_variant_names(built)
    path, report = publish.export(load_training(training_dir), out, opset, atol, provider, force,
                                  threshold_quantile, built)
    emit(ctx, {"out": str(path), "parity": report.to_dict(), "variants": publish.folder_variants(path)},
         [*_parity_lines(report), *publish.folder_lines(path, targets=False), *_detector_lines(path), f"exported to {path}"])


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--against", type=click.Choice(["auto", "keras", "stored"]), default="auto", show_default=True,
              help="keras: run the stored Keras model; stored: the Keras outputs saved at export (no TensorFlow "
                   "needed); auto: keras where TensorFlow is installed.")
@json_option
@click.pass_context
def verify(ctx: click.Context, export_dir: Path, atol: float, provider: str, against: str, as_json: bool) -> None:
    """Re-check an export: files against the manifest, ONNX against Keras on every provider.

    \b
    Example:
      edgeae verify exported --provider cpu --atol 1e-6
      edgeae verify exported --provider cuda --against stored   # on a device without TensorFlow
    """
    from .verification import verify as verify_export

    report = verify_export(export_dir, provider, atol, against)
    emit(ctx, report.to_dict(), _parity_lines(report))
    if not report:
        raise ParityError("; ".join(report.failures()))


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--provider", default="all", show_default=True, help="Providers to check the variants on: all, cpu or cuda.")
@click.option("--strict", is_flag=True, help="Exit 6 when a variant misses its tolerance (it is left out either way).")
@build_option
@json_option
@click.pass_context
def optimize(ctx: click.Context, export_dir: Path, provider: str, strict: bool, build: tuple[str, ...],
             as_json: bool) -> None:
    """Rebuild an export's clean graph, its batch graphs and fp16, int8 and ORT-format variants; publish those within tolerance.

    Every file is checked against the manifest first; each variant is compared with Keras
    on verify's inputs, and one that misses its tolerance is reported and left out.
    targets.json says which execution providers can run each file, node by node. The
    folder is replaced in one step, or not at all.

    \b
    Example:
      edgeae optimize exported --provider cpu
      edgeae optimize exported --build int8 --build int8-dynamic   # the fast int8, proven on each device
    """
    from . import publish

    result = publish.optimize(export_dir, provider, variants=build or None)
    emit(ctx, {"out": str(export_dir), **result.to_dict()}, [*result.lines(), f"published to {export_dir}"])
    missed = [f"{v.role}/{v.name}" for v in result.variants if not v.published]
    if strict and missed:
        raise ParityError(f"variants outside their tolerance, left out: {', '.join(missed)}")


@main.command()
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@build_option
@json_option
@click.pass_context
def pipeline(ctx: click.Context, out: Path, opset: int | None, atol: float, provider: str, force: bool,
             build: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Train, export and verify in one go (the seed notebook's model and data by default).

    \b
    Example:
      edgeae pipeline --force                      # regenerate exported/
      edgeae pipeline --epochs 20 --units 16 --out runs/small
    """
    from . import publish

    quiet = kw["quiet"]
    config, data, columns = _config_and_data(kw)
    path, report, training = publish.run_pipeline(config, out, data, columns, opset, atol, provider, force,
                                              _progress(quiet, config.epochs), build or None)
    summary = training.summary()
    emit(ctx, {"out": str(path), "training": summary, "parity": report.to_dict(), "variants": publish.folder_variants(path)}, [
        f"trained {summary['parameters']:,} parameters, {summary['epochs_run']} epochs, final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        *_early_stop_lines(summary),
        *_parity_lines(report),
        *publish.folder_lines(path, targets=False),
        *_detector_lines(path),
        f"exported to {path}",
    ])


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
@json_option
@click.pass_context
def bench(ctx: click.Context, export_dir: Path, keras: bool, runs: int, warmup: int, threads: int | None,
          batches: tuple[int, ...], no_cold_start: bool, role: str, output: Path | None, force: bool,
          as_json: bool) -> None:
    """Time every model of an export side by side, interleaved, with ratios against the plain export.

    \b
    Example:
      edgeae bench exported --keras --runs 300
      edgeae bench exported --batch 1024 --threads 1 --no-cold-start --json
    """
    from .artifacts import atomic_write_json
    from .bench import run_bench

    roles = ("autoencoder", "encoder") if role == "both" else (role,)
    _check_output(output, force, single_array=False, suffixes=(".json",), reads=(export_dir,))
    report = run_bench(export_dir, keras, runs, warmup, threads, batches, not no_cold_start, roles,
                       progress=lambda msg: click.echo(msg, err=True))
    if output is not None:
        atomic_write_json(output, report.to_dict())
    emit(ctx, report.to_dict(), [report.table()])


# ---------------------------------------------------------------- runtime commands


@main.command()
@click.argument("model", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@provider_option
@variant_option
@self_check_option
@json_option
@click.pass_context
def inspect(ctx: click.Context, model: Path, provider: str, variant: str, no_self_check: bool, as_json: bool) -> None:
    """Show an export's models, inputs/outputs and which provider runs each node.

    \b
    Example:
      edgeae inspect exported --provider cuda --variant int8
    """
    from . import runtime

    edge = runtime.load(model, provider, variant=variant, self_check=not no_self_check)
    info: dict[str, Any] = {"providers_available": runtime.available_providers(), "models": {}}
    lines = [f"available providers: {', '.join(info['providers_available'])}"]
    graphs = [(role, m) for role, m in edge.models.items()]
    graphs += [(f"{role} ({runtime.batch_label(first, last)})", other)
               for role, m in edge.models.items() for first, last, other in m.routes]
    for role, m in graphs:
        placement = m.node_placement()
        info["models"][role] = {"file": m.name, "input": m.input_name, "outputs": m.output_names,
                                "batch": 1 if m.one_window else "any", "window": [m.timesteps, m.features],
                                "session_providers": m.providers, "proven_finite": m.proven_finite,
                                "placement": placement, "placement_summary": runtime.placement_summary(placement)}
        batch = "1" if m.one_window else "batch"
        lines.append(f"{role} ({m.name}): {m.input_name} ({batch}, {m.timesteps}, {m.features}) -> {', '.join(m.output_names)}")
        lines.append(f"  session providers: {', '.join(m.providers)}")
        lines.append("  outputs: " + ("proven finite by the export's value bound, not checked per call" if m.proven_finite
                                      else "checked for inf/NaN on every call"))
        for prov, count in runtime.placement_summary(placement).items():
            lines.append(f"  {count} nodes ran on {prov}")
        for node, prov in placement.items():
            if "LSTM" in node or prov != "CPUExecutionProvider":
                lines.append(f"    {node}: {prov}")
    if edge.manifest:
        info["manifest"] = {k: edge.manifest.get(k) for k in ("kind", "edgeae_version", "created", "opset", "window", "parity")}
    emit(ctx, info, lines)


def _read_windows(edge: Any, path: Path, stride: int | None,
                  columns: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Windows from a file, and for a series the 0-based data row each window starts at.

    `stride` None means the manifest's; one given for ready-made windows is refused, not ignored.
    """
    from .data import load_features, make_windows, trained_columns, window_starts

    series = load_features(path, edge.features, _split_columns(columns), trained_columns(edge.manifest, path))
    if series.is_windows:
        if stride is not None:
            raise UsageError(f"{series.source}: --stride applies to a series; this file holds ready-made windows")
        return series.values, None
    if stride is None:
        stride = int((edge.manifest.get("window") or {}).get("stride", 1))
    windows = make_windows(series.values, edge.timesteps, stride, series.source)
    return windows, window_starts(len(series.values), edge.timesteps, stride)


OUTPUT_SUFFIXES = (".csv", ".npy", ".npz", ".json")


def _check_output(output: Path | None, force: bool, single_array: bool,
                  suffixes: tuple[str, ...] = OUTPUT_SUFFIXES, reads: tuple[Path, ...] = ()) -> None:
    """Every way an --output can fail is found before any work is done. What the command
    `reads` (an export folder or model file, a data file) is never written, even with --force:
    one slip of the name would destroy the model or the data the result came from."""
    if output is None:
        require_stdout()  # the result goes there
        return
    check_output_file(output)
    target = output.resolve()
    for source in reads:
        source = source.resolve()
        if target == source or source in target.parents:
            what = "inside the export folder" if source.is_dir() else "the file"
            raise UsageError(f"{output} is {what} {source.name} this command reads; write the result elsewhere")
    suffix = output.suffix.lower()
    if suffix not in suffixes:
        raise UsageError(f"{output.name}: --output must end in {', '.join(suffixes)}")
    if suffix == ".npy" and not single_array:
        raise UsageError(f"{output.name}: this command writes several arrays; use .csv, .json or .npz")
    if output.exists() and not force:
        raise ExportExistsError(f"{output} exists; pass --force to replace it")


def _csv_bytes(payload: dict[str, np.ndarray]) -> bytes:
    """One row per window; integer columns (flags, start rows) stay integers."""
    rows = len(next(iter(payload.values())))
    header: list[str] = []
    columns: list[list[str]] = []
    for key, value in payload.items():
        flat = np.asarray(value).reshape(rows, -1)
        header += [key] if flat.shape[1] == 1 else [f"{key}_{i}" for i in range(flat.shape[1])]
        text = str if flat.dtype.kind in "iub" else (lambda v: repr(float(v)))
        columns += [[text(v) for v in flat[:, j]] for j in range(flat.shape[1])]
    lines = [",".join(header)] + [",".join(cells) for cells in zip(*columns)]
    return ("\n".join(lines) + "\n").encode()


def _write_result(ctx: click.Context, payload: dict[str, np.ndarray], output: Path | None) -> None:
    import io

    from .artifacts import atomic_write_bytes, dumps_json

    if output is None:
        emit(ctx, {k: v for k, v in payload.items()}, [json.dumps({k: _jsonable(v) for k, v in payload.items()})])
        return
    suffix = output.suffix.lower()
    rows = len(next(iter(payload.values())))
    if suffix in (".npy", ".npz"):
        buffer = io.BytesIO()
        if suffix == ".npy":
            np.save(buffer, next(iter(payload.values())))
        else:
            np.savez(buffer, **payload)
        atomic_write_bytes(output, buffer.getvalue())
    elif suffix == ".csv":
        atomic_write_bytes(output, _csv_bytes(payload))
    else:
        atomic_write_bytes(output, dumps_json({k: _jsonable(v) for k, v in payload.items()}).encode())
    emit(ctx, {"output": str(output), "rows": rows, "arrays": list(payload)}, [])
    click.echo(f"wrote {rows} rows to {output}", err=True)


def runtime_command(name: str, doc: str):
    """encode / reconstruct / score share their options; only the call differs."""

    @main.command(name=name, help=doc)
    @click.argument("model", type=click.Path(path_type=Path))
    @click.argument("data", type=click.Path(path_type=Path))
    @click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
                  help="Write .csv, .json, .npz, or .npy for one array (default: JSON on stdout).")
    @click.option("--stride", type=click.IntRange(1, 10**9), default=None, help="Window stride for a series [default: the manifest's].")
    @click.option("--columns", default=None, help="Comma-separated CSV columns to use.")
    @click.option("--threshold", type=float, default=None, help="score: flag windows above this (default: the manifest's).")
    @click.option("--force", is_flag=True, help="Replace an existing --output file.")
    @provider_option
    @variant_option
    @self_check_option
    @json_option
    @click.pass_context
    def command(ctx: click.Context, model: Path, data: Path, output: Path | None, stride: int | None,
                columns: str | None, threshold: float | None, force: bool, provider: str, variant: str,
                no_self_check: bool, as_json: bool) -> None:
        from . import runtime

        edge = runtime.load(model, provider, variant=variant, self_check=not no_self_check)
        _check_output(output, force, single_array=name != "score", reads=(model, data))
        windows, starts = _read_windows(edge, data, stride, columns)
        if name == "encode":
            payload = {"embedding": edge.encode(windows)}
        elif name == "reconstruct":
            payload = {"reconstruction": edge.reconstruct(windows)}
        else:
            result = edge.score(windows, threshold=threshold)
            payload = {"score": result.scores}
            if result.flags is not None:
                payload["anomaly"] = result.flags.astype(np.int8)
            if starts is not None:
                payload["window_start"] = starts
        _write_result(ctx, payload, output)

    return command


runtime_command("encode", "Encode windows to embeddings with the encoder.\n\n\b\nExample:\n  edgeae encode exported series.csv -o embeddings.npy")
runtime_command("reconstruct", "Reconstruct windows (raw units) with the autoencoder.\n\n\b\nExample:\n  edgeae reconstruct exported windows.npy -o recon.npy")
runtime_command("score", "Per-window reconstruction error, with anomaly flags where a threshold is known.\n\n\b\nExample:\n  edgeae score exported readings.csv -o scores.csv")


# ---------------------------------------------------------------- anomaly detection and pictures


def _split_columns(columns: str | None) -> tuple[str, ...] | None:
    """--columns as names; an empty list or name is refused, since ignoring it would silently use every column."""
    if columns is None:
        return None
    names = tuple(c.strip() for c in columns.split(","))
    if not any(names):
        raise UsageError(f"--columns {columns!r} names no column; give comma-separated names or indices, or leave it out")
    if not all(names):
        raise UsageError(f"--columns {columns!r} has an empty column name; separate names with single commas")
    return names


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--labels", "labels_column", required=True, help="CSV column holding 1 for anomalous rows, 0 for normal.")
@click.option("--columns", default=None, help="Comma-separated CSV feature columns (as at training).")
@click.option("--stride", type=click.IntRange(1, 10**9), default=1, show_default=True, help="Step between scored windows.")
@click.option("--threshold", type=float, default=None, help="Flag above this [default: the manifest's].")
@provider_option
@json_option
@click.pass_context
def evaluate(ctx: click.Context, export_dir: Path, data: Path, labels_column: str, columns: str | None, stride: int,
             threshold: float | None, provider: str, as_json: bool) -> None:
    """Detection quality on a labelled series: ROC AUC, average precision, precision/recall/F1 at the threshold.

    A window counts as anomalous when any of its rows is labelled 1.

    \b
    Example:
      edgeae evaluate exported test.csv --columns temp,pressure --labels is_anomaly
    """
    from . import runtime
    from .data import load_labelled, trained_columns
    from .detector import evaluate as run_evaluation

    model = runtime.load(export_dir, provider)
    series, labels = load_labelled(data, model.features, _split_columns(columns), trained_columns(model.manifest, data),
                                   labels_column)
    detection, _ = run_evaluation(model, series.values, labels, stride, threshold)
    emit(ctx, detection.to_dict(), detection.lines())


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10**9), default=None, help="Training epochs [default: 150, with early stopping].")
@click.option("--units", type=click.IntRange(1, 10**9), default=None, help="LSTM units [default: 32].")
@click.option("--timesteps", type=click.IntRange(1, 10**9), default=None, help="Window length [default: 64].")
@click.option("--stride", type=click.IntRange(1, 10**9), default=None, help="Step between training windows [default: 1].")
@click.option("--threshold-quantile", type=float, default=None, help="Threshold quantile [default: 0.99].")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@json_option
@click.pass_context
def demo(ctx: click.Context, out: Path, force: bool, quiet: bool, as_json: bool, **overrides: Any) -> None:
    """Anomaly detection on a real series: train, export, score on the runtime, report quality.

    The series is InternalBleeding16 from the UCR anomaly archive, shipped inside the aeon
    package (pip install 'edgeae[dataset]'); nothing is downloaded.

    \b
    Example:
      edgeae demo --out runs/demo
      edgeae report runs/demo
    """
    from .datasets import demo as run_demo
    from .datasets import demo_config

    config = demo_config(**{k: v for k, v in overrides.items() if v is not None})
    result = run_demo(out, config, force=force, progress=_progress(quiet, config.epochs))
    emit(ctx, result.to_dict(), result.lines())


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Picture this CSV/NPY series instead of the windows the model was trained on.")
@click.option("--columns", default=None, help="Comma-separated CSV feature columns (as at training).")
@click.option("--labels", "labels_column", default=None, help="CSV column marking anomalous rows (1), shown on the score plot.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the PNGs here instead of into the export folder (whose manifest then lists them).")
@click.option("--force", is_flag=True, help="Replace existing PNGs of the same names (an export's own, listed in its manifest, "
                   "are always redrawn).")
@provider_option
@json_option
@click.pass_context
def report(ctx: click.Context, export_dir: Path, data: Path | None, columns: str | None, labels_column: str | None,
           out: Path | None, force: bool, provider: str, as_json: bool) -> None:
    """Draw the export as PNGs: reconstructions, score over time, loss curves, parity.

    Needs matplotlib: pip install 'edgeae[plot]'.

    \b
    Example:
      edgeae report exported
      edgeae report runs/demo --data test.csv --columns value --labels is_anomaly
    """
    from .plots import report as write_report

    paths = write_report(export_dir, data, _split_columns(columns), labels_column, out,
                         "cpu" if provider == "auto" else provider, force=force)
    emit(ctx, {"plots": [str(p) for p in paths]}, [f"wrote {p}" for p in paths])


if __name__ == "__main__":  # pragma: no cover
    main()
