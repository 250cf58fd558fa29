"""The Cortex-M cores the generated C is proven on under QEMU, and the cycle estimate of a run.

Four boards of Debian's qemu-system-arm: Cortex-M4F (mps2-an386), Cortex-M3 without FPU
(mps2-an385), Cortex-M33 (mps2-an505, in its secure state) and Cortex-M0 (microbit: 256 KB flash,
16 KB RAM). QEMU counts instructions (`-icount`), not cycles. The cycles here are an estimate: a
traced run (`-d in_asm,exec,nochain`: every translated block and each time it runs) gives the
dynamic instruction mix of a few windows; each instruction is weighed with the core's published
cycle count (Cortex-M0/M3/M4/M33 technical reference manuals, zero wait states: loads 2, a taken
branch 1 + P with P = 2, LDM/STM/PUSH/POP 1 + N; on the M4 and M33 MLA, SMULL and SMLAD 1 and a
single-precision VFMA/VMLA 3; on the M3 MLA 2, long multiplies 4); the mix's cycles per instruction
times the instructions counted over every golden window is the estimate. Pipelined neighbouring
loads (N + 1) and wait states are not modelled.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeae.mcu import templates as c_templates
from edgeae.mcu.c_text import fill, floats

_COMMON = {"ldr": 2, "str": 2, "ldrd": 3, "strd": 3, "mul": 1, "vldr": 2, "vstr": 2, "vdiv": 14, "vsqrt": 14,
           "vfma": 3, "vfms": 3, "vfnma": 3, "vfnms": 3, "vmla": 3, "vmls": 3, "vnmla": 3, "vnmls": 3,
           "sdiv": 7, "udiv": 7, "smlad": 1, "smladx": 1, "sxtb16": 1}
_LONG = ("smull", "umull", "smlal", "umlal")
_SINGLE_CYCLE_MAC = {"mla": 1, "mls": 1, **dict.fromkeys(_LONG, 1)}  # M4 and M33


@dataclass(frozen=True)
class Core:
    key: str
    name: str
    machine: str
    flags: tuple[str, ...]
    code: tuple[str, str]  # origin, length
    ram: tuple[str, str]
    flash_bytes: int  # the board's: a program larger does not fit
    ram_bytes: int
    cycles: dict[str, int] = field(default_factory=dict)  # per mnemonic, beyond _COMMON; 1 otherwise
    branch_penalty: int = 2  # P: a taken branch costs 1 + P


M4F = Core("m4f", "Cortex-M4F", "mps2-an386", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
           ("0x00000000", "4M"), ("0x20000000", "4M"), 4 << 20, 4 << 20, _SINGLE_CYCLE_MAC)
M3 = Core("m3", "Cortex-M3", "mps2-an385", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"),
          ("0x00000000", "4M"), ("0x20000000", "4M"), 4 << 20, 4 << 20, {"mla": 2, "mls": 2, **dict.fromkeys(_LONG, 4)})
M33 = Core("m33", "Cortex-M33", "mps2-an505", ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
           ("0x10000000", "4M"), ("0x38000000", "2M"), 4 << 20, 2 << 20, _SINGLE_CYCLE_MAC)
M0 = Core("m0", "Cortex-M0", "microbit", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"),
          ("0x00000000", "256K"), ("0x20000000", "16K"), 256 << 10, 16 << 10, {"muls": 1})
CORES = {core.key: core for core in (M4F, M3, M33, M0)}


def linker_script(core: Core) -> str:
    return fill(c_templates.ARM_LINKER_SCRIPT, {"MACHINE": core.machine, "CODE_ORIGIN": core.code[0],
                                                "CODE_LENGTH": core.code[1], "RAM_ORIGIN": core.ram[0],
                                                "RAM_LENGTH": core.ram[1]})


# A program that scores RUNS windows and nothing else: traced twice (RUNS = the windows, RUNS = 0), the
# difference is the model's own dynamic mix.
MIX = r"""#include "edgeae_model.h"
#define COUNT @COUNT@
#ifndef RUNS
#define RUNS COUNT
#endif
static const float inputs[COUNT * EDGEAE_WINDOW_VALUES] = {@INPUTS@};
static edgeae_work work;
static float reconstruction[EDGEAE_WINDOW_VALUES];
volatile double sink;
volatile int runs = RUNS;

int main(void)
{
    int w;
    for (w = 0; w < runs; w++)
        sink = edgeae_score(inputs + (w % COUNT) * EDGEAE_WINDOW_VALUES, reconstruction, &work);
    return 0;
}
"""


def mix_source(windows: np.ndarray) -> str:
    return fill(MIX, {"COUNT": len(windows), "INPUTS": floats(windows)})


_INSN = re.compile(r"^0x([0-9a-f]+):\s+([0-9a-f]{4}(?: [0-9a-f]{4})?)\s+(\S+)\s*(.*)$")
_TRACE = re.compile(r"^Trace \d+: (0x[0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/")
_BRANCHES = ("b", "bl", "bx", "blx", "cbz", "cbnz", "tbb", "tbh")
_CONDITIONS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")


def _base(mnemonic: str) -> str:
    """'ldr.w' -> 'ldr', 'bne' -> 'b', 'vfma.f32' -> 'vfma', 'ldrsb' kept (a load), 'pop' kept."""
    name = mnemonic.split(".")[0].lower()
    if name.startswith("b") and name[1:] in _CONDITIONS:
        return "b"
    for cond in _CONDITIONS:  # an instruction in an IT block: addeq, movne ...
        if name.endswith(cond) and len(name) > 3 and name[:-2] in ("add", "mov", "sub", "ldr", "str", "cmp", "orr",
                                                                    "and", "mvn", "rsb", "eor", "lsl", "lsr", "asr"):
            return name[:-2]
    return name


def _cost_key(mnemonic: str, operands: str) -> str:
    """The key a cycle table prices: loads and stores of every width as ldr/str, lists with their length."""
    name = _base(mnemonic)
    if name in ("push", "pop", "ldm", "stm", "ldmia", "stmia", "stmdb", "ldmdb", "vpush", "vpop", "vldmia",
                "vstmia", "vldm", "vstm", "vstmdb"):
        inside = operands[operands.find("{") + 1:operands.find("}")]
        count = 0
        for item in filter(None, (s.strip() for s in inside.split(","))):
            if "-" in item:
                low, high = (int(re.sub(r"\D", "", part) or 0) for part in item.split("-"))
                count += high - low + 1
            else:
                count += 1
        pc = "pc" in inside
        return f"list:{count}" + (":pc" if pc else "")
    if name in ("ldrd", "strd"):
        return name
    if re.fullmatch(r"ldr(s?[bh]|ex|t)?", name) or name == "ldrsh" or name == "ldrsb":
        return "ldr"
    if re.fullmatch(r"str([bh]|ex|t)?", name):
        return "str"
    return name


@dataclass
class Mix:
    """Instructions run, by cost key, and the taken branches among them."""

    counts: Counter = field(default_factory=Counter)
    taken: int = 0

    @property
    def instructions(self) -> int:
        return sum(self.counts.values())

    def minus(self, other: Mix, runs: int) -> Mix:
        diff = Counter({k: (v - other.counts.get(k, 0)) / runs for k, v in self.counts.items()})
        return Mix(Counter({k: v for k, v in diff.items() if v > 0}), (self.taken - other.taken) / runs)

    def cycles(self, core: Core) -> float:
        table = {**_COMMON, **core.cycles}
        total = 0.0
        for key, n in self.counts.items():
            if key.startswith("list:"):
                regs = int(key.split(":")[1])
                total += n * (1 + regs)  # a POP into pc is a taken branch: priced below
            else:
                total += n * table.get(key, 1)
        return total + self.taken * core.branch_penalty

    def top(self, n: int = 8) -> list[tuple[str, float]]:
        return [(k, round(float(v), 1)) for k, v in self.counts.most_common(n)]


def read_trace(path: Path) -> Mix:
    """The dynamic mix of a QEMU `-d in_asm,exec,nochain` log: each block's instructions times its runs."""
    blocks: dict[str, list[tuple[int, int, str, str]]] = {}  # address, bytes, mnemonic, operands
    runs: Counter = Counter()
    pending: list[tuple[int, int, str, str]] = []
    mix = Mix()
    previous: tuple[str, int] | None = None  # last block run: its key and where it falls through to
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if line.startswith("0x"):
                m = _INSN.match(line)
                if m:
                    pending.append((int(m.group(1), 16), 4 if " " in m.group(2) else 2, m.group(3), m.group(4)))
                continue
            if not line.startswith("Trace"):
                continue
            t = _TRACE.match(line)
            if not t:
                continue
            host, pc = t.group(1), int(t.group(2), 16)
            if host not in blocks or (pending and pending[0][0] == pc):
                blocks[host] = pending if pending and pending[0][0] == pc else blocks.get(host, [])
                pending = []
            runs[host] += 1
            if previous is not None and pc != previous[1]:
                mix.taken += 1  # the last block ended in a branch that was taken (or an exception)
            block = blocks[host]
            previous = (host, block[-1][0] + block[-1][1] if block else pc)
    for host, n in runs.items():
        for _, _, mnemonic, operands in blocks.get(host, []):
            mix.counts[_cost_key(mnemonic, operands)] += n
    return mix

