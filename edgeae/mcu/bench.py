"""Build, prove and measure the generated C: on this host (gcc) and on Cortex-M cores under QEMU
(cores.py: M4F, M3, M33, M0).

The proof is the golden program's exit code, compiled with `-std=c99 -Wall -Wextra -pedantic
-Werror`. The figures: flash and RAM of the model (arm-none-eabi-size), its stack frames
(-fstack-usage), instructions per window under QEMU (`-icount shift=0` makes the virtual clock
advance one nanosecond per guest instruction; SysTick counts that clock, and a loop of a known
instruction count calibrates ticks to instructions: measured instructions, not cycles), cycles
estimated from a traced run's instruction mix (cores.py), and the host's time per window against
onnxruntime's batch-1 call in the same run.
"""
from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgeae.contract.errors import EXIT_RUNTIME, EdgeAEError, MissingDependencyError, ParityError
from edgeae.contract.golden import read_golden
from edgeae.contract.manifest import read_export_manifest, verify_file
from edgeae.mcu import templates as c_templates
from edgeae.mcu.c_code import GOLDEN_FILE, SOURCE_FILE, generate_c
from edgeae.mcu.cores import CORES, M4F, Core, Mix, linker_script, mix_source, read_trace
from edgeae.mcu.table import core_lines

STRICT = ("-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror")
CORTEX_M4F = M4F.flags
QEMU_MACHINE = M4F.machine
ARM_TOOLS = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
             "qemu-system-arm": "qemu-system-arm"}
TIMEOUT_S = 600


class MissingToolError(MissingDependencyError):
    """A compiler or emulator the command needs is not installed."""


class CBuildError(EdgeAEError, RuntimeError):
    """The generated C did not compile, or its program did not run to an exit code."""

    exit_code = EXIT_RUNTIME


def tool(name: str, package: str | None = None) -> str:
    """The path of a tool, or one line saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"{name} not found: install it (Debian: apt-get install {package or name})")
    return path


def arm_tools_missing() -> list[str]:
    """The Cortex-M tools this machine lacks (empty where the QEMU proof can run)."""
    return [name for name in ARM_TOOLS if shutil.which(name) is None]


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CBuildError(f"{what} did not finish in {TIMEOUT_S} s") from None


def _compile(command: list[str], what: str) -> None:
    done = _run(command, what)
    if done.returncode:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
        raise CBuildError(f"{what} failed: {first[:300]}")


@dataclass(frozen=True)
class GoldenRun:
    """The golden program's exit code and what it printed, read into numbers."""

    returncode: int
    output: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and "passed: 0 failure(s)" in self.output

    def max_errors(self) -> dict[str, float]:
        """The worst reconstruction, embedding and score errors over every set."""
        worst = {"reconstruction": 0.0, "embedding": 0.0, "score": 0.0}
        for m in re.finditer(r"reconstruction max abs (\S+), embedding max abs (\S+), score max abs (\S+)", self.output):
            for key, value in zip(worst, m.groups()):
                worst[key] = max(worst[key], float(value))
        return worst

    def failures(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("FAIL")]

    def check(self, where: str) -> GoldenRun:
        """Raise ParityError naming the first failing window (and how many more) unless it passed."""
        if not self.passed:
            lines = self.failures() or [f"exit code {self.returncode}: {self.output.strip()[-200:]}"]
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise ParityError(f"golden test on {where}: {lines[0]}{more}")
        return self


def build_host(c_dir: Path, build_dir: Path, optimize: str = "-O2") -> Path:
    """Compile the golden program with gcc's strictest C99 flags; return the executable."""
    gcc = tool("gcc")
    exe = Path(build_dir) / "golden"
    _compile([gcc, *STRICT, optimize, str(Path(c_dir) / SOURCE_FILE), str(Path(c_dir) / GOLDEN_FILE), "-lm",
              "-o", str(exe)], "gcc on the generated C")
    return exe


def run_program(command: list[str], what: str) -> GoldenRun:
    done = _run(command, what)
    return GoldenRun(done.returncode, done.stdout + done.stderr)


HOST_FAST = ("-O3", "-march=native")  # the host's own vector units, as onnxruntime's kernels use them


def build_library(c_dir: Path, build_dir: Path, flags: tuple[str, ...] = HOST_FAST) -> ctypes.CDLL:
    """The model as a shared library, to call from Python (any window, timing)."""
    gcc = tool("gcc")
    lib = Path(build_dir) / "libedgeae_model.so"
    _compile([gcc, *STRICT, *flags, "-fPIC", "-shared", str(Path(c_dir) / SOURCE_FILE), "-lm", "-o", str(lib)],
             "gcc on the generated C")
    library = ctypes.CDLL(str(lib))
    library.edgeae_score.restype = ctypes.c_double
    library.edgeae_is_anomaly.argtypes = [ctypes.c_double]
    return library


def work_area(library: ctypes.CDLL, work_bytes: int) -> ctypes.Array:
    """A zeroed edgeae_work for calls through `library` (8-byte aligned)."""
    return (ctypes.c_double * ((work_bytes + 7) // 8))()


def call(library: ctypes.CDLL, name: str, window: np.ndarray, out: np.ndarray, work: ctypes.Array) -> Any:
    """Call one entry point on a float32 window; `out` receives its array output."""
    f32 = ctypes.POINTER(ctypes.c_float)
    x = np.ascontiguousarray(window, np.float32)
    return getattr(library, name)(x.ctypes.data_as(f32), out.ctypes.data_as(f32), work)


@dataclass(frozen=True)
class ArmBuild:
    elf: Path
    model_sizes: dict[str, int]  # arm-none-eabi-size of the model's object: text, data, bss
    stack_frames: dict[str, int]  # -fstack-usage, per function of edgeae_model.c


def _arm_objects(c_dir: Path, build_dir: Path, optimize: str, core: Core, defines: tuple[str, ...]) -> tuple[Path, Path]:
    """The model's object (strict C99, -fstack-usage) and the start-up's, for `core`."""
    gcc = tool("arm-none-eabi-gcc", ARM_TOOLS["arm-none-eabi-gcc"])
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "startup.c").write_text(c_templates.ARM_STARTUP)
    (build_dir / "board.ld").write_text(linker_script(core))
    model, startup = build_dir / "model.o", build_dir / "startup.o"
    what = "arm-none-eabi-gcc on the generated C"
    _compile([gcc, *STRICT, optimize, *core.flags, *defines, "-fstack-usage", "-c", str(c_dir / SOURCE_FILE),
              "-o", str(model)], what)
    _compile([gcc, optimize, *core.flags, "-c", str(build_dir / "startup.c"), "-o", str(startup)], what)  # harness only
    return model, startup


def _link(core: Core, build_dir: Path, objects: list[Path], elf: Path) -> None:
    gcc = tool("arm-none-eabi-gcc", ARM_TOOLS["arm-none-eabi-gcc"])
    _compile([gcc, *core.flags, "--specs=rdimon.specs", "-T", str(build_dir / "board.ld"), *map(str, objects), "-lm",
              "-o", str(elf)], f"linking the {core.name} program")


def build_arm(c_dir: Path, build_dir: Path, optimize: str = "-O2", core: Core = M4F,
              defines: tuple[str, ...] = ()) -> ArmBuild:
    """Cross-compile model and golden program for `core` (default the Cortex-M4F, hard float, of mps2-an386).
    `defines`: extra -D flags for the model (-DEDGEAE_PORTABLE: the integer build without SMLAD)."""
    gcc, size = tool("arm-none-eabi-gcc", ARM_TOOLS["arm-none-eabi-gcc"]), tool("arm-none-eabi-size", ARM_TOOLS["arm-none-eabi-size"])
    build_dir, c_dir = Path(build_dir), Path(c_dir)
    model, startup = _arm_objects(c_dir, build_dir, optimize, core, defines)
    golden = build_dir / "golden.o"
    _compile([gcc, *STRICT, optimize, *core.flags, "-DEDGEAE_SYSTICK", f"-I{c_dir}", "-c", str(c_dir / GOLDEN_FILE),
              "-o", str(golden)], "arm-none-eabi-gcc on the generated C")
    elf = build_dir / "golden.elf"
    _link(core, build_dir, [startup, model, golden], elf)
    numbers = _run([size, str(model)], "arm-none-eabi-size").stdout.splitlines()[-1].split()
    frames = {}
    for line in (build_dir / "model.su").read_text().splitlines():
        where, nbytes, _ = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(nbytes)
    return ArmBuild(elf, {"text": int(numbers[0]), "data": int(numbers[1]), "bss": int(numbers[2])}, frames)


def _qemu(core: Core, elf: Path, *extra: str) -> list[str]:
    return [tool("qemu-system-arm", ARM_TOOLS["qemu-system-arm"]), "-M", core.machine, "-nographic", "-monitor", "none",
            "-semihosting-config", "enable=on,target=native", *extra, "-kernel", str(elf)]


def run_qemu(elf: Path, core: Core = M4F) -> GoldenRun:
    """The golden program on `core`'s QEMU board, semihosting for output and exit code, the
    virtual clock counting instructions."""
    return run_program(_qemu(core, elf, "-icount", "shift=0"), "qemu-system-arm")


def trace_mix(c_dir: Path, build_dir: Path, core: Core, windows: np.ndarray, defines: tuple[str, ...] = ()) -> Mix:
    """The model's dynamic instruction mix per window on `core`: a program scoring `windows` traced
    by QEMU, less the same program scoring none."""
    gcc = tool("arm-none-eabi-gcc", ARM_TOOLS["arm-none-eabi-gcc"])
    build_dir, c_dir = Path(build_dir), Path(c_dir)
    model, startup = _arm_objects(c_dir, build_dir, "-O2", core, defines)
    (build_dir / "mix.c").write_text(mix_source(windows))
    mixes = []
    for runs in (len(windows), 0):
        obj, elf, log = (build_dir / f"mix{runs}{suffix}" for suffix in (".o", ".elf", ".log"))
        _compile([gcc, *STRICT, "-O2", *core.flags, f"-DRUNS={runs}", f"-I{c_dir}", "-c", str(build_dir / "mix.c"),
                  "-o", str(obj)], "arm-none-eabi-gcc on the mix program")
        _link(core, build_dir, [startup, model, obj], elf)
        done = _run(_qemu(core, elf, "-d", "in_asm,exec,nochain", "-D", str(log)), "qemu-system-arm (traced)")
        if done.returncode:
            raise CBuildError(f"the traced {core.name} run failed: {(done.stdout + done.stderr).strip()[-200:]}")
        mixes.append(read_trace(log))
        log.unlink()
    return mixes[0].minus(mixes[1], len(windows))


def instructions_per_window(run: GoldenRun) -> float | None:
    """SysTick ticks spent in edgeae_score per window, turned into instructions by the calibration loop."""
    calibration = re.search(r"calibration: (\d+) ticks for (\d+) instructions", run.output)
    spent = re.search(r"score: (\d+) ticks for (\d+) windows", run.output)
    if not calibration or not spent or int(calibration.group(1)) == 0:
        return None
    per_tick = int(calibration.group(2)) / int(calibration.group(1))
    return int(spent.group(1)) * per_tick / int(spent.group(2))


@dataclass
class CBenchReport:
    """Every figure of one precision's C build: the host, and each Cortex-M core (rows for table.py)."""

    precision: str
    weights_bytes: int
    work_bytes: int
    host: dict[str, Any] = field(default_factory=dict)
    cores: list[dict[str, Any]] = field(default_factory=list)
    cores_skipped: str | None = None  # why no core ran (not asked, tools missing)

    @property
    def arm(self) -> dict[str, Any]:
        """The Cortex-M4F's row (older reports' only core)."""
        return next((row for row in self.cores if row.get("core") == M4F.key), {})

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "weights_bytes": self.weights_bytes, "work_bytes": self.work_bytes,
                "host": self.host, "cores": self.cores, "cores_skipped": self.cores_skipped}

    def lines(self) -> list[str]:
        out = [f"{self.precision}: weights {self.weights_bytes / 1000:.1f} KB, work area {self.work_bytes} B"]
        h = self.host
        out.append(f"  host ({h['cpu']}): golden {'passed' if h['passed'] else 'FAILED'}, max abs error "
                   f"reconstruction {h['errors']['reconstruction']:.2e}, embedding {h['errors']['embedding']:.2e}; "
                   f"C -O3 -march=native {h['c_us']:.1f} us/window, onnxruntime batch 1 {h['ort_us']:.1f} us: "
                   f"C is {h['ort_over_c']:.2f}x onnxruntime's speed")
        if self.cores_skipped:
            out.append(f"  Cortex-M: skipped ({self.cores_skipped})")
        return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown CPU"


def _time_host(export_dir: Path, c_dir: Path, build_dir: Path, work_bytes: int, rounds: int) -> dict[str, Any]:
    """Median µs per window of the C (-O3 -march=native, through ctypes) and onnxruntime's batch-1 call, interleaved."""
    manifest = read_export_manifest(export_dir)
    windows = next(iter(read_golden(export_dir, manifest).inputs.values()))
    name = next((f for f in ("autoencoder.b1.onnx", manifest.models["autoencoder"].file) if f in manifest.files))
    session = ort.InferenceSession(str(verify_file(export_dir, name, manifest.files[name])),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    library = build_library(c_dir, build_dir)
    work = work_area(library, work_bytes)
    out = np.empty(windows.shape[1:], np.float32)
    c_times, ort_times = [], []
    for i in range(rounds):
        x = windows[i % len(windows)][None]
        start = time.perf_counter()
        call(library, "edgeae_reconstruct", x, out, work)
        c_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        session.run(None, {input_name: x})
        ort_times.append(time.perf_counter() - start)
    c_us, ort_us = 1e6 * float(np.median(c_times)), 1e6 * float(np.median(ort_times))
    return {"c_us": c_us, "ort_us": ort_us, "ort_over_c": ort_us / c_us, "ort_file": name}


def _stack(frames: dict[str, int]) -> int:
    """Every frame of the model's functions summed: an upper bound of its deepest call chain."""
    return sum(frames.values())


def prove_on_core(c_dir: Path, build_dir: Path, core: Core, code: Any, mix_windows: np.ndarray) -> dict[str, Any]:
    """One row of the table: the golden program on `core` (every window it holds), its instructions per
    window (measured), cycles (estimated from the traced mix), flash and RAM; for the integer build on a
    DSP core, also the portable build's digest (the same bits, or not)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"core": core.key, "name": core.name, "machine": core.machine, "precision": code.precision}
    build = build_arm(c_dir, build_dir / "golden", core=core)
    run = run_qemu(build.elf, core)
    flags = re.search(r"flags: (\d+) of (\d+) windows differ", run.output)
    digest = re.search(r"digest: (\w+)", run.output)
    sizes = build.model_sizes
    row.update({"passed": run.passed, "errors": run.max_errors(), "failures": run.failures()[:3],
                "windows": int(flags.group(2)) if flags else None,
                "flags_differ": int(flags.group(1)) if flags else None,
                "digest": digest.group(1) if digest else None,
                "instructions_per_window": instructions_per_window(run), "model_sizes": sizes,
                "flash_bytes": sizes["text"] + sizes["data"], "stack_bytes": _stack(build.stack_frames),
                "ram_bytes": code.work_bytes + sizes["data"] + sizes["bss"] + _stack(build.stack_frames)})
    if code.precision == "int8" and core.key in ("m4f", "m33"):  # the cores with DSP: SMLAD against the portable loop
        portable = run_qemu(build_arm(c_dir, build_dir / "portable", core=core, defines=("-DEDGEAE_PORTABLE",)).elf, core)
        other = re.search(r"digest: (\w+)", portable.output)
        row["portable_digest"] = other.group(1) if other else None
        row["portable_instructions_per_window"] = instructions_per_window(portable)
    mix = trace_mix(c_dir, build_dir / "mix", core, mix_windows)
    row["traced_instructions_per_window"] = mix.instructions
    row["cpi_estimated"] = mix.cycles(core) / mix.instructions if mix.instructions else None
    measured = row["instructions_per_window"]
    row["cycles_per_window_estimated"] = measured * row["cpi_estimated"] if measured and row["cpi_estimated"] else None
    row["top_instructions"] = mix.top()
    return row


def _core_fits(code: Any, core: Core) -> str | None:
    """Why the model cannot fit `core`'s board (None where it may)."""
    if code.weights_bytes > core.flash_bytes * 0.9:
        return f"the model's {code.weights_bytes / 1000:.0f} KB of weights do not fit {core.flash_bytes >> 10} KB of flash"
    if code.work_bytes > core.ram_bytes // 2:
        return f"its {code.work_bytes} B work area does not fit {core.ram_bytes >> 10} KB of RAM beside the test"
    return None


SMALL_BOARD_WINDOWS = 20  # golden windows per set a 256 KB board holds beside the model and newlib


def bench_c(export_dir: Path, precision: str = "fp32", rounds: int = 2000, arm: bool = True,
            cores: tuple[str, ...] = (M4F.key,)) -> CBenchReport:
    """Generate the C of `precision`, prove it on the host and (where the tools are) on each of `cores`
    under QEMU (cores.CORES), and measure it."""
    with tempfile.TemporaryDirectory(prefix="edgeae-c-") as tmp:
        tmp_path = Path(tmp)
        code = generate_c(export_dir, tmp_path / "c", precision)
        report = CBenchReport(code.precision, code.weights_bytes, code.work_bytes)
        run = run_program([str(build_host(code.folder, tmp_path))], "the golden program")
        digest = re.search(r"digest: (\w+)", run.output)
        report.host = {"cpu": _cpu_name(), "passed": run.passed, "errors": run.max_errors(),
                       "digest": digest.group(1) if digest else None,
                       **_time_host(Path(export_dir), code.folder, tmp_path, code.work_bytes, rounds)}
        run.check("this host")
        missing = arm_tools_missing()
        if not arm or missing:
            report.cores_skipped = "not asked" if not arm else f"{', '.join(missing)} not installed"
            return report
        golden = read_golden(Path(export_dir), read_export_manifest(Path(export_dir)))
        mix_windows = next(iter(golden.inputs.values()))[:1]
        for key in cores:
            core = CORES[key]
            why = _core_fits(code, core)
            if why is not None:
                report.cores.append({"core": key, "name": core.name, "precision": code.precision, "skipped": why})
                continue
            folder = code.folder
            if core.flash_bytes < (1 << 20):  # a small board: the golden program holds fewer windows
                folder = generate_c(export_dir, tmp_path / f"c-{key}", precision,
                                    golden_windows=SMALL_BOARD_WINDOWS).folder
            row = prove_on_core(folder, tmp_path / key, core, code, mix_windows)
            report.cores.append(row)
            if not row["passed"]:
                GoldenRun(1, "\n".join(row["failures"]) or "no summary").check(f"a {core.name} ({core.machine}, QEMU)")
    return report


def table_lines(reports: list[CBenchReport]) -> list[str]:
    return core_lines([row for r in reports for row in r.cores])
