"""The quality benchmark: edgeae's default detector beside baselines, on a tiny labelled series
whose baseline figures can be worked by hand (a few epochs of training: about 30 s)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.contract.errors import EXIT_DEPENDENCY
from edgeae.exporter import demo
from edgeae.exporter.quality_bench import (
    AUTOENCODER, DIFFERENCE, ZSCORE, BenchSeries, difference_scores, moving_zscore, run_quality_bench, shipped_series,
)

from .conftest import needs_module

needs_training = needs_module("tensorflow", "train")  # missing: fails in CI, skipped elsewhere


def test_the_difference_baseline_is_each_rows_step():
    values = np.array([[0.0], [1.0], [3.0], [2.0]])
    assert difference_scores(values, np.array([1.0])).tolist() == [0.0, 1.0, 2.0, 1.0]
    assert difference_scores(values, np.array([2.0])).tolist() == [0.0, 0.5, 1.0, 0.5]


def test_the_moving_zscore_looks_only_at_the_rows_before():
    values = np.array([[1.0], [3.0], [1.0], [3.0], [5.0]])
    # Rows 2-4 see [1, 3], [3, 1], [1, 3]: mean 2, std 1.
    assert moving_zscore(values, 2, np.array([1.0])).tolist() == [0.0, 0.0, 1.0, 1.0, 3.0]
    flat = moving_zscore(np.array([[2.0], [2.0], [2.0], [3.0]]), 2, np.array([1.0]))
    assert flat[2] == 0.0 and flat[3] == pytest.approx(1e6)  # a flat history: high but finite


def _series(tmp_path):
    """A slow sine to train on, and 300 more rows of it with one +10 spike at row 150 (labelled 150-151)."""
    t = np.arange(700)
    values = np.sin(2 * np.pi * t / 50)
    train, test = values[:400], values[400:].copy()
    test[150] += 10.0
    labels = np.zeros(300, dtype=int)
    labels[150:152] = 1
    (tmp_path / "train.csv").write_text("value\n" + "\n".join(f"{v:.8f}" for v in train) + "\n")
    (tmp_path / "test.csv").write_text("value,is_anomaly\n" + "\n".join(f"{v:.8f},{y}" for v, y in zip(test, labels))
                                       + "\n")
    return BenchSeries("spiked sine", tmp_path / "train.csv", tmp_path / "test.csv", ("value",), "is_anomaly")


@needs_training
def test_a_tiny_benchmark_table(tmp_path):
    bench = run_quality_bench((_series(tmp_path),), epochs=2)
    assert [(m.series, m.detector) for m in bench.results] == [
        ("spiked sine", AUTOENCODER), ("spiked sine", DIFFERENCE), ("spiked sine", ZSCORE)]
    for m in bench.results:
        assert m.rows == 300 and m.anomalous_rows == 2
        assert all(0.0 <= value <= 1.0 for value in (m.vus_pr, m.vus_roc, m.event_f1, m.affiliation_f1, m.roc_auc, m.f1))
    # By hand: the spike makes the two steps into and out of row 150 forty times the largest step of
    # the sine, the only two above a threshold calibrated on the sine's own steps: flags = labels.
    diff = bench.results[1]
    assert diff.flagged_rows == 2
    assert (diff.vus_pr, diff.vus_roc, diff.event_f1, diff.affiliation_f1, diff.roc_auc, diff.f1) == pytest.approx(
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert bench.trained["train.csv"]["epochs"] == 2 and bench.trained["train.csv"]["timesteps"] == 10
    lines = bench.table()
    assert lines[0].startswith(f"measured {bench.date} on ") and "cores" in lines[0]
    header = next(line for line in lines if line.startswith("series"))
    for name in ("VUS-PR", "VUS-ROC", "event F1", "affil. F1", "ROC AUC", "F1"):
        assert name in header
    row = next(line for line in lines if DIFFERENCE in line)
    assert row.split()[-6:] == ["1.000"] * 6
    data = json.loads(json.dumps(bench.to_dict()))
    assert set(data) == {"cpu", "date", "trained", "results"} and len(data["results"]) == 3


def test_the_command_has_help_with_an_example():
    result = CliRunner().invoke(main, ["quality-bench", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--epochs" in result.output


def test_without_aeon_the_command_names_the_extra(monkeypatch):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["quality-bench", "--epochs", "1"])
    assert result.exit_code == EXIT_DEPENDENCY
    assert result.stderr.strip().splitlines() == [
        "error: the aeon package ships this dataset: pip install 'edgeae[dataset]' (from a checkout: pip install "
        "'.[dataset]')"]


@needs_module("aeon", "dataset")  # the series ship with aeon
def test_the_shipped_series_are_found_and_labelled():
    series = {s.name: s for s in shipped_series()}
    assert set(series) == {"InternalBleeding16", "ecg-diff-count-3 TEST", "ecg-diff-count-3 TRAIN_A"}
    assert series["InternalBleeding16"].skip_rows == 1200
    for s in series.values():
        assert s.train_file.is_file() and s.test_file.is_file()
