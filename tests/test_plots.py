"""Pictures: `edgeae report` writes valid, non-blank PNGs and keeps the export verifiable."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import runtime
from edgeae.verifier import plots
from edgeae.contract.manifest import read_manifest, verify_files
from edgeae.cli import main
from edgeae.contract.errors import EXIT_DEPENDENCY, EXIT_INTEGRITY, EXIT_USAGE, IntegrityError, MissingDependencyError, UsageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path_or_bytes):
    import matplotlib.image

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    assert data.startswith(PNG_MAGIC)
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels[..., :3].var()) > 0  # not blank


def test_report_into_the_export_lists_the_pngs_in_its_manifest(export_copy):
    result = CliRunner().invoke(main, ["report", str(export_copy), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)["plots"]
    assert sorted(p.rsplit("/", 1)[1] for p in written) == sorted(plots.PLOT_FILES.values())
    for name in plots.PLOT_FILES.values():
        assert_real_png(export_copy / name)
    manifest = read_manifest(export_copy)  # the rewritten manifest passes its own checksum
    verify_files(export_copy, manifest)  # and every file, PNGs included, matches it
    assert {manifest.files[n].role for n in plots.PLOT_FILES.values()} == {"plot"}
    runtime.load(export_copy, "cpu")
    assert CliRunner().invoke(main, ["report", str(export_copy)]).exit_code == 0  # again: still consistent
    verify_files(export_copy, read_manifest(export_copy))


def test_report_to_another_folder_leaves_the_export_alone(tiny_export, tmp_path):
    before = (tiny_export / "manifest.json").read_bytes()
    paths = plots.report(tiny_export, out=tmp_path / "pictures")
    assert [p.parent for p in paths] == [tmp_path / "pictures"] * 4
    for path in paths:
        assert_real_png(path)
    assert (tiny_export / "manifest.json").read_bytes() == before
    assert not any((tiny_export / n).exists() for n in plots.PLOT_FILES.values())


def test_report_on_a_labelled_series(tiny_export, tmp_path):
    t = np.arange(80)
    values = np.column_stack([t / 80, np.sin(t / 5), np.cos(t / 7)])
    labels = (t >= 40) & (t < 44)
    path = tmp_path / "readings.csv"
    path.write_text("a,b,c,is_anomaly\n" + "".join(f"{x},{y},{z},{int(f)}\n" for (x, y, z), f in zip(values, labels)))
    paths = plots.report(tiny_export, plots.ReportOptions(data=path, columns=("a", "b", "c"), labels="is_anomaly"),
                         out=tmp_path / "p")
    assert sorted(paths) == sorted(tmp_path / "p" / name for name in plots.PLOT_FILES.values())  # all four, never none
    for path in paths:
        assert_real_png(path)


def test_each_picture_on_its_own():
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(3, 12, 8))
    assert_real_png(plots.reconstruction_png(windows, windows * 0.9, [f"s{i}" for i in range(8)], ["a", "b", "c"]))
    scores = rng.exponential(size=300)
    labels = np.zeros(300, dtype=bool)
    labels[100:110] = True
    assert_real_png(plots.scores_png(np.arange(300), scores, 2.0, labels))
    assert_real_png(plots.scores_png(np.arange(300), scores, None))  # an export without a threshold
    assert_real_png(plots.loss_png({"loss": [1.0, 0.5, 0.2], "val_loss": [1.2, 0.6, 0.7]}, best_epoch=2))
    result = {"model": "autoencoder", "provider": "cpu", "dataset": "x", "max_abs": 0.0, "max_rel_range": 0.0,
              "tolerance_abs": 1e-5, "passed": True}
    assert_real_png(plots.parity_png({"passed": True, "results": [result, {**result, "max_abs": 3e-6}]}))
    both = {**result, "tolerance_rel_range": 1e-4}  # fp32's two bounds, one line on each panel
    assert_real_png(plots.parity_png({"passed": True, "results": [both, {**both, "max_rel_range": 2e-6}]}))


def test_a_damaged_export_gets_no_pictures(export_copy):
    (export_copy / "encoder.onnx").write_bytes(b"tampered")
    result = CliRunner().invoke(main, ["report", str(export_copy)])
    assert result.exit_code == EXIT_INTEGRITY and "encoder.onnx" in result.stderr
    assert not any((export_copy / n).exists() for n in plots.PLOT_FILES.values())
    with pytest.raises(IntegrityError):
        plots.report(export_copy)


def test_only_an_export_folder_can_be_reported(tmp_path):
    with pytest.raises(UsageError, match="export folder not found"):
        plots.report(tmp_path / "nothing-here")


def test_without_matplotlib_the_error_names_the_extra(export_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeae\[plot\]'"):
        plots.report(export_copy)
    result = CliRunner().invoke(main, ["report", str(export_copy)])
    assert result.exit_code == EXIT_DEPENDENCY and "edgeae[plot]" in result.stderr


def test_runtime_and_cli_start_without_matplotlib():
    code = "import sys, edgeae.runtime, edgeae.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_report_refuses_links_and_columns_without_data_before_drawing(export_copy, tmp_path, monkeypatch):
    """A linked --out folder or PNG, or --columns with nothing to choose from: refused before any
    picture is written, so an export never holds PNGs its manifest does not list."""
    monkeypatch.setattr(plots, "reconstruction_png", lambda *a: pytest.fail("drew although refused"))
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="is a symbolic link; give the real folder"):
        plots.report(export_copy, out=tmp_path / "link")
    (export_copy / "loss.png").symlink_to(tmp_path / "elsewhere.png")
    before = sorted(p.name for p in export_copy.iterdir())
    with pytest.raises(UsageError, match="loss.png is a symbolic link"):
        plots.report(export_copy, force=True)
    assert sorted(p.name for p in export_copy.iterdir()) == before
    with pytest.raises(UsageError, match="--columns chooses columns of --data"):
        plots.report(export_copy, plots.ReportOptions(columns=("a",)), out=real)
    assert not list(real.iterdir())


def test_reconstructions_show_the_features_that_drive_the_worst_window():
    parts = np.array([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.9]])  # the worst window last
    names = [f"acc_{i}" for i in range(9)]
    shown, why = plots.driving_features(parts, names)
    assert shown[:2] == [8, 7] and len(shown) == plots.MAX_FEATURES_SHOWN and "worst window" in why
    assert plots.driving_features(parts, names, ("acc_2", "acc_0")) == ([2, 0], "as chosen")
    with pytest.raises(UsageError, match="no feature 'gyro' to draw; the model's features are acc_0, acc_1"):
        plots.driving_features(parts, names, ("gyro",))
    windows = np.random.default_rng(0).uniform(size=(2, 5, 9))
    assert_real_png(plots.reconstruction_png(windows, windows * 0.9, names, ["a", "b"], shown, why))


def test_report_draws_the_features_asked_for(tiny_export, tmp_path):
    rows = np.random.default_rng(2).uniform(0, 1, (30, 3))
    (tmp_path / "d.csv").write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    paths = plots.report(tiny_export, plots.ReportOptions(tmp_path / "d.csv", features=("c",)), out=tmp_path / "pics")
    assert (tmp_path / "pics" / "reconstruction.png") in paths
    result = CliRunner().invoke(main, ["report", str(tiny_export), "--data", str(tmp_path / "d.csv"), "--out",
                                       str(tmp_path / "p2"), "--features", "a,zz"])
    assert result.exit_code == EXIT_USAGE and "no feature 'zz' to draw" in result.stderr
    assert not (tmp_path / "p2").exists()
