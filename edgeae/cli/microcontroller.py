"""Commands for microcontrollers: generate the C of an export, and prove and measure it (c, c-bench)."""
from __future__ import annotations

from pathlib import Path

import click

from edgeae.cli.app import DEFAULT_EXPORT, main
from edgeae.cli.options import json_option
from edgeae.cli.render import emit
from edgeae.mcu.bench import bench_c, table_lines
from edgeae.mcu.c_code import C_BUILDS, generate_c
from edgeae.mcu.cores import CORES


@main.command("c")
@click.argument("export_dir", type=click.Path(path_type=Path), default=DEFAULT_EXPORT)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Folder for edgeae_model.h, edgeae_model.c and edgeae_golden.c (created whole or not at all).")
@click.option("--precision", type=click.Choice(list(C_BUILDS)), default="fp32", show_default=True,
              help="fp32; int8: full integer (int8 weights, int16 state, int32 sums, the int8 detector's threshold); "
                   "int8-weights: the export's int8 variant (int8 weights, float compute).")
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

    The int8 build is full integer: scales calibrated on the export's own windows, SMLAD where the
    compiler says the core has DSP instructions, the same results bit for bit without them.

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
@click.option("--precision", "precisions", type=click.Choice(list(C_BUILDS)), multiple=True,
              default=("fp32", "int8"), show_default=True, help="Builds to prove and measure (repeatable).")
@click.option("--core", "cores", type=click.Choice(list(CORES)), multiple=True, default=tuple(CORES),
              show_default=True, help="Cortex-M cores to run on under QEMU (repeatable): m4f mps2-an386, m3 "
                                      "mps2-an385 (no FPU), m33 mps2-an505, m0 microbit (256 KB flash, 16 KB RAM).")
@click.option("--rounds", type=click.IntRange(10, 10**7), default=2000, show_default=True,
              help="Timed batch-1 calls on the host, C and onnxruntime interleaved.")
@click.option("--no-arm", is_flag=True, help="Skip the Cortex-M builds and QEMU runs.")
@json_option
@click.pass_context
def c_bench(ctx: click.Context, export_dir: Path, precisions: tuple[str, ...], cores: tuple[str, ...], rounds: int,
            no_arm: bool, as_json: bool) -> None:
    """Prove the generated C on its golden vectors and measure it: host (gcc) and Cortex-M cores under QEMU.

    Prints, per core and build, one table: golden result, max error, flags against Keras's,
    instructions per window (measured, QEMU -icount), cycles (estimated from a traced window's
    instruction mix and the core's published cycle counts), flash and RAM; and the host's speed
    against onnxruntime's batch-1 call. Needs gcc; arm-none-eabi-gcc, newlib and qemu-system-arm
    for the Cortex-M part (skipped, saying so, where they are missing). The M3 runs float in
    software: its fp32 row takes minutes.

    \b
    Example:
      edgeae c-bench exported --precision int8 --core m4f --core m0
    """
    reports = [bench_c(export_dir, precision, rounds, arm=not no_arm, cores=tuple(dict.fromkeys(cores)))
               for precision in dict.fromkeys(precisions)]
    emit(ctx, {"builds": [r.to_dict() for r in reports]},
         [line for r in reports for line in r.lines()] + table_lines(reports))
