"""The c-bench table: per core and precision, the golden result, instructions, cycles, flash and RAM.

Measured: golden result and errors (the golden program on QEMU), instructions per window (QEMU
-icount, averaged over every golden window the board's program holds), flash (arm-none-eabi-size of
the model's object: text + data, not libm or libgcc) and RAM (the work area, the model's static data
and every stack frame of its functions summed). Estimated: cycles per window, the measured
instructions times the cycles per instruction of a traced window's instruction mix priced with the
core's published cycle counts (cores.py).
"""
from __future__ import annotations

from typing import Any

HEADINGS = ("core", "precision", "golden", "max abs err", "flags", "instr/window", "est. cycles", "CPI",
            "flash B", "RAM B")
NOTE = ("instr/window measured (QEMU -icount, every golden window); est. cycles = measured instructions x CPI "
        "of a traced window's mix priced with the core's TRM cycle counts (an estimate: no wait states, no "
        "pipelined loads); flash = model object text+data; RAM = work area + static data + all stack frames")


def _millions(value: Any) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}M"


def row_cells(row: dict[str, Any]) -> tuple[str, ...]:
    name, precision = row.get("name", row.get("core", "?")), row.get("precision", "?")
    if row.get("skipped"):
        return (name, precision, f"skipped: {row['skipped']}", *([""] * (len(HEADINGS) - 3)))
    golden = "passed" if row.get("passed") else "FAILED"
    if row.get("windows") is not None:
        golden += f" ({row['windows']})"
    if row.get("portable_digest") is not None:
        golden += ", =portable" if row["portable_digest"] == row.get("digest") else ", !=portable"
    flags = "-" if row.get("flags_differ") is None else ("same" if row["flags_differ"] == 0 else
                                                          f"{row['flags_differ']} differ")
    cpi = row.get("cpi_estimated")
    return (name, precision, golden, f"{row.get('errors', {}).get('reconstruction', float('nan')):.2e}", flags,
            _millions(row.get("instructions_per_window")), _millions(row.get("cycles_per_window_estimated")),
            "-" if cpi is None else f"{cpi:.2f}", str(row.get("flash_bytes", "-")), str(row.get("ram_bytes", "-")))


def core_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table as aligned text lines, rows grouped by core, then the note on what is measured."""
    if not rows:
        return []
    order = {key: i for i, key in enumerate(dict.fromkeys(r.get("core") for r in rows))}
    cells = [HEADINGS] + [row_cells(r) for r in sorted(rows, key=lambda r: order[r.get("core")])]
    widths = [max(len(c[i]) for c in cells if not c[2].startswith("skipped")) for i in range(len(HEADINGS))]
    lines = []
    for c in cells:
        if c[2].startswith("skipped"):
            lines.append(f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]}")
        else:
            lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return lines + [NOTE]
