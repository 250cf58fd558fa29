"""The generated C (graphs/c_code.py, c_bench.py, `edgeae c`): compiled strictly, run on the export's
golden vectors on this host and, where the toolchain is installed, on a Cortex-M4F under QEMU."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from edgeae.mcu import bench as c_bench
from edgeae.contract.manifest import read_export_manifest
from edgeae.cli import main
from edgeae.contract.errors import EXIT_PARITY, EXIT_USAGE, IntegrityError, MissingDependencyError, ParityError, UsageError
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.mcu.c_code import GOLDEN_FILE, HEADER_FILE, SOURCE_FILE, UnsupportedModelError, generate_c, \
    network_from_onnx
from edgeae.mcu.shape import layer_refusal
from edgeae.trainer.model import import_keras

from .conftest import EXPORTED, missing_tools_outcome, needs_tools

# A missing tool fails these in CI (which installs them all) and skips them elsewhere (conftest.needs_tools).
needs_gcc = needs_tools("gcc", install="Debian: apt-get install gcc")
needs_arm = needs_tools(install="Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm",
                        missing=c_bench.arm_tools_missing)


@pytest.fixture(scope="module")
def seed_c(tmp_path_factory) -> dict[str, Path]:
    """The committed seed export's C, float32 and int8, generated once."""
    root = tmp_path_factory.mktemp("c")
    return {p: generate_c(EXPORTED, root / p, p).folder for p in ("fp32", "int8")}


@pytest.fixture(scope="module")
def seed_library(seed_c, tmp_path_factory):
    """The float32 model as a shared library, with a work area."""
    lib = c_bench.build_library(seed_c["fp32"], tmp_path_factory.mktemp("lib"), ("-O2",))
    return lib, c_bench.work_area(lib, 8192)


def test_header_and_source_are_bare_c(seed_c):
    header = (seed_c["fp32"] / HEADER_FILE).read_text()
    source = (seed_c["fp32"] / SOURCE_FILE).read_text()
    assert "#define EDGEAE_TIMESTEPS 10" in header and "#define EDGEAE_FEATURES 5" in header
    detector = read_export_manifest(EXPORTED).to_body()["detector"]
    assert f"#define EDGEAE_THRESHOLD {detector['threshold']!r}" in header  # the export's fp32 threshold, exactly
    int8 = (seed_c["int8"] / HEADER_FILE).read_text()
    assert f"#define EDGEAE_THRESHOLD {detector['variants']['int8']['threshold']!r}" in int8  # int8's own
    assert detector["variants"]["int8"]["threshold"] != detector["threshold"]
    assert "5240 bytes" in header and "NaN" in header
    includes = {line for text in (header, source) for line in text.splitlines() if line.startswith("#include")}
    assert includes == {"#include <stdint.h>", "#include <math.h>", '#include "edgeae_model.h"'}
    assert "malloc(" not in source and "printf" not in source


@needs_gcc
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_golden_program_passes_on_the_host(seed_c, tmp_path, precision):
    run = c_bench.run_program([str(c_bench.build_host(seed_c[precision], tmp_path))], "golden").check("host")
    errors = run.max_errors()
    if precision == "fp32":
        assert errors["reconstruction"] <= 1e-5 and errors["embedding"] <= 1e-5
    else:  # int8 weights: the int8 variant's error, inside its tolerance (1e-2 of a range of about 1)
        assert 1e-4 < errors["reconstruction"] <= 1e-2
    assert "flags: 0 of 602 windows differ" in run.output


@needs_gcc
@pytest.mark.parametrize("mutant, worst", [("gate-order", 0.3), ("tanh", 0.3), ("hard-sigmoid", 0.1)])
def test_golden_program_catches_wrong_c(tmp_path, mutant, worst):
    folder = generate_c(EXPORTED, tmp_path / "c", _mutant=mutant).folder
    run = c_bench.run_program([str(c_bench.build_host(folder, tmp_path))], "golden")
    # The golden program returns EXIT_FAILURE (1 with glibc and newlib) when any check fails (templates.py).
    assert run.returncode == 1 and run.failures()
    assert run.failures()[0].startswith("FAIL in_range[0]: reconstruction max abs")
    assert run.max_errors()["reconstruction"] > worst
    with pytest.raises(ParityError, match=r"^golden test on host: FAIL in_range\[0\]") as caught:
        run.check("host")
    assert caught.value.exit_code == EXIT_PARITY and "\n" not in str(caught.value)  # one line, exit 6 in the CLI


@needs_gcc
def test_c_from_keras_is_the_c_from_onnx(seed_c, tmp_path):
    """Same weights, same gate order: the two sources give the same C, weight for weight."""
    folder = generate_c(EXPORTED, tmp_path / "keras", source="keras").folder
    for name in (SOURCE_FILE, HEADER_FILE):
        ours, theirs = ((f / name).read_text().splitlines() for f in (folder, seed_c["fp32"]))
        assert "from model.keras" in ours[0] and "from autoencoder.onnx" in theirs[0]
        assert ours[1:] == theirs[1:]


@needs_gcc
def test_int8_weights_c_is_the_exports_int8_variant(tmp_path):
    """The int8-weights C uses the int8 graph's own codes and scales: it gives that graph's outputs."""
    from edgeae.contract.golden import read_golden

    golden = read_golden(EXPORTED, read_export_manifest(EXPORTED))
    folder = generate_c(EXPORTED, tmp_path / "c", "int8-weights").folder
    assert '#define EDGEAE_PRECISION "int8-weights"' in (folder / HEADER_FILE).read_text()
    lib = c_bench.build_library(folder, tmp_path, ("-O2",))
    work = c_bench.work_area(lib, 8192)
    out = np.empty((10, 5), np.float32)
    worst = 0.0
    for x, want in zip(golden.inputs["in_range"][:50], golden.expected["autoencoder"]["int8"]["in_range"]):
        c_bench.call(lib, "edgeae_reconstruct", x, out, work)
        worst = max(worst, float(np.abs(out - want).max()))
    assert worst <= 1e-5


@needs_gcc
def test_non_finite_input_follows_the_header(seed_library):
    """NaN is clipped to the upper bound (fminf), the score sees the raw NaN and flags it."""
    import onnxruntime as ort

    lib, work = seed_library
    x = np.full((10, 5), 0.5, np.float32)
    nan, high = x.copy(), x.copy()
    nan[3, 2], high[3, 2] = np.nan, 0.94  # clip_high of feature 2 (0.9399999976158142 as float32)
    got, want = np.empty_like(x), np.empty_like(x)
    c_bench.call(lib, "edgeae_reconstruct", nan, got, work)
    c_bench.call(lib, "edgeae_reconstruct", high, want, work)
    assert np.isfinite(got).all() and np.array_equal(got, want)
    score = c_bench.call(lib, "edgeae_score", nan, got, work)
    assert math.isnan(score) and lib.edgeae_is_anomaly(score) == 1 and lib.edgeae_is_anomaly(0.0) == 0
    session = ort.InferenceSession(str(EXPORTED / "autoencoder.onnx"), providers=["CPUExecutionProvider"])
    assert np.isnan(session.run(None, {"sequence": nan[None]})[0]).any()  # onnxruntime propagates it


@needs_gcc
def test_scaled_export_with_clipping_and_minmax(scaled_export, tmp_path):
    """The offset and scaling path (and its inverse) against that export's golden vectors."""
    folder = generate_c(scaled_export, tmp_path / "c").folder
    assert "(x - offset[f]) * scale[f]" in (folder / SOURCE_FILE).read_text()
    c_bench.run_program([str(c_bench.build_host(folder, tmp_path))], "golden").check("host")


def _lstm_edit(proto, edit) -> None:
    node = next(n for n in proto.graph.node if n.name == "decoder/LSTM")
    edit(node)


@pytest.mark.parametrize("edit, message", [
    (lambda n: n.attribute.append(helper.make_attribute("clip", 3.0)), "LSTM attribute clip=3.0"),
    (lambda n: n.attribute.append(helper.make_attribute("input_forget", 1)), "input_forget=1"),
    (lambda n: n.attribute.append(helper.make_attribute("layout", 1)), "layout=1"),
    (lambda n: [a for a in n.attribute if a.name == "direction"][0].__setattr__("s", b"bidirectional"),
     "direction='bidirectional'"),
    (lambda n: [a for a in n.attribute if a.name == "activations"][0].strings.__setitem__(0, b"HardSigmoid"),
     "gate activation HardSigmoid"),
    (lambda n: n.input.extend(["", "", "", "encoder/B"]), "peepholes"),
])
def test_unsupported_lstm_settings_are_refused(edit, message):
    proto = onnx.load(str(EXPORTED / "autoencoder.onnx"))
    _lstm_edit(proto, edit)
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        network_from_onnx(proto)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("decoder/LSTM: ")


def test_cli_writes_once_and_refuses_bad_input(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    first = runner.invoke(main, ["c", str(EXPORTED), "--out", str(out), "--precision", "int8"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == sorted([GOLDEN_FILE, HEADER_FILE, SOURCE_FILE, "manifest.json"])
    again = runner.invoke(main, ["c", str(EXPORTED), "--out", str(out)])
    assert again.exit_code == 2 and "pass --force" in again.output
    assert "int8" in (out / HEADER_FILE).read_text()  # untouched
    assert runner.invoke(main, ["c", str(EXPORTED), "--out", str(out), "--force"]).exit_code == 0
    assert '"fp32"' in (out / HEADER_FILE).read_text()
    not_export = runner.invoke(main, ["c", str(tmp_path), "--out", str(tmp_path / "x")])
    assert not_export.exit_code == 2 and "is not an edgeae folder" in not_export.output
    assert not_export.output.count("\n") == 1 and "Traceback" not in not_export.output
    keras_int8 = runner.invoke(main, ["c", str(EXPORTED), "--out", str(tmp_path / "y"), "--from", "keras",
                                      "--precision", "int8-weights"])
    assert keras_int8.exit_code == 2 and not (tmp_path / "y").exists()


def test_tampered_export_is_refused(tmp_path):
    export = tmp_path / "export"
    shutil.copytree(EXPORTED, export)
    data = bytearray((export / "autoencoder.onnx").read_bytes())
    data[-10] ^= 1
    (export / "autoencoder.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="autoencoder.onnx: sha256"):
        generate_c(export, tmp_path / "c")
    result = CliRunner().invoke(main, ["c", str(export), "--out", str(tmp_path / "c")])
    assert result.exit_code == 4 and "tampered" in result.output and not (tmp_path / "c").exists()
    with pytest.raises(UsageError, match="precision must be one of fp32, int8"):
        generate_c(EXPORTED, tmp_path / "d", "fp16")


def test_missing_toolchain_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="arm-none-eabi-gcc not found: install it"):
        c_bench.tool("arm-none-eabi-gcc", c_bench.ARM_TOOLS["arm-none-eabi-gcc"])
    assert c_bench.arm_tools_missing() == list(c_bench.ARM_TOOLS)


@needs_arm
def test_golden_program_passes_on_a_cortex_m4f(seed_c, tmp_path):
    """Cross-compiled for a Cortex-M4F (hard float) and run under QEMU mps2-an386: the goals of issue 16."""
    build = c_bench.build_arm(seed_c["fp32"], tmp_path)
    run = c_bench.run_qemu(build.elf).check("Cortex-M4F")
    assert run.max_errors()["reconstruction"] <= 1e-5
    assert build.model_sizes["text"] + build.model_sizes["data"] <= 500_000
    assert 5240 + sum(build.stack_frames.values()) <= 8192
    assert c_bench.instructions_per_window(run) <= 2.9e6


@needs_arm
def test_qemu_reports_a_failing_golden_program(tmp_path):
    folder = generate_c(EXPORTED, tmp_path / "c", _mutant="gate-order").folder
    run = c_bench.run_qemu(c_bench.build_arm(folder, tmp_path).elf)
    # EXIT_FAILURE (1) from main, handed to the host by semihosting's exit call as QEMU's own exit status.
    assert run.returncode == 1 and run.failures()
    with pytest.raises(ParityError, match=r"^golden test on Cortex-M4F: FAIL ") as caught:
        run.check("Cortex-M4F")
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- models of another shape (issue 29, item 4)


def _user_model(kind: str):
    """A tiny model `edgeae export MODEL.keras` takes but the C does not: a Bidirectional GRU, or 3+3 stacked LSTMs."""
    keras = import_keras()[1]
    layers = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 3))
    if kind == "bidirectional-gru":
        x = layers.Bidirectional(layers.GRU(4), name="bi_gru")(inputs)
        x = layers.RepeatVector(6)(x)
        x = layers.Bidirectional(layers.GRU(4, return_sequences=True), name="bi_gru_dec")(x)
    else:
        x = layers.LSTM(8, return_sequences=True, name="enc_1")(inputs)
        x = layers.LSTM(6, return_sequences=True, name="enc_2")(x)
        x = layers.LSTM(4, name="enc_3")(x)
        x = layers.RepeatVector(6)(x)
        for units, name in ((4, "dec_1"), (6, "dec_2"), (8, "dec_3")):
            x = layers.LSTM(units, return_sequences=True, name=name)(x)
    model = keras.Model(inputs, layers.TimeDistributed(layers.Dense(3))(x), name=kind.replace("-", "_"))
    model.compile(optimizer="adam", loss="mse")
    windows = np.random.default_rng(0).standard_normal((16, 6, 3)).astype(np.float32)
    model.fit(windows, windows, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("kind, message", [
    ("bidirectional-gru", "this export's encoder is a Bidirectional GRU ('bi_gru') and its decoder is a "
                          "Bidirectional GRU ('bi_gru_dec')"),
    ("stacked-lstm", "this export's encoder is 3 stacked LSTMs ('enc_1', 'enc_2', 'enc_3') and its decoder is 3 "
                     "stacked LSTMs ('dec_1', 'dec_2', 'dec_3')"),
])
def test_exports_of_another_shape_are_refused_naming_their_layers(tmp_path, kind, message):
    _user_model(kind).save(tmp_path / "model.keras")
    export, report = publish.export_keras(tmp_path / "model.keras", tmp_path / "export",
                                          options=ExportOptions(providers="cpu", variants=()))
    assert report
    for source in ("onnx", "keras"):
        with pytest.raises(UnsupportedModelError, match=re.escape(message)):
            generate_c(export, tmp_path / "c", source=source)
    result = CliRunner().invoke(main, ["c", str(export), "--out", str(tmp_path / "c")])
    assert result.exit_code == EXIT_USAGE == UnsupportedModelError.exit_code and not (tmp_path / "c").exists()
    assert result.output == ("error: edgeae c writes C for one LSTM encoder and one LSTM decoder (the seed's shape); "
                             f"{message}: export a model of that shape, or run this one with onnxruntime\n")


def test_shape_refusals_name_only_what_differs():
    lstm_gru = [("input_layer", "InputLayer"), ("enc", "LSTM"), ("drop", "Dropout"), ("repeat", "RepeatVector"),
                ("dec", "GRU"), ("head", "TimeDistributed(Dense)")]
    assert layer_refusal(lstm_gru).split("; ")[1].startswith("this export's decoder is a GRU ('dec'):")
    mixed = [("a", "GRU"), ("b", "LSTM"), ("r", "RepeatVector"), ("c", "LSTM"), ("d", "Dense")]
    assert "encoder is 2 stacked layers (GRU 'a', LSTM 'b'):" in layer_refusal(mixed)
    assert layer_refusal([("e", "LSTM"), ("r", "RepeatVector"), ("d", "LSTM"), ("h", "Dense")]) is None


def test_a_graph_without_the_seeds_lstms_is_refused_in_the_users_terms():
    proto = onnx.load(str(EXPORTED / "autoencoder.onnx"))
    _lstm_edit(proto, lambda n: n.__setattr__("name", "LSTM__12"))
    with pytest.raises(UnsupportedModelError, match=r"one LSTM decoder \(the seed's shape\).* this export's graph holds "
                                                      r"2 LSTMs: export a model of that shape, or run this one with"):
        network_from_onnx(proto)


def test_a_missing_tool_fails_in_ci_and_is_skipped_with_its_reason_elsewhere():
    """The marks above: CI (.ci/run exports CI=1) installs every tool, so one missing there is a failure."""
    mark = needs_tools("edgeae-no-such-tool", install="Debian: apt-get install no-such-package").mark
    why = "edgeae-no-such-tool not installed (Debian: apt-get install no-such-package)"
    assert missing_tools_outcome(mark, {}) == ("skip", why)
    assert missing_tools_outcome(mark, {"CI": "0"}) == ("skip", why)
    for ci in ("1", "true"):
        kind, message = missing_tools_outcome(mark, {"CI": ci})
        assert kind == "fail" and why in message and ".ci/run installs it" in message
    assert missing_tools_outcome(needs_tools("sh", install="dash").mark, {"CI": "1"}) is None
    assert missing_tools_outcome(needs_tools(install="x", missing=lambda: []).mark, {"CI": "1"}) is None
