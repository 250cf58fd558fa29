"""Hostile files and failures in libraries: each ends in one `error:` line and the documented exit code
(docs/reference/exit-codes.md: 4 for a corrupt, truncated or unsafe file), and the API raises edgeae's own exception."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeae
from edgeae.cli.app import describe_failure, main
from edgeae.contract.errors import EXIT_DATA, EXIT_INTEGRITY, EXIT_USAGE, IntegrityError, UnsupportedModelError
from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
from edgeae.exporter.user_model import load_keras_file
from edgeae.trainer.model import MAX_KERAS_JSON_BYTES

from .conftest import import_or_skip

KERAS_CONFIG = {"class_name": "Sequential", "module": "keras", "config": {"name": "model", "layers": []}}


def _cli(*args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr.splitlines()


def _one_line(code: int, lines: list[str], expected: int, text: str) -> None:
    assert code == expected, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


def _subprocess_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command, so that anything printed past Python's sys.stderr (warnings, native logs) shows."""
    return subprocess.run([sys.executable, "-m", "edgeae.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


# ---------------------------------------------------------------- manifests Python's json module would mishandle

HOSTILE_MANIFESTS = {
    "nan": ('"format_version": 1', '"format_version": 1, "note": NaN', "non-finite number NaN"),
    "overflowing float": ('"format_version": 1', '"format_version": 1e999', "number 1e999 is out of range"),
    "5,000-digit integer": ('"format_version": 1', '"format_version": ' + "7" * 5000, "integer of 5000 digits"),
    "nested 10,000 deep": ('"format_version": 1', '"format_version": 1, "note": ' + "[" * 10_000 + "]" * 10_000,
                           "nested deeper than"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_an_integrity_error_in_one_line(export_copy, case):
    old, new, reason = HOSTILE_MANIFESTS[case]
    path = export_copy / "manifest.json"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(IntegrityError, match=reason):
        read_manifest(export_copy)
    with pytest.raises(IntegrityError, match=reason):
        edgeae.load(export_copy)
    _one_line(*_cli("inspect", export_copy), EXIT_INTEGRITY, reason)


def test_json_edgeae_writes_still_reads_back(export_copy):
    """The bounds refuse only what no edgeae file holds: a resealed manifest with deep-ish and large values loads."""
    body = read_manifest(export_copy).to_body()
    body["note"] = {"nested": [[[[[1.5e300, -2**63, "[[[{{{"]]]]]}
    write_manifest(export_copy, body)
    assert read_manifest(export_copy).checksum


# ---------------------------------------------------------------- .keras archives, checked from their zip headers


def _keras_zip(path: Path, extra: tuple[tuple[str, bytes], ...] = (), config: dict | None = None,
               compression: int = zipfile.ZIP_STORED) -> Path:
    """A file laid out as Keras saves one; nothing in it is read once the headers are refused."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        archive.writestr("config.json", json.dumps(config or KERAS_CONFIG))
        archive.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(4096))
        for name, data in extra:
            archive.writestr(name, data)
    return path


def _declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite `member`'s uncompressed size in the central directory only: a tiny file claiming a huge entry."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_length] == member.encode():
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{member} not in {path}")


@pytest.mark.parametrize("name", ["../evil.txt", "assets/../../evil.txt", "/etc/evil", "assets\\..\\..\\evil",
                                  "C:/evil"])
def test_unsafe_entry_names_are_refused_before_keras_reads_the_file(tmp_path, name):
    model = _keras_zip(tmp_path / "model.keras", extra=((name, b"x"),))
    with pytest.raises(IntegrityError, match="unsafe entry name"):
        load_keras_file(model)
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, "unsafe entry name")
    assert not (tmp_path / "out").exists()


def test_a_dotdot_entry_gives_one_line_and_no_python_warning(tmp_path):
    model = _keras_zip(tmp_path / "model.keras", extra=(("../evil.txt", b"x"),))
    done = _subprocess_cli("export", model, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == EXIT_INTEGRITY, done.stderr
    assert done.stderr.splitlines() == ["error: model.keras: unsafe entry name '../evil.txt' in the Keras archive "
                                        "(absolute, '..' or backslash path)"]
    assert not (tmp_path / "evil.txt").exists()


def test_a_config_declaring_a_gibibyte_is_refused_from_the_central_directory(tmp_path):
    model = _keras_zip(tmp_path / "model.keras")
    _declare_size(model, "config.json", 1 << 30)
    assert model.stat().st_size < 10_000
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY,
              f"config.json declares {1 << 30} bytes unpacked, over the {MAX_KERAS_JSON_BYTES >> 20} MiB")


def test_a_deflated_config_over_the_cap_is_refused(tmp_path):
    big = json.dumps(KERAS_CONFIG).encode() + b" " * (MAX_KERAS_JSON_BYTES + 1)
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", big)
    assert model.stat().st_size < MAX_KERAS_JSON_BYTES // 100
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, "over the 64 MiB")


def test_a_zip_bomb_in_the_weights_is_refused_by_the_total_it_unpacks_to(tmp_path):
    """100 MB of zeros deflate to about 100 KB: far more than any Keras file unpacks to for its size."""
    model = _keras_zip(tmp_path / "model.keras", extra=(("assets/zeros.bin", bytes(100 * 1024 * 1024)),),
                       compression=zipfile.ZIP_DEFLATED)
    assert model.stat().st_size < 300_000
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, "(a zip bomb?)")


def test_a_truncated_keras_file_is_an_integrity_error(tmp_path):
    whole = _keras_zip(tmp_path / "whole.keras").read_bytes()
    model = tmp_path / "model.keras"
    model.write_bytes(whole[: len(whole) // 2])
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, "truncated or corrupt Keras archive")


def test_an_archive_without_a_config_is_an_integrity_error_and_a_non_zip_a_usage_error(tmp_path):
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("notes.txt", "hello")
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, "no config.json")
    model.write_bytes(b"a text file given by mistake")
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_USAGE, "not a saved Keras model (not a zip")


@pytest.mark.parametrize("config, reason", [
    ({"x": float("nan")}, "non-finite number NaN"),
    ("[" * 5000 + "]" * 5000, "nested deeper than"),
])
def test_a_hostile_keras_config_is_an_integrity_error(tmp_path, config, reason):
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_INTEGRITY, reason)


def test_a_registered_custom_class_is_refused_by_name_before_keras_loads(tmp_path):
    custom = {"module": None, "class_name": "Scale", "registered_name": "acme>Scale", "config": {"name": "scaler"}}
    model = _keras_zip(tmp_path / "model.keras", config={**KERAS_CONFIG, "config": {"layers": [custom]}})
    with pytest.raises(UnsupportedModelError, match="layer 'scaler' uses the custom class acme>Scale"):
        load_keras_file(model)
    _one_line(*_cli("export", model, "--out", tmp_path / "out"), EXIT_USAGE, "custom class acme>Scale")


# ---------------------------------------------------------------- corrupt graphs and onnxruntime's own log


def test_verify_on_a_truncated_onnx_file_is_an_integrity_error(export_copy):
    body = read_manifest(export_copy).to_body()
    graph = export_copy / "autoencoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    body["files"][graph.name] = file_entry(graph, body["files"][graph.name]["role"])
    write_manifest(export_copy, body)  # resealed: only the file's content is wrong
    _one_line(*_cli("verify", export_copy, "--against", "stored"), EXIT_INTEGRITY, "model")  # not valid, or corrupt


def test_onnxruntime_logs_nothing_of_its_own_when_a_run_fails(tmp_path):
    """A Gather whose indices come from the data fails inside onnxruntime, which would log the failure
    on stderr itself ("[E:onnxruntime:...]") before edgeae raises InferenceError."""
    onnx = import_or_skip("onnx", "train")
    helper, tensor = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        [helper.make_node("Cast", ["sequence"], ["index"], to=tensor.INT64),
         helper.make_node("Gather", ["table", "index"], ["reconstruction"])], "gather",
        [helper.make_tensor_value_info("sequence", tensor.FLOAT, ["batch", 6, 2])],
        [helper.make_tensor_value_info("reconstruction", tensor.FLOAT, ["batch", 6, 2])],
        [helper.make_tensor("table", tensor.FLOAT, [4], [0, 1, 2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "gather.onnx")
    code = ("import numpy as np\nfrom edgeae.runtime.session import OnnxModel\n"
            "model = OnnxModel('gather.onnx', 'cpu')\n"
            "try:\n    model.run(np.full((3, 6, 2), 1e6, np.float32))\n"
            "except Exception as exc:\n    print(type(exc).__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.strip() == "InferenceError", done.stdout + done.stderr
    assert done.stderr == ""


# ---------------------------------------------------------------- Dask: a worker's failure is its cause, in one line


def test_a_fleet_failure_on_a_local_cluster_is_one_line(export_copy, tmp_path):
    import_or_skip("distributed", "dask")
    rows = [[machine, step, *np.random.default_rng(step).random(3)] for machine in "ab" for step in range(30)]
    rows[5][1], rows[6][1] = 6, 5  # out of order within series 'a': refused on a worker
    lines = ["machine,step,f0,f1,f2"] + [",".join(map(str, row)) for row in rows]
    (tmp_path / "fleet.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = _subprocess_cli("fleet", "score", export_copy, tmp_path / "fleet.csv", "--by", "machine", "--order", "step",
                           "--workers", "1", "-o", tmp_path / "scores", cwd=tmp_path)
    assert done.returncode == EXIT_DATA, done.stderr
    assert done.stderr.splitlines() == ["error: series 'a': step 5 follows step 6; the rows of a series must be in "
                                        "increasing 'step' order within each file"]


def test_a_protobuf_that_does_not_parse_anywhere_is_an_integrity_error():
    """Where a library (onnx, tf2onnx) meets a corrupt ONNX file before edgeae's own checks, the CLI still says 4."""
    message = import_or_skip("google.protobuf.message", "train")  # onnx brings protobuf
    assert describe_failure(message.DecodeError("Error parsing message with type 'onnx.ModelProto'")) == (
        EXIT_INTEGRITY, "corrupt or truncated model file: Error parsing message with type 'onnx.ModelProto'")
