"""Build, prove and measure the generated C: on this host (gcc) and on a Cortex-M4F under QEMU.

The proof is the golden program's exit code, compiled with `-std=c99 -Wall -Wextra -pedantic
-Werror`. The figures: flash and RAM of the model (arm-none-eabi-size), its stack frames
(-fstack-usage), instructions per window under QEMU (`-icount shift=0` makes the virtual clock
advance one nanosecond per guest instruction; SysTick counts that clock, and a loop of a known
instruction count calibrates ticks to instructions: instructions, not cycles), and the host's
time per window against onnxruntime's batch-1 call in the same run.
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

STRICT = ("-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror")
CORTEX_M4F = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
QEMU_MACHINE = "mps2-an386"
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


def build_arm(c_dir: Path, build_dir: Path, optimize: str = "-O2") -> ArmBuild:
    """Cross-compile model and golden program for a Cortex-M4F (hard float) on QEMU's mps2-an386."""
    gcc, size = tool("arm-none-eabi-gcc", ARM_TOOLS["arm-none-eabi-gcc"]), tool("arm-none-eabi-size", ARM_TOOLS["arm-none-eabi-size"])
    build_dir, c_dir = Path(build_dir), Path(c_dir)
    (build_dir / "startup.c").write_text(c_templates.ARM_STARTUP)
    (build_dir / "mps2.ld").write_text(c_templates.ARM_LINKER_SCRIPT)
    model, golden, startup = (build_dir / n for n in ("model.o", "golden.o", "startup.o"))
    what = "arm-none-eabi-gcc on the generated C"
    _compile([gcc, *STRICT, optimize, *CORTEX_M4F, "-fstack-usage", "-c", str(c_dir / SOURCE_FILE), "-o", str(model)], what)
    _compile([gcc, *STRICT, optimize, *CORTEX_M4F, "-DEDGEAE_SYSTICK", f"-I{c_dir}", "-c", str(c_dir / GOLDEN_FILE),
              "-o", str(golden)], what)
    _compile([gcc, optimize, *CORTEX_M4F, "-c", str(build_dir / "startup.c"), "-o", str(startup)], what)  # harness only
    elf = build_dir / "golden.elf"
    _compile([gcc, *CORTEX_M4F, "--specs=rdimon.specs", "-T", str(build_dir / "mps2.ld"), str(startup), str(model),
              str(golden), "-lm", "-o", str(elf)], "linking the Cortex-M golden program")
    numbers = _run([size, str(model)], "arm-none-eabi-size").stdout.splitlines()[-1].split()
    frames = {}
    for line in (build_dir / "model.su").read_text().splitlines():
        where, nbytes, _ = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(nbytes)
    return ArmBuild(elf, {"text": int(numbers[0]), "data": int(numbers[1]), "bss": int(numbers[2])}, frames)


def run_qemu(elf: Path) -> GoldenRun:
    """The golden program on QEMU's Cortex-M4F board, semihosting for output and exit code, the
    virtual clock counting instructions."""
    qemu = tool("qemu-system-arm", ARM_TOOLS["qemu-system-arm"])
    return run_program([qemu, "-M", QEMU_MACHINE, "-nographic", "-monitor", "none",
                        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf)],
                       "qemu-system-arm")


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
    """Every figure of one precision's C build, host and Cortex-M side by side."""

    precision: str
    weights_bytes: int
    work_bytes: int
    host: dict[str, Any] = field(default_factory=dict)
    arm: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "weights_bytes": self.weights_bytes, "work_bytes": self.work_bytes,
                "host": self.host, "arm": self.arm}

    def lines(self) -> list[str]:
        out = [f"{self.precision}: weights {self.weights_bytes / 1000:.1f} KB, work area {self.work_bytes} B"]
        h = self.host
        out.append(f"  host ({h['cpu']}): golden {'passed' if h['passed'] else 'FAILED'}, max abs error "
                   f"reconstruction {h['errors']['reconstruction']:.2e}, embedding {h['errors']['embedding']:.2e}; "
                   f"C -O3 -march=native {h['c_us']:.1f} us/window, onnxruntime batch 1 {h['ort_us']:.1f} us: "
                   f"C is {h['ort_over_c']:.2f}x onnxruntime's speed")
        a = self.arm
        if a.get("skipped"):
            out.append(f"  Cortex-M4F: skipped ({a['skipped']})")
        else:
            s = a["model_sizes"]
            out.append(f"  Cortex-M4F ({QEMU_MACHINE}, QEMU): golden {'passed' if a['passed'] else 'FAILED'}, max abs "
                       f"error reconstruction {a['errors']['reconstruction']:.2e}, embedding {a['errors']['embedding']:.2e}; "
                       f"model text {s['text']} B, data {s['data']} B, bss {s['bss']} B; stack frames "
                       f"{a['stack_bytes']} B in all (deepest chain {a['stack_chain_bytes']} B, plus libm); "
                       f"{a['instructions_per_window'] / 1e6:.2f}M instructions per window (-O2; instructions, not cycles)")
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


def bench_c(export_dir: Path, precision: str = "fp32", rounds: int = 2000, arm: bool = True) -> CBenchReport:
    """Generate the C of `precision`, prove it on the host and (where the tools are) on a Cortex-M4F, and measure it."""
    with tempfile.TemporaryDirectory(prefix="edgeae-c-") as tmp:
        tmp_path = Path(tmp)
        code = generate_c(export_dir, tmp_path / "c", precision)
        report = CBenchReport(precision, code.weights_bytes, code.work_bytes)
        run = run_program([str(build_host(code.folder, tmp_path))], "the golden program")
        report.host = {"cpu": _cpu_name(), "passed": run.passed, "errors": run.max_errors(),
                       **_time_host(Path(export_dir), code.folder, tmp_path, code.work_bytes, rounds)}
        run.check("this host")
        missing = arm_tools_missing()
        if not arm or missing:
            report.arm = {"skipped": "not asked" if not arm else f"{', '.join(missing)} not installed"}
            return report
        (tmp_path / "arm").mkdir()
        build = build_arm(code.folder, tmp_path / "arm")
        run = run_qemu(build.elf)
        frames = build.stack_frames
        chain = frames.get("edgeae_score", 0) + frames.get("edgeae_reconstruct", 0) + frames.get("run_encoder", 0) + max(
            frames.get("mac", 0), frames.get("update", 0))
        report.arm = {"machine": QEMU_MACHINE, "passed": run.passed, "errors": run.max_errors(),
                      "model_sizes": build.model_sizes, "stack_frames": frames, "stack_bytes": sum(frames.values()),
                      "stack_chain_bytes": chain, "instructions_per_window": instructions_per_window(run)}
        run.check(f"a Cortex-M4F ({QEMU_MACHINE}, QEMU)")
    return report
