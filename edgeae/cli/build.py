"""Commands that train, export, verify and rebuild: thin calls into training, publish and verification."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeae.contract import progress
from edgeae.contract.files import check_target, target_lock
from edgeae.contract.errors import ParityError, UsageError
from edgeae.contract.variants import check_variant_names
from edgeae.cli.app import DEFAULT_EXPORT, DEFAULT_TRAINING, main
from edgeae.contract.signing import check_signature
from edgeae.cli.options import (
    build_option, config_and_data, json_option, parity_options, progress_printer, publish_checks_options, routing_option,
    sign_key_option, split_columns, trusted_key_option,
    training_options,
)
from edgeae.cli.progress import quiet_option, shows_progress
from edgeae.cli.summary import export_summary_lines
from edgeae.cli.render import detector_lines, early_stop_lines, emit, level_lines, missing_lines, time_axis_lines
from edgeae.exporter.demo import demo as run_demo
from edgeae.exporter.demo import demo_config
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions, UserModelOptions
from edgeae.exporter.sections import folder_lines, folder_variants
from edgeae.exporter.user_model import is_keras_file, parse_scaling_values
from edgeae.trainer import training as trainer
from edgeae.verifier.verification import verify as verify_export


@main.command()
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_TRAINING, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing folder at --out.")
@json_option
@click.pass_context
@shows_progress
def train(ctx: click.Context, out: Path, force: bool, as_json: bool, **kw: Any) -> None:
    """Train the autoencoder and save it (model.keras + training record) to --out.

    \b
    Example:
      edgeae train --epochs 50 --out runs/small
      edgeae train --data sensors.csv --columns temp,pressure --validation-fraction 0.2 --patience 20
    """
    quiet = kw["quiet"]
    config, data, columns = config_and_data(kw)
    check_target(out, force)  # fail before training, not after
    with target_lock(out):  # held from the first epoch: a second run on --out is refused at once
        training = trainer.train(config, data, columns, progress_printer(quiet, config.epochs))
        trainer.save_training(training, out, force)
    trainer.check_learned(training, kept=out)
    summary = training.summary()
    emit(ctx, {"out": str(out), **summary}, [
        f"trained {summary['parameters']:,} parameters for {summary['epochs_run']} epochs: final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        *time_axis_lines(summary),
        *missing_lines(summary),
        *level_lines(summary),
        *early_stop_lines(summary),
        f"saved to {out}",
    ])


OWN_MODEL_DEFAULTS = {"scaling": "none", "clip_quantiles": (0.0, 1.0), "scaling_values": ()}  # export's options for a Keras file, unset


@main.command()
@click.argument("training_dir", metavar="TRAINING_DIR|MODEL.keras", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@parity_options()
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@click.option("--threshold-quantile", type=float, default=None,
              help="Recalibrate the anomaly threshold at this quantile [default: the one chosen at training].")
@click.option("--threshold", type=float, default=None,
              help="Set the anomaly threshold for every precision (e.g. one `edgeae evaluate` suggested from labels); "
                   "the calibrated one is recorded beside it.")
@click.option("--threshold-source", default="edgeae export --threshold", show_default=True,
              help="Where --threshold came from, recorded in the manifest.")
@click.option("--encoder-layer", default=None,
              help="Your own model: the layer whose output is the encoding [default: the input of its RepeatVector].")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Your own model: its training data (CSV/NPY, read as `train --data` reads it), to learn --scaling "
                   "and to check parity on [default: no scaling, standard normal windows].")
@click.option("--columns", default=None, help="Your own model: comma-separated columns of --data and --calibrate.")
@click.option("--scaling", type=click.Choice(["none", "minmax", "standard"]), default="none", show_default=True,
              help="Your own model: the scaling it expects, learned from --data.")
@click.option("--scaling-values", multiple=True, metavar="NAME=V1,V2,...",
              help="Your own model: the scaling it was trained with, per feature, instead of learning it: "
                   "mean=...  std=... with --scaling standard, min=...  max=... with minmax (repeat the option).")
@click.option("--clip-quantiles", type=(float, float), default=(0.0, 1.0), show_default=True,
              help="Your own model: quantiles of --data at which extreme values are clipped.")
@click.option("--stride", type=click.IntRange(1, 10**9), default=None,
              help="Your own model: step between windows cut from --data and --calibrate [default: 1].")
@click.option("--calibrate", type=click.Path(path_type=Path), default=None,
              help="Your own model: normal data (CSV/NPY) to calibrate the anomaly threshold on [default: no "
                   "threshold; scores in the model's units].")
@build_option
@routing_option
@publish_checks_options
@quiet_option
@sign_key_option
@json_option
@click.pass_context
@shows_progress
def export(ctx: click.Context, training_dir: Path, out: Path, opset: int | None, atol: float, rtol: float,
           provider: str, force: bool, threshold_quantile: float | None, threshold: float | None,
           threshold_source: str, build: tuple[str, ...], fixed_routing: bool, min_calibration_windows: int,
           accept_unlearned: bool, sign_key: Path | None, as_json: bool, **own: Any) -> None:
    """Export a trained model (a training folder, or your own Keras .keras/.h5 sequence autoencoder) to
    autoencoder.onnx + encoder.onnx, verify parity, publish to --out.

    \b
    Example:
      edgeae export runs/train --out exported --force
      edgeae export runs/train --out exported --threshold 0.012 --threshold-source "best F1, evaluate on labels.csv"
      edgeae export my_model.keras --data train.csv --scaling standard --calibrate normal.csv --out exported/mine
      edgeae export my_model.keras --scaling standard --scaling-values mean=20.5,3.1 --scaling-values std=4.2,0.8
      edgeae export runs/train --out exported --sign-key signing.pem   # devices check it with --trusted-key
    """
    publish.check_export_target(out, training_dir, force)  # before TensorFlow loads and the model runs
    built = build or None
    check_variant_names(built)
    options = ExportOptions(opset=opset, atol=atol, rtol=rtol, providers=provider, force=force, variants=built,
                            threshold_quantile=threshold_quantile, threshold=threshold,
                            threshold_source=threshold_source, measure_routing=not fixed_routing,
                            min_calibration_windows=min_calibration_windows, accept_unlearned=accept_unlearned,
                            sign_key=sign_key)
    if training_dir.is_file() or is_keras_file(training_dir):
        model = UserModelOptions(
            encoder_layer=own["encoder_layer"], data=own["data"], columns=split_columns(own["columns"]),
            scaling=own["scaling"], clip_quantiles=own["clip_quantiles"], stride=own["stride"], calibrate=own["calibrate"],
            scaling_values=parse_scaling_values(own["scaling_values"]) if own["scaling_values"] else None)
        path, report = publish.export_keras(training_dir, out, model, options)
    else:
        given = [f"--{name.replace('_', '-')}" for name, value in own.items()
                 if value is not None and value != OWN_MODEL_DEFAULTS.get(name)]
        if given:
            raise UsageError(f"{', '.join(given)} apply to your own Keras model file, not to a training folder")
        with target_lock(out):  # before TensorFlow loads the model: a second export to --out is refused at once
            with progress.stage("load the trained model"):
                training = trainer.load_training(training_dir)
            path, report = publish.export(training, out, options)
    emit(ctx, {"out": str(path), "parity": report.to_dict(), "variants": folder_variants(path)},
         [*report.summary_lines(), *folder_lines(path, targets=False), *detector_lines(path), f"exported to {path}",
          *export_summary_lines(path)])


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@parity_options(recorded=True)
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--against", type=click.Choice(["auto", "keras", "stored"]), default="auto", show_default=True,
              help="keras: run the stored Keras model; stored: the Keras outputs saved at export (no TensorFlow "
                   "needed); auto: keras where TensorFlow is installed.")
@trusted_key_option
@json_option
@click.pass_context
def verify(ctx: click.Context, export_dir: Path, atol: float | None, rtol: float | None, provider: str, against: str,
           trusted_key: Path | None, as_json: bool) -> None:
    """Re-check an export: files against the manifest, ONNX against Keras on every provider.

    \b
    Example:
      edgeae verify exported --provider cpu --atol 1e-6
      edgeae verify exported --provider cuda --against stored   # on a device without TensorFlow
    """
    check_signature(export_dir, trusted_key)  # with a key: signed by it and unchanged, or refused (exit 4)
    report = verify_export(export_dir, provider, atol, against, rtol)
    emit(ctx, report.to_dict(), report.summary_lines())
    if not report:
        raise ParityError("; ".join(report.failures()))


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--provider", default="all", show_default=True, help="Providers to check the variants on: all, cpu or cuda.")
@click.option("--strict", is_flag=True, help="Exit 6 when a variant misses its tolerance (it is left out either way).")
@parity_options(recorded=True)
@build_option
@routing_option
@sign_key_option
@quiet_option
@json_option
@click.pass_context
@shows_progress
def optimize(ctx: click.Context, export_dir: Path, provider: str, strict: bool, atol: float | None, rtol: float | None,
             build: tuple[str, ...], fixed_routing: bool, sign_key: Path | None, as_json: bool) -> None:
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
    result = publish.optimize(export_dir, ExportOptions(atol=atol, rtol=rtol, providers=provider, variants=build or None,
                                                        measure_routing=not fixed_routing, sign_key=sign_key))
    emit(ctx, {"out": str(export_dir), **result.to_dict()}, [*result.lines(), f"published to {export_dir}",
                                                             *export_summary_lines(export_dir)])
    missed = [f"{v.role}/{v.name}" for v in result.variants if not v.published]
    if strict and missed:
        raise ParityError(f"variants outside their tolerance, left out: {', '.join(missed)}")


@main.command()
@training_options
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_EXPORT, show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17; 14-18].")
@parity_options()
@click.option("--provider", default="all", show_default=True, help="Providers to verify on: all, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@build_option
@routing_option
@publish_checks_options
@sign_key_option
@json_option
@click.pass_context
@shows_progress
def pipeline(ctx: click.Context, out: Path, opset: int | None, atol: float, rtol: float, provider: str, force: bool,
             build: tuple[str, ...], fixed_routing: bool, min_calibration_windows: int, accept_unlearned: bool,
             sign_key: Path | None, as_json: bool, **kw: Any) -> None:
    """Train, export and verify in one go (the seed notebook's model and data by default).

    \b
    Example:
      edgeae pipeline --force                      # regenerate exported/
      edgeae pipeline --epochs 20 --units 16 --out runs/small
      edgeae pipeline --force --sign-key signing.pem   # a signed export
    """
    quiet = kw["quiet"]
    config, data, columns = config_and_data(kw)
    options = ExportOptions(opset=opset, atol=atol, rtol=rtol, providers=provider, force=force, variants=build or None,
                            measure_routing=not fixed_routing, min_calibration_windows=min_calibration_windows,
                            accept_unlearned=accept_unlearned, sign_key=sign_key)
    path, report, training = publish.run_pipeline(config, out, data, columns, progress_printer(quiet, config.epochs),
                                                  options)
    summary = training.summary()
    emit(ctx, {"out": str(path), "training": summary, "parity": report.to_dict(), "variants": folder_variants(path)}, [
        f"trained {summary['parameters']:,} parameters, {summary['epochs_run']} epochs, final loss {summary['final_loss']:.3e}, "
        f"training reconstruction max abs error {summary['train_reconstruction_max_abs']:.3e}",
        *time_axis_lines(summary),
        *missing_lines(summary),
        *level_lines(summary),
        *early_stop_lines(summary),
        *report.summary_lines(),
        *folder_lines(path, targets=False),
        *detector_lines(path),
        f"exported to {path}",
        *export_summary_lines(path),
    ])


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--epochs", type=click.IntRange(1, 10**9), default=None, help="Training epochs [default: 150, with early stopping].")
@click.option("--units", type=click.IntRange(1, 10**9), default=None, help="LSTM units [default: 32].")
@click.option("--timesteps", type=click.IntRange(1, 10**9), default=None, help="Window length [default: 64].")
@click.option("--stride", type=click.IntRange(1, 10**9), default=None, help="Step between training windows [default: 1].")
@click.option("--threshold-quantile", type=float, default=None, help="Threshold quantile [default: 0.99].")
@parity_options()
@click.option("--force", is_flag=True, help="Replace an existing export at --out.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@json_option
@click.pass_context
@shows_progress
def demo(ctx: click.Context, out: Path, atol: float, rtol: float, force: bool, quiet: bool, as_json: bool,
         **overrides: Any) -> None:
    """Anomaly detection on a real series: train, export, score on the runtime, report quality.

    The series is InternalBleeding16 from the UCR anomaly archive, shipped inside the aeon
    package (pip install 'edgeae[dataset]'); nothing is downloaded.

    \b
    Example:
      edgeae demo --out runs/demo
      edgeae report runs/demo
    """
    config = demo_config(**{k: v for k, v in overrides.items() if v is not None})
    result = run_demo(out, config, force=force, progress=progress_printer(quiet, config.epochs), atol=atol, rtol=rtol)
    emit(ctx, result.to_dict(), result.lines())
