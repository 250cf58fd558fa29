"""Signed exports (issue 31): signed where made, checked where loaded, refused in one line when they do not hold.

Every test works on a copy of the committed exported/ folder (never exported/ itself)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

import edgeae
from edgeae.cli import main
from edgeae.contract import signing
from edgeae.contract.errors import EdgeAENotice, MissingDependencyError, SignatureError, UsageError
from edgeae.contract.files import check_target
from edgeae.contract.layout import PARITY_REPORT_FILE, SIGNATURE_FILE
from edgeae.contract.manifest import amend_export, file_entry, read_manifest, write_manifest
from edgeae.exporter import publish
from edgeae.exporter.signatures import sign_export

from .conftest import EXPORTED

pytest.importorskip("model_signing", reason="pip install 'edgeae[signing]'")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    private, public = signing.generate_keys(folder / "signing.pem", folder / "trusted.pem")
    other = signing.generate_keys(folder / "other.pem", folder / "other.pub.pem")
    return {"private": private, "public": public, "other_public": other[1]}


@pytest.fixture()
def unsigned(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(EXPORTED, folder)
    (folder / SIGNATURE_FILE).unlink(missing_ok=True)
    return folder


@pytest.fixture()
def signed(unsigned, keys):
    sign_export(unsigned, keys["private"])
    return unsigned


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(signing.TRUSTED_KEY_ENV, raising=False)
    monkeypatch.delenv(signing.QUIET_ENV, raising=False)  # conftest quiets the unsigned note for every other test
    monkeypatch.setattr(signing, "_noted_unsigned", [])  # each test sees the once-per-process notice afresh


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_error_line(result, code, *fragments):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def reseal(folder, change):
    """What someone who can write the folder (but has no key) does: change it and reseal the manifest."""
    body = read_manifest(folder).to_body()
    change(folder, body)
    write_manifest(folder, body)


def edit_file(folder, body):
    path = folder / PARITY_REPORT_FILE
    path.write_bytes(path.read_bytes() + b"\n")
    body["files"][PARITY_REPORT_FILE] = file_entry(path, body["files"][PARITY_REPORT_FILE]["role"])


def edit_manifest(folder, body):
    body["created"] = "2000-01-01T00:00:00+00:00"


def add_file(folder, body):
    (folder / "extra.json").write_text("{}\n")
    body["files"]["extra.json"] = file_entry(folder / "extra.json", "report")


# ---------------------------------------------------------------- keys


def test_keygen_writes_a_p256_pair_and_never_overwrites(tmp_path):
    result = cli("keygen", tmp_path / "k.pem", tmp_path / "k.pub.pem")
    assert result.exit_code == 0, result.stderr
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "k.pub.pem").read_bytes()
    before = (tmp_path / "k.pem").read_bytes()
    one_error_line(cli("keygen", tmp_path / "k.pem", tmp_path / "new.pub.pem"), 2, "exists; refusing to overwrite")
    one_error_line(cli("keygen", tmp_path / "new.pem", tmp_path / "k.pub.pem"), 2, "exists")
    assert (tmp_path / "k.pem").read_bytes() == before
    assert not (tmp_path / "new.pem").exists() and not (tmp_path / "new.pub.pem").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub.pem"]  # no temporary file left


@pytest.mark.parametrize("which", ["private as trusted", "public as signing", "not pem", "ed25519"])
def test_a_key_of_the_wrong_kind_is_one_usage_line(signed, keys, tmp_path, which):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ed.pem").write_bytes(ed.public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "junk.pem").write_text("not a key\n")
    args = {"private as trusted": ("inspect", signed, "--trusted-key", keys["private"]),
            "public as signing": ("sign", signed, "--key", keys["public"]),
            "not pem": ("inspect", signed, "--trusted-key", tmp_path / "junk.pem"),
            "ed25519": ("inspect", signed, "--trusted-key", tmp_path / "ed.pem")}[which]
    fragment = {"private as trusted": "that is a private key", "public as signing": "that is a public key",
                "not pem": "not a PEM public key", "ed25519": "EC P-256"}[which]
    one_error_line(cli(*args), 2, fragment)


# ---------------------------------------------------------------- signed loads, tampered refused


def test_a_signed_export_loads_on_a_device_holding_the_key(signed, keys):
    assert (signed / SIGNATURE_FILE).is_file()
    assert SIGNATURE_FILE not in read_manifest(signed).files  # never listed: it signs the manifest
    assert edgeae.load(signed, "cpu", trusted_key=keys["public"]).manifest is not None
    assert edgeae.load(signed, "cpu", trusted_key=keys["public"].read_bytes()).manifest is not None
    result = cli("inspect", signed, "--provider", "cpu", "--trusted-key", keys["public"], "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    assert cli("inspect", signed, "--provider", "cpu", env={signing.TRUSTED_KEY_ENV: str(keys["public"])}).exit_code == 0


def test_model_signings_own_verifier_accepts_an_edgeae_signature(signed, keys):
    """The format is model-signing's: its own `verify key` checks an edgeae export, no edgeae needed."""
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=keys["public"]).verify(signed, signed / SIGNATURE_FILE)


@pytest.mark.parametrize("change, named", [(edit_file, "parity.json"),
                                           (edit_manifest, "changed since signing: manifest.json"),
                                           (add_file, "added since signing: extra.json")])
def test_a_resealed_tampered_export_is_refused_with_the_key(signed, keys, change, named):
    reseal(signed, change)
    assert edgeae.load(signed, "cpu").manifest is not None  # the seal alone cannot tell: it was resealed
    with pytest.raises(SignatureError, match=named):
        edgeae.load(signed, "cpu", trusted_key=keys["public"])
    one_error_line(cli("score", signed, signed / "readings.csv", "--trusted-key", keys["public"]),
                   4, "signature does not match", named)  # refused before the data is even looked for
    one_error_line(cli("verify", signed, "--against", "stored", "--provider", "cpu",
                       env={signing.TRUSTED_KEY_ENV: str(keys["public"])}), 4, named)


def test_an_unsigned_export_is_refused_when_a_key_is_set(unsigned, keys, monkeypatch):
    with pytest.raises(SignatureError, match="is not signed and a trusted key is set"):
        edgeae.load(unsigned, "cpu", trusted_key=keys["public"])
    one_error_line(cli("inspect", unsigned, "--trusted-key", keys["public"]), 4, "is not signed")
    monkeypatch.setenv(signing.TRUSTED_KEY_ENV, str(keys["public"]))  # the API honours the device's setting too
    with pytest.raises(SignatureError):
        edgeae.load(unsigned, "cpu")
    with pytest.raises(SignatureError, match="single model file"):
        edgeae.load(unsigned / "autoencoder.onnx", "cpu")


def test_another_key_and_an_altered_signature_are_refused(signed, keys):
    with pytest.raises(SignatureError, match="signed with another key"):
        edgeae.load(signed, "cpu", trusted_key=keys["other_public"])
    one_error_line(cli("inspect", signed, "--trusted-key", keys["other_public"]), 4, "another key")
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = bundle["dsseEnvelope"]["signatures"][0]["sig"][::-1]
    (signed / SIGNATURE_FILE).write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="signature does not match"):
        edgeae.load(signed, "cpu", trusted_key=keys["public"])
    (signed / SIGNATURE_FILE).write_text("{not json")
    one_error_line(cli("inspect", signed, "--trusted-key", keys["public"]), 4, "signature does not match")


# ---------------------------------------------------------------- without a key


def test_without_a_key_an_unsigned_export_is_noted_once_and_a_signed_one_not_at_all(unsigned, keys, tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        edgeae.load(unsigned, "cpu")
        edgeae.load(unsigned, "cpu")
    notes = [w for w in seen if issubclass(w.category, EdgeAENotice) and "is not signed" in str(w.message)]
    assert len(notes) == 1

    signed = tmp_path / "signed"
    shutil.copytree(unsigned, signed)
    sign_export(signed, keys["private"])
    signing._noted_unsigned.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        edgeae.load(signed, "cpu")
    assert not [w for w in seen if issubclass(w.category, EdgeAENotice)]


def test_the_unsigned_note_goes_to_stderr_and_leaves_json_stdout_clean(unsigned):
    done = subprocess.run([sys.executable, "-m", "edgeae", "inspect", str(unsigned), "--provider", "cpu", "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if k not in (signing.TRUSTED_KEY_ENV, signing.QUIET_ENV)})
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    assert sum("is not signed" in line for line in done.stderr.splitlines()) == 1
    quiet = subprocess.run([sys.executable, "-m", "edgeae", "inspect", str(unsigned), "--provider", "cpu", "--json"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, signing.QUIET_ENV: "1"})
    assert quiet.returncode == 0 and "is not signed" not in quiet.stderr


def test_an_unsigned_export_that_fails_to_load_gets_its_one_error_line_alone(unsigned):
    (unsigned / "encoder.onnx").write_bytes(b"not a model")  # tampered, not resealed: refused by its checksum
    result = cli("inspect", unsigned, "--provider", "cpu")
    one_error_line(result, 4, "encoder.onnx")
    assert "is not signed" not in result.stderr


# ---------------------------------------------------------------- amendments and `edgeae sign`


def test_an_amendment_signs_again_with_the_key_and_drops_the_signature_without(signed, keys, tmp_path):
    with amend_export(signed, sign_key=keys["private"]) as amendment:
        (amendment.folder / "note.json").write_text("{}\n")
        amendment.add_file(amendment.folder / "note.json", "report")
    assert signing.check_signature(signed, keys["public"])

    with pytest.warns(EdgeAENotice, match="signature was removed"):
        with amend_export(signed) as amendment:
            (amendment.folder / "note2.json").write_text("{}\n")
            amendment.add_file(amendment.folder / "note2.json", "report")
    assert not (signed / SIGNATURE_FILE).exists()
    assert edgeae.load(signed, "cpu").manifest is not None  # still a sound (unsigned) export
    with pytest.raises(SignatureError, match="not signed"):
        edgeae.load(signed, "cpu", trusted_key=keys["public"])


def test_targets_signs_again_given_the_key(signed, keys, monkeypatch):
    monkeypatch.setattr(publish, "measure_runtimes", lambda *args, **kw: {})  # the table itself is another test's
    result = cli("targets", signed, "--runtime", "onnxruntime", "--sign-key", keys["private"])
    assert result.exit_code == 0, result.stderr
    assert signing.check_signature(signed, keys["public"])
    result = cli("targets", signed, "--runtime", "onnxruntime")
    assert result.exit_code == 0 and "signature was removed" in result.stderr
    assert not (signed / SIGNATURE_FILE).exists()


def test_sign_signs_an_existing_export_and_keeps_the_old_signature_on_failure(unsigned, keys, tmp_path):
    result = cli("sign", unsigned, "--key", keys["private"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["signature"].endswith(SIGNATURE_FILE)
    before = (unsigned / SIGNATURE_FILE).read_bytes()
    one_error_line(cli("sign", unsigned, "--key", tmp_path / "absent.pem"), 2, "not found")
    (unsigned / PARITY_REPORT_FILE).write_text("{}")  # changed and not resealed: refused, never blessed
    one_error_line(cli("sign", unsigned, "--key", keys["private"]), 4, PARITY_REPORT_FILE)
    assert (unsigned / SIGNATURE_FILE).read_bytes() == before
    assert not [p for p in unsigned.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_signed_export_can_be_replaced_with_force(signed):
    check_target(signed, force=True)  # model.sig is the export's own, not a user's file in the way


# ---------------------------------------------------------------- the optional extra


def test_a_key_without_the_signing_extra_says_what_to_install(signed, keys, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] in ("model_signing", "cryptography")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "model_signing", None)  # as on a device without edgeae[signing]
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(MissingDependencyError, match=r"edgeae\[signing\]"):
        edgeae.load(signed, "cpu", trusted_key=keys["public"])
    one_error_line(cli("inspect", signed, "--trusted-key", keys["public"]), 7, "edgeae[signing]")
    one_error_line(cli("sign", signed, "--key", keys["private"]), 7, "edgeae[signing]")
    assert edgeae.load(signed, "cpu").manifest is not None  # no key: the extra is not needed


def test_the_runtime_imports_no_signing_library_until_a_key_is_given():
    code = ("import sys, edgeae; edgeae.load(sys.argv[1], 'cpu'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('model_signing', 'cryptography', 'sigstore')))")
    done = subprocess.run([sys.executable, "-c", code, str(EXPORTED)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bad_trusted_key_values_are_refused_by_name(signed):
    with pytest.raises(UsageError, match="trusted key"):
        edgeae.load(signed, "cpu", trusted_key=42)
    with pytest.raises(UsageError, match="not found"):
        edgeae.load(signed, "cpu", trusted_key=signed / "absent.pem")


# ---------------------------------------------------------------- the Node.js app (node/signature.mjs)


def node_app(*args, env=None):
    if shutil.which("node") is None or not (EXPORTED.parent / "node" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("Node.js and `npm ci --prefix node` are needed (.ci/run installs them)")
    return subprocess.run(["node", str(EXPORTED.parent / "node" / "score_csv.mjs"), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture()
def series(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("a,b,c,d,e\n" + "".join(f"{i / 50:.4f},{i / 40:.4f},0.5,0.2,{(i % 7) / 7:.4f}\n" for i in range(30)))
    return path


def test_the_node_app_checks_the_signature_with_its_own_crypto(signed, keys, series):
    plain = node_app(signed, series, "--json")
    checked = node_app(signed, series, "--json", "--trusted-key", keys["public"])
    assert plain.returncode == 0 and checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["score"] == json.loads(plain.stdout)["score"]
    assert node_app(signed, series, env={signing.TRUSTED_KEY_ENV: str(keys["public"])}).returncode == 0

    refused = node_app(signed, series, "--trusted-key", keys["other_public"])
    assert refused.returncode == 4 and refused.stderr.count("\n") == 1 and "not signed by the trusted key" in refused.stderr
    reseal(signed, edit_file)
    refused = node_app(signed, series, "--trusted-key", keys["public"])
    assert refused.returncode == 4 and refused.stderr.count("\n") == 1, refused.stderr
    assert "changed since signing: manifest.json, parity.json" in refused.stderr


def test_the_node_app_refuses_an_unsigned_export_given_a_key_and_notes_it_without(unsigned, keys, series):
    refused = node_app(unsigned, series, "--trusted-key", keys["public"])
    assert refused.returncode == 4 and refused.stderr.startswith("error: ") and "is not signed" in refused.stderr
    assert refused.stderr.count("\n") == 1
    noted = node_app(unsigned, series, "--json", env={signing.QUIET_ENV: ""})
    assert noted.returncode == 0 and noted.stderr.startswith("note: ") and "is not signed" in noted.stderr
    json.loads(noted.stdout)
    failed = node_app(unsigned, series.parent / "absent.csv", env={signing.QUIET_ENV: ""})
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "not found" in failed.stderr
    bad = node_app(unsigned, series, "--trusted-key", keys["private"])
    assert bad.returncode == 2 and "not a PEM public key" in bad.stderr


# ---------------------------------------------------------------- export and pipeline sign before publishing


def test_export_signs_in_staging_so_the_published_folder_is_signed(tiny_training, keys, tmp_path):
    from edgeae.exporter.options import ExportOptions

    out = tmp_path / "signed-export"
    publish.export(tiny_training, out, ExportOptions(providers="cpu", sign_key=keys["private"], measure_routing=False,
                                                     variants=()))
    assert signing.check_signature(out, keys["public"])
    assert edgeae.load(out, "cpu", trusted_key=keys["public"]).manifest is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_bad_signing_key_is_refused_before_any_training(tmp_path):
    result = cli("pipeline", "--epochs", "1", "--quiet", "--out", tmp_path / "out", "--sign-key", tmp_path / "absent.pem")
    one_error_line(result, 2, "signing key not found")
    assert not (tmp_path / "out").exists()


def test_a_rebuilt_export_that_was_signed_says_its_signature_is_gone(tmp_path):
    """optimize rebuilds the folder in staging, where the old signature is not carried: given no key, it says so."""
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.warns(EdgeAENotice, match="exported: its signature was removed"):
        signing.after_reseal(stage, None, signed_before=True, shown=tmp_path / "exported")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signing.after_reseal(stage, None, signed_before=False)  # never signed: nothing to say
