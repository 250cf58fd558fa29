"""Commands for microcontrollers: generate the C of an export, and prove and measure it (c, c-bench)."""
from __future__ import annotations

from pathlib import Path

import click

from edgeae.cli.app import DEFAULT_EXPORT, main
from edgeae.cli.options import json_option
from edgeae.cli.render import emit
from edgeae.mcu.bench import bench_c
from edgeae.mcu.c_code import generate_c


@main.command("c")
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Folder for edgeae_model.h, edgeae_model.c and edgeae_golden.c (created whole or not at all).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="float32 weights, or the export's int8 variant (int8 weights, float compute, its own threshold).")
@click.option("--from", "source", type=click.Choice(["onnx", "keras"]), default="onnx", show_default=True,
              help="Read the weights from the export's ONNX graph or from its model.keras (fp32 only).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder written by edgeae.")
@json_option
@click.pass_context
def c_code(ctx: click.Context, export_dir: Path, out: Path, precision: str, source: str, force: bool,
           as_json: bool) -> None:
    """Generate dependency-free C99 of an export's autoencoder and encoder for a microcontroller.

    The header also declares a streaming API (edgeae_stream_push: one row in at a time, a score and a
    flag per window, fixed memory). Only the seed's shape (one LSTM encoder, one LSTM decoder) gets C;
    other exports are refused naming their layers.

    \b
    Example:
      edgeae c exported --out firmware/edgeae --precision int8
      cc -std=c99 -O2 firmware/edgeae/edgeae_model.c firmware/edgeae/edgeae_golden.c -lm && ./a.out
    """
    code = generate_c(export_dir, out, precision, source, force)
    payload = {"folder": str(code.folder), "precision": code.precision, "source": code.source, "files": list(code.files),
               "threshold": code.threshold, "tolerance": code.tolerance.to_dict(),
               "weights_bytes": code.weights_bytes, "work_bytes": code.work_bytes}
    emit(ctx, payload, [f"wrote {', '.join(code.files)} to {code.folder}",
                        f"{precision} weights {code.weights_bytes} bytes (const), work area {code.work_bytes} bytes; "
                        f"threshold {code.threshold:.6g}; golden tolerance {code.tolerance.describe()}"])


@main.command("c-bench")
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--precision", "precisions", type=click.Choice(["fp32", "int8"]), multiple=True,
              default=("fp32", "int8"), show_default=True, help="Builds to prove and measure (repeatable).")
@click.option("--rounds", type=click.IntRange(10, 10**7), default=2000, show_default=True,
              help="Timed batch-1 calls on the host, C and onnxruntime interleaved.")
@click.option("--no-arm", is_flag=True, help="Skip the Cortex-M4F build and QEMU run.")
@json_option
@click.pass_context
def c_bench(ctx: click.Context, export_dir: Path, precisions: tuple[str, ...], rounds: int, no_arm: bool,
            as_json: bool) -> None:
    """Prove the generated C on its golden vectors and measure it: host (gcc) and Cortex-M4F (QEMU mps2-an386).

    Prints sizes, stack, instructions per window and errors per build and target, and the host's
    speed against onnxruntime's batch-1 call. Needs gcc; arm-none-eabi-gcc, newlib and
    qemu-system-arm for the Cortex-M part (skipped, saying so, where they are missing).

    \b
    Example:
      edgeae c-bench exported --precision fp32
    """
    reports = [bench_c(export_dir, precision, rounds, arm=not no_arm) for precision in dict.fromkeys(precisions)]
    emit(ctx, {"builds": [r.to_dict() for r in reports]}, [line for r in reports for line in r.lines()])
