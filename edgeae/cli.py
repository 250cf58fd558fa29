"""The `edgeae` command: thin click wrappers over the Python API, one exit-code table.

No logic lives here beyond parsing options and printing; heavy imports (TensorFlow,
tf2onnx) happen inside the library functions the training commands call, so the runtime
commands (encode, reconstruct, score, inspect) start without them.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PARITY, EXIT_USAGE, EdgeAEError

DEFAULT_EXPORT = Path("exported")
DEFAULT_TRAINING = Path("runs/train")


class EdgeGroup(click.Group):
    """Turns every failure into one line on stderr and its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except EdgeAEError as exc:
            code, message = exc.exit_code, str(exc)
        except KeyboardInterrupt:
            code, message = EXIT_INTERRUPTED, "interrupted; nothing was published"
        except MemoryError:
            code, message = EXIT_INTERNAL, "out of memory (try a smaller --chunk or batch)"
        except OSError as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            code, message = EXIT_USAGE, f"{exc.strerror or exc}{where}"
        except Exception as exc:  # a bug: still one line unless --debug
            code, message = EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (rerun with --debug)"
        if debug:
            traceback.print_exc()
        click.echo(f"error: {message}", err=True)
        ctx.exit(code)


def emit(ctx: click.Context, payload: dict, lines: list[str]) -> None:
    """Machine-readable JSON on stdout with --json, otherwise human lines."""
    if ctx.find_root().params.get("as_json") or ctx.params.get("as_json"):
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


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
provider_option = click.option("--provider", default="auto", show_default=True,
                               help="auto (CUDA if available, else CPU), cpu or cuda.")


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
    from .model import TrainConfig

    d = TrainConfig()
    options = [
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="CSV (header, a column per feature) or NPY series/windows. Default: the seed sequence."),
        click.option("--columns", default=None, help="Comma-separated CSV column names (or indices) to use."),
        click.option("--timesteps", type=int, default=d.timesteps, show_default=True, help="Window length."),
        click.option("--features", type=int, default=None, help="Features per step [default: 5, or the data's column count]."),
        click.option("--units", type=int, default=d.units, show_default=True, help="LSTM units (the embedding size)."),
        click.option("--activation", default=d.activation, show_default=True, help="LSTM activation."),
        click.option("--epochs", type=int, default=d.epochs, show_default=True),
        click.option("--batch-size", type=int, default=d.batch_size, show_default=True),
        click.option("--learning-rate", type=float, default=d.learning_rate, show_default=True),
        click.option("--seed", type=int, default=d.seed, show_default=True, help="Random seed (deterministic on one machine)."),
        click.option("--stride", type=int, default=d.stride, show_default=True, help="Step between windows of a series."),
        click.option("--validation-fraction", type=float, default=d.validation_fraction, show_default=True,
                     help="Last part of the series (by time) held out for validation."),
        click.option("--patience", type=int, default=d.patience, show_default=True,
                     help="Early stopping on validation loss after this many epochs without improvement (0: off)."),
        click.option("--clip-quantiles", type=(float, float), default=d.clip_quantiles, show_default=True,
                     help="Quantiles of the training data at which extreme values are clipped."),
        click.option("--scaling", type=click.Choice(["none", "minmax", "standard"]), default=d.scaling, show_default=True),
        click.option("--quiet", is_flag=True, help="No progress output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config_and_data(kw: dict) -> tuple[Any, Path | None, tuple[str, ...] | None]:
    from .data import load_series
    from .model import TrainConfig

    data, columns = kw.pop("data"), kw.pop("columns")
    columns_t = tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None
    kw.pop("quiet")
    if kw["features"] is None:
        kw["features"] = load_series(data, columns_t).values.shape[-1] if data is not None else TrainConfig.features
    return TrainConfig(**kw), data, columns_t


def _progress(quiet: bool, epochs: int):
    if quiet:
        return None
    from .model import print_progress

    return print_progress(epochs)


def _parity_lines(report) -> list[str]:
    lines = ["parity " + ("passed" if report else "FAILED") + ":"]
    for key, s in report.summary().items():
        lines.append(f"  {key}: max abs {s['max_abs']:.2e} (tol {s['tolerance_abs']:.0e}), "
                     f"rel-to-range {s['max_rel_range']:.2e}, mean abs {s['mean_abs']:.2e} "
                     f"over {s['comparisons']} input sets  {'ok' if s['passed'] else 'FAIL'}")
    if report.encoder_matches_autoencoder is not None:
        lines.append(f"  encoder == autoencoder's internal encoding: max abs {report.encoder_matches_autoencoder.max_abs:.2e}")
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
    from . import pipeline

    quiet = kw["quiet"]
    config, data, columns = _config_and_data(kw)
    if out.exists() and not force:
        from .errors import ExportExistsError

        raise ExportExistsError(f"{out} exists; pass --force to replace it")
    training = pipeline.train(config, data, columns, _progress(quiet, config.epochs))
    pipeline.save_training(training, out, force)
    summary = training.summary()
    emit(ctx, {"out": str(out), **summary}, [
        f"trained {summary['parameters']:,} parameters for {summary['epochs_run']} epochs: final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        f"saved to {out}",
    ])


@main.command()
@click.argument("training_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@json_option
@click.pass_context
def export(ctx: click.Context, training_dir: Path, out: Path, opset: int | None, atol: float, provider: str,
           force: bool, as_json: bool) -> None:
    """Export a trained model to autoencoder.onnx + encoder.onnx, verify parity, publish to --out.

    \b
    Example:
      edgeae export runs/train --out exported --force
    """
    from . import pipeline

    path, report = pipeline.export(pipeline.load_training(training_dir), out, opset, atol, provider, force)
    emit(ctx, {"out": str(path), "parity": report.to_dict()}, [*_parity_lines(report), f"exported to {path}"])


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@json_option
@click.pass_context
def verify(ctx: click.Context, export_dir: Path, atol: float, provider: str, as_json: bool) -> None:
    """Re-check an export: files against the manifest, ONNX against Keras on every provider.

    \b
    Example:
      edgeae verify exported --provider cpu --atol 1e-6
    """
    from . import pipeline
    from .errors import ParityError

    report = pipeline.verify(export_dir, provider, atol)
    emit(ctx, report.to_dict(), _parity_lines(report))
    if not report:
        raise ParityError("; ".join(report.failures()))


@main.command()
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Parity tolerance, max abs error.")
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@json_option
@click.pass_context
def pipeline(ctx: click.Context, out: Path, opset: int | None, atol: float, provider: str, force: bool,
             as_json: bool, **kw: Any) -> None:
    """Train, export and verify in one go (the seed notebook's model and data by default).

    \b
    Example:
      edgeae pipeline --force                      # regenerate exported/
      edgeae pipeline --epochs 20 --units 16 --out /tmp/small
    """
    from . import pipeline as api

    quiet = kw["quiet"]
    config, data, columns = _config_and_data(kw)
    path, report, training = api.run_pipeline(config, out, data, columns, opset, atol, provider, force,
                                              _progress(quiet, config.epochs))
    summary = training.summary()
    emit(ctx, {"out": str(path), "training": summary, "parity": report.to_dict()}, [
        f"trained {summary['parameters']:,} parameters, {summary['epochs_run']} epochs, final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        *_parity_lines(report),
        f"exported to {path}",
    ])


# ---------------------------------------------------------------- runtime commands


@main.command()
@click.argument("model", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@provider_option
@json_option
@click.pass_context
def inspect(ctx: click.Context, model: Path, provider: str, as_json: bool) -> None:
    """Show an export's models, inputs/outputs and which provider runs each node.

    \b
    Example:
      edgeae inspect exported --provider cuda
    """
    from . import runtime

    edge = runtime.load(model, provider)
    info: dict[str, Any] = {"providers_available": runtime.available_providers(), "models": {}}
    lines = [f"available providers: {', '.join(info['providers_available'])}"]
    for role, m in edge.models.items():
        placement = m.node_placement()
        info["models"][role] = {"file": m.name, "input": m.input_name, "outputs": m.output_names,
                                "window": [m.timesteps, m.features], "session_providers": m.providers,
                                "placement": placement, "placement_summary": runtime.placement_summary(placement)}
        lines.append(f"{role} ({m.name}): {m.input_name} (batch, {m.timesteps}, {m.features}) -> {', '.join(m.output_names)}")
        lines.append(f"  session providers: {', '.join(m.providers)}")
        for prov, count in runtime.placement_summary(placement).items():
            lines.append(f"  {count} nodes ran on {prov}")
        for node, prov in placement.items():
            if "LSTM" in node or prov != "CPUExecutionProvider":
                lines.append(f"    {node}: {prov}")
    if edge.manifest:
        info["manifest"] = {k: edge.manifest.get(k) for k in ("kind", "edgeae_version", "created", "opset", "window", "parity")}
    emit(ctx, info, lines)


def _read_windows(path: Path, timesteps: int, features: int, stride: int, columns: str | None) -> np.ndarray:
    from .data import load_series, make_windows

    cols = tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None
    series = load_series(path, cols)
    return series.values if series.is_windows else make_windows(series.values, timesteps, stride)


def _write_result(ctx: click.Context, payload: dict[str, np.ndarray], output: Path | None) -> None:
    from .artifacts import atomic_write_bytes, dumps_json

    if output is None:
        emit(ctx, {k: v for k, v in payload.items()}, [json.dumps({k: _jsonable(v) for k, v in payload.items()})])
        return
    suffix = output.suffix.lower()
    main_value = next(iter(payload.values()))
    if suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, main_value)
        atomic_write_bytes(output, buffer.getvalue())
    elif suffix == ".csv":
        table = np.column_stack([np.asarray(v, dtype=np.float64).reshape(len(main_value), -1) for v in payload.values()])
        header = []
        for k, v in payload.items():
            width = int(np.prod(np.asarray(v).shape[1:]))
            header += [k] if width == 1 else [f"{k}_{i}" for i in range(width)]
        body = "\n".join(",".join(repr(float(x)) for x in row) for row in table)
        atomic_write_bytes(output, (",".join(header) + "\n" + body + "\n").encode())
    elif suffix == ".json":
        atomic_write_bytes(output, dumps_json({k: _jsonable(v) for k, v in payload.items()}).encode())
    else:
        raise click.BadParameter(f"{output.name}: write .csv, .npy or .json", param_hint="--output")
    click.echo(f"wrote {len(main_value)} rows to {output}", err=True)


def runtime_command(name: str, doc: str):
    """encode / reconstruct / score share their options; only the call differs."""

    @main.command(name=name, help=doc)
    @click.argument("model", type=click.Path(path_type=Path))
    @click.argument("data", type=click.Path(path_type=Path))
    @click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
                  help="Write .csv, .npy or .json (default: JSON on stdout).")
    @click.option("--stride", type=int, default=None, help="Window stride for a series [default: the manifest's].")
    @click.option("--columns", default=None, help="Comma-separated CSV columns to use.")
    @click.option("--threshold", type=float, default=None, help="score: flag windows above this (default: the manifest's).")
    @provider_option
    @json_option
    @click.pass_context
    def command(ctx: click.Context, model: Path, data: Path, output: Path | None, stride: int | None,
                columns: str | None, threshold: float | None, provider: str, as_json: bool) -> None:
        from . import runtime

        edge = runtime.load(model, provider)
        stride = stride or int((edge.manifest.get("window") or {}).get("stride", 1))
        windows = _read_windows(data, edge.timesteps, edge.features, stride, columns)
        if name == "encode":
            payload = {"embedding": edge.encode(windows)}
        elif name == "reconstruct":
            payload = {"reconstruction": edge.reconstruct(windows)}
        else:
            result = edge.score(windows, threshold=threshold)
            payload = {"score": result.scores}
            if result.flags is not None:
                payload["anomaly"] = result.flags.astype(np.int8)
        _write_result(ctx, payload, output)

    return command


runtime_command("encode", "Encode windows to embeddings with the encoder.\n\n\b\nExample:\n  edgeae encode exported series.csv -o embeddings.npy")
runtime_command("reconstruct", "Reconstruct windows (raw units) with the autoencoder.\n\n\b\nExample:\n  edgeae reconstruct exported windows.npy -o recon.npy")
runtime_command("score", "Per-window reconstruction error, with anomaly flags where a threshold is known.\n\n\b\nExample:\n  edgeae score exported readings.csv -o scores.csv")


if __name__ == "__main__":  # pragma: no cover
    main()
