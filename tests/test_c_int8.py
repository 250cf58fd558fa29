"""The full-integer C build (issue 29, items 1-3): `edgeae c --precision int8` against its numpy model
bit for bit, against Keras within the int8 tolerance with Keras's flags, the same bits with and without
SMLAD and on every core, and its figures on the Cortex-M4F, M3, M33 and M0 under QEMU."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.contract.errors import EXIT_USAGE, UnsupportedModelError
from edgeae.contract.golden import read_golden
from edgeae.contract.manifest import read_export_manifest
from edgeae.data.windows import Preprocessing
from edgeae.mcu import bench as c_bench, int8_c, quantize as q8
from edgeae.mcu.c_code import HEADER_FILE, SOURCE_FILE, _mutate, generate_c, network_from_onnx
from edgeae.mcu.cores import CORES, Mix, read_trace
from edgeae.mcu.stream_c import stream_bytes
from edgeae.mcu.table import core_lines

from .conftest import EXPORTED, needs_tools

# A missing tool fails these in CI (which installs them all) and skips them elsewhere (conftest.needs_tools).
needs_gcc = needs_tools("gcc", install="Debian: apt-get install gcc")
needs_arm = needs_tools(install="Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm",
                        missing=c_bench.arm_tools_missing)


@pytest.fixture(scope="module")
def seed():
    manifest = read_export_manifest(EXPORTED)
    return manifest, read_golden(EXPORTED, manifest), Preprocessing.from_dict(manifest.preprocessing)


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
    return generate_c(EXPORTED, tmp_path_factory.mktemp("int8") / "c", "int8").folder


@pytest.fixture(scope="module")
def host_digest(int8_folder, tmp_path_factory):
    run = c_bench.run_program([str(c_bench.build_host(int8_folder, tmp_path_factory.mktemp("host")))], "golden")
    return run.check("host"), re.search(r"digest: (\w+)", run.output).group(1)


def _quantized(seed, mutant=None):
    manifest, _, pre = seed
    network = network_from_onnx(onnx.load(str(EXPORTED / "autoencoder.onnx")))
    network = network if mutant is None else _mutate(network, mutant)
    return int8_c.quantized(network, EXPORTED, manifest, pre)


def test_the_int8_build_is_integer_and_small(int8_folder):
    header, source = ((int8_folder / n).read_text() for n in (HEADER_FILE, SOURCE_FILE))
    work = header[header.index("typedef struct edgeae_work"):header.index("} edgeae_work;")]
    assert "float level[EDGEAE_FEATURES]" in work and work.count("float") == 1  # no float scratch: int16 state
    assert "int16_t cell[" in work and "int16_t hidden[" in work and "int16_t projection[" in work
    manifest = json.loads((int8_folder / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["work_bytes"] <= 2048 and manifest["weights_bytes"] <= 130_000
    assert "__smlad(" in source and "#define EDGEAE_PRECISION \"int8\"" in header
    detector = read_export_manifest(EXPORTED).to_body()["detector"]
    assert f"#define EDGEAE_THRESHOLD {detector['variants']['int8']['threshold']!r}" in header


@needs_gcc
def test_int8_golden_program_passes_on_the_host(host_digest):
    run, _ = host_digest
    errors = run.max_errors()
    assert 1e-4 < errors["reconstruction"] <= 1e-2 and errors["embedding"] <= 1e-2  # range ~0.97: 1e-2 of range
    assert "flags: 0 of 602 windows differ from Keras's (allowed 0)" in run.output


@needs_gcc
@pytest.mark.parametrize("mutant", [None, "tanh"])
def test_int8_c_is_its_numpy_model_bit_for_bit(seed, tmp_path, mutant):
    """relu and tanh: the C's reconstruction and embedding equal quantize.run's, bit for bit."""
    _, golden, pre = seed
    folder = generate_c(EXPORTED, tmp_path / "c", "int8", _mutant=mutant).folder
    q = _quantized(seed, mutant)
    lib = c_bench.build_library(folder, tmp_path, ("-O2",))
    work = c_bench.work_area(lib, int8_c.work_bytes(100, 5))
    windows = np.concatenate([golden.inputs["in_range"][:40], golden.inputs["outside_range"][:40]])
    want_rec, want_emb = q8.run(q, windows, pre)
    rec, emb = np.empty((10, 5), np.float32), np.empty(100, np.float32)
    for x, r, e in zip(windows, want_rec, want_emb):
        c_bench.call(lib, "edgeae_reconstruct", x, rec, work)
        c_bench.call(lib, "edgeae_encode", x, emb, work)
        assert np.array_equal(rec, r) and np.array_equal(emb, e)
    if mutant == "tanh":  # a relu network run as tanh is wrong: the golden program says so
        run = c_bench.run_program([str(c_bench.build_host(folder, tmp_path))], "golden")
        assert run.returncode != 0 and run.failures()[0].startswith("FAIL in_range[0]: reconstruction")


@needs_gcc
def test_int8_model_matches_keras_like_the_onnx_int8_variant(seed):
    """Per-row int8 weights with int16 state lose no more than the export's own int8 variant (float compute)."""
    _, golden, pre = seed
    q = _quantized(seed)
    for name in ("in_range", "outside_range"):
        keras = golden.expected["autoencoder"]["keras"][name]
        ours = np.abs(q8.run(q, golden.inputs[name], pre)[0] - keras).max()
        variant = np.abs(golden.expected["autoencoder"]["int8"][name] - keras).max()
        assert ours <= 1.25 * variant and ours <= 1e-2 * float(keras.max() - keras.min())


def test_requantization_and_sigmoid_match_their_definitions():
    rng = np.random.default_rng(0)
    real = rng.uniform(1e-6, 0.2, 64)
    r = q8.Requant.of(real)
    values = rng.integers(-(1 << 29), 1 << 29, (1000, 64))
    assert np.abs(r.apply(values) - values * real).max() <= 1.0 + 1e-4 * np.abs(values * real).max()
    x = np.arange(-32768, 32768)
    sig = q8.sigmoid_q(x) / 32768.0
    assert np.abs(sig - 1 / (1 + np.exp(-x / 2048.0))).max() < 1e-4
    assert np.abs(q8.tanh_q(x) / 32768.0 - np.tanh(x / 2048.0)).max() < 2e-4


def test_trace_reading_and_cycle_pricing(tmp_path):
    log = tmp_path / "trace.log"
    log.write_text("IN: f\n0x00000100:  fb24 000e  smlad    r0, r4, lr, r0\n"
                   "0x00000104:  6841       ldr      r1, [r0, #4]\n0x00000106:  d1fb       bne      #0x100\n\n"
                   "Trace 0: 0x7f0000000100 [00800400/00000100/00000110/ff000200] f\n"
                   "Trace 0: 0x7f0000000100 [00800400/00000100/00000110/ff000200] f\n"
                   "----------------\nIN: g\n0x00000108:  e8bd 8ff0  pop.w    {r4, r5, r6, r7, r8, r9, sl, fp, pc}\n\n"
                   "Trace 0: 0x7f0000000200 [00800400/00000108/00000110/ff000200] g\n")
    mix = read_trace(log)
    assert mix.counts == {"smlad": 2, "ldr": 2, "b": 2, "list:9:pc": 1} and mix.taken == 1  # the first bne jumped back
    m4, m3 = CORES["m4f"], CORES["m3"]
    assert mix.cycles(m4) == 2 * 1 + 2 * 2 + 2 * 1 + 10 + 1 * m4.branch_penalty
    half = mix.minus(Mix(), 2)
    assert half.instructions == 3.5 and half.cycles(m3) == mix.cycles(m3) / 2
    lines = core_lines([{"core": "m0", "name": "Cortex-M0", "precision": "fp32", "skipped": "too big"}])
    assert lines[1] == "Cortex-M0  fp32       skipped: too big" and "estimated" not in lines[1]


@needs_arm
@pytest.mark.parametrize("core", ["m3", "m33", "m0"])
def test_int8_golden_program_on_a_cortex_m_core(int8_folder, host_digest, tmp_path, core):
    """Every golden window on the M3 (no FPU, no DSP) and M33 (DSP: with and without SMLAD); the M0's
    256 KB board holds 20 windows a set. The same bits as on this host, everywhere."""
    board = CORES[core]
    folder = int8_folder if core != "m0" else generate_c(EXPORTED, tmp_path / "c", "int8", golden_windows=20).folder
    build = c_bench.build_arm(folder, tmp_path / "golden", core=board)
    run = c_bench.run_qemu(build.elf, board).check(board.name)
    assert "flags: 0 of" in run.output and run.max_errors()["reconstruction"] <= 1e-2
    if core == "m0":
        (tmp_path / "host").mkdir()
        host = c_bench.run_program([str(c_bench.build_host(folder, tmp_path / "host"))], "golden").check("host")
        assert re.search(r"digest: (\w+)", run.output).group(1) == re.search(r"digest: (\w+)", host.output).group(1)
        assert build.model_sizes["text"] + build.model_sizes["data"] <= board.flash_bytes // 2
        return
    assert f"digest: {host_digest[1]}" in run.output
    if core == "m33":
        portable = c_bench.run_qemu(c_bench.build_arm(folder, tmp_path / "portable", core=board,
                                                      defines=("-DEDGEAE_PORTABLE",)).elf, board)
        assert f"digest: {host_digest[1]}" in portable.output
        assert c_bench.instructions_per_window(run) < 0.7 * c_bench.instructions_per_window(portable)
    else:  # the M3 at least 5x fewer instructions than float (in software) there; float on 4 windows
        fp32 = generate_c(EXPORTED, tmp_path / "fp32", "fp32", golden_windows=1).folder
        float_run = c_bench.run_qemu(c_bench.build_arm(fp32, tmp_path / "float", core=board).elf, board).check("M3")
        assert c_bench.instructions_per_window(run) * 5 <= c_bench.instructions_per_window(float_run)


@needs_arm
@pytest.mark.slow
def test_c_bench_meets_the_cortex_m4_goals():
    """`edgeae c-bench` on the M4F: golden passed with SMLAD and the same bits without, and the seed goals:
    at most 1.2M instructions per window, half of float's estimated cycles (float: issue 29's 2.09M
    instructions at the CPI of its own traced mix), 130 KB flash and 3 KB RAM."""
    result = CliRunner().invoke(main, ["c-bench", str(EXPORTED), "--precision", "int8", "--precision", "fp32",
                                       "--core", "m4f", "--rounds", "10", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["precision"]: r for b in json.loads(result.output)["builds"] for r in b["cores"]}
    ours, float_row = rows["int8"], rows["fp32"]
    assert ours["passed"] and ours["flags_differ"] == 0 and ours["windows"] == 602
    assert ours["portable_digest"] == ours["digest"]
    assert ours["instructions_per_window"] <= 1.2e6 and ours["flash_bytes"] <= 130_000 and ours["ram_bytes"] <= 3_000
    assert ours["cycles_per_window_estimated"] <= 0.5 * float_row["cycles_per_window_estimated"]
    assert abs(ours["traced_instructions_per_window"] / ours["instructions_per_window"] - 1) < 0.1
    table = "\n".join(core_lines([ours, float_row]))  # what c-bench prints without --json
    assert re.search(r"Cortex-M4F\s+int8\s+passed \(602\), =portable\s+\S+\s+same\s+1\.\d+M", table), table


@needs_gcc
def test_int8_scaled_export_with_odd_features(scaled_export, tmp_path):
    """Clipping, min-max scaling and its inverse, 3 features (padded to a pair), 6 units: the golden program
    passes within the int8 tolerance and the C is its numpy model bit for bit."""
    folder = generate_c(scaled_export, tmp_path / "c", "int8").folder
    assert "(x - offset[f]) * scale[f]" in (folder / SOURCE_FILE).read_text()
    c_bench.run_program([str(c_bench.build_host(folder, tmp_path))], "golden").check("host")
    manifest = read_export_manifest(scaled_export)
    pre = Preprocessing.from_dict(manifest.preprocessing)
    network = network_from_onnx(onnx.load(str(scaled_export / manifest.models["autoencoder"].file)))
    q = int8_c.quantized(network, scaled_export, manifest, pre)
    windows = next(iter(read_golden(scaled_export, manifest).inputs.values()))[:20]
    lib = c_bench.build_library(folder, tmp_path, ("-O2",))
    work = c_bench.work_area(lib, int8_c.work_bytes(6, 3))
    want, _ = q8.run(q, windows, pre)
    got = np.empty(windows.shape[1:], np.float32)
    for x, y in zip(windows, want):
        c_bench.call(lib, "edgeae_reconstruct", x, got, work)
        assert np.array_equal(got, y)


@needs_gcc
def test_int8_header_states_its_true_sizes(int8_folder, tmp_path):
    """The work area and stream sizes the header and manifest state are what the compiler lays out."""
    program = tmp_path / "sizes.c"
    program.write_text('#include <stdio.h>\n#include "edgeae_model.h"\n'
                       'int main(void) { printf("%d %d\\n", (int)sizeof(edgeae_work), (int)sizeof(edgeae_stream)); '
                       'return 0; }\n')
    subprocess.run(["gcc", *c_bench.STRICT, f"-I{int8_folder}", str(program), "-o", str(tmp_path / "sizes")], check=True)
    work, stream = map(int, subprocess.run([str(tmp_path / "sizes")], capture_output=True, text=True).stdout.split())
    assert work == json.loads((int8_folder / "manifest.json").read_text())["work_bytes"] == int8_c.work_bytes(100, 5)
    assert stream == stream_bytes(50, work) and f"{stream} bytes (sizeof(edgeae_stream))" in \
        (int8_folder / HEADER_FILE).read_text()


def test_int8_refuses_what_it_does_not_implement(tmp_path):
    """A gate activation other than sigmoid: one line, exit 2, naming the builds that take it; nothing written."""
    with pytest.raises(UnsupportedModelError) as caught:
        generate_c(EXPORTED, tmp_path / "c", "int8", _mutant="hard-sigmoid")
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in str(caught.value)
    assert "sigmoid gates and relu or tanh cells; this one has HardSigmoid" in str(caught.value)
    assert "--precision fp32 or int8-weights" in str(caught.value) and not (tmp_path / "c").exists()
