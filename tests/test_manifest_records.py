"""The manifest's typed records (contract/manifest.py): what every stage reads, read-only, from the checked JSON."""
import dataclasses
import json
from pathlib import Path

import pytest

from edgeae.contract.records import Manifest, Route, thawed

EXPORTED = Path(__file__).resolve().parents[1] / "exported"


@pytest.fixture(scope="module")
def body() -> dict:
    return json.loads((EXPORTED / "manifest.json").read_text())


def test_the_records_carry_what_the_json_says(body):
    manifest = Manifest.of(body)
    assert manifest.kind == "export" and manifest.checksum == body["checksum"]
    assert manifest.window.timesteps == body["window"]["timesteps"] and manifest.window.stride == body["window"]["stride"]
    assert set(manifest.files) == set(body["files"])
    name, entry = next(iter(body["files"].items()))
    assert (manifest.files[name].sha256, manifest.files[name].bytes, manifest.files[name].role) == (
        entry["sha256"], entry["bytes"], entry["role"])
    assert manifest.model_file("autoencoder") == body["models"]["autoencoder"]["file"]
    assert manifest.units == body["training"]["config"]["units"]
    assert manifest.detector.threshold == body["detector"]["threshold"]
    assert set(manifest.detector.graphs) == set(body["detector"]["graphs"])
    assert manifest.parity.tolerance_abs == body["parity"]["tolerance_abs"]
    assert manifest.versions["edgeae"] == body["versions"]["edgeae"]


def test_routes_are_typed_and_every_variant_is_listed(body):
    manifest = Manifest.of(body)
    fp32 = manifest.variant("autoencoder", "fp32")
    written = body["variants"]["autoencoder"]["fp32"]["by_batch"]
    assert fp32.routes == tuple(Route(r["batches"][0], r["batches"][1], r["file"]) for r in written)
    assert fp32.chunk == body["variants"]["autoencoder"]["fp32"]["chunk"]
    listed = {(role, name) for role, by_name in body["variants"].items() for name in by_name}
    assert {(role, entry.name) for role, entry in manifest.all_variants()} == listed
    assert manifest.variant("encoder", "no-such-variant") is None and manifest.variant("nope", "fp32") is None


def test_a_variant_without_its_own_threshold_takes_the_models(body):
    body = json.loads(json.dumps(body))
    body["detector"]["variants"] = {"fp16": {"threshold": 0.5, "flagged": 0}}
    detector = Manifest.of(body).detector
    assert detector.threshold_of("fp16") == 0.5
    assert detector.threshold_of("int8") == body["detector"]["threshold"]


def test_readers_cannot_change_what_the_seal_covers(body):
    manifest = Manifest.of(body)
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.checksum = "0" * 64
    with pytest.raises(TypeError):
        manifest.files["model.keras"] = None
    with pytest.raises(TypeError):
        manifest.training.config["units"] = 1
    with pytest.raises(TypeError):
        manifest.body["detector"]["threshold"] = 0.0
    assert thawed(manifest.body) == body  # and a writer gets the JSON back unchanged


def test_a_training_folder_has_no_models_or_detector(body):
    training = {k: body[k] for k in ("checksum", "files", "window", "preprocessing", "training")}
    manifest = Manifest.of({**training, "kind": "training"})
    assert manifest.detector is None and dict(manifest.models) == {} and dict(manifest.variants) == {}
    assert manifest.model_file("autoencoder") is None and not manifest.has_roles()
