"""What a person reads (issue 30): score's summary (windows, flagged, the highest-scoring windows, when,
and the features behind them) with the table in --output or --json, and the block that ends an export."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edgeae import runtime
from edgeae.cli import main
from edgeae.cli.summary import ScoreSummary, export_summary_lines
from edgeae.contract.manifest import read_manifest, write_manifest


def payload(scores, parts, starts=None, flags=None, missing=None):
    """One chunk of score's columns, as the CLI builds them (masked where a window was not scored)."""
    scores, parts = np.asarray(scores, float), np.asarray(parts, float)
    gaps = np.zeros(len(scores), bool) if missing is None else np.asarray(missing, bool)
    out = {"score": np.ma.masked_array(scores, gaps)}
    if flags is not None:
        out["anomaly"] = np.ma.masked_array(np.asarray(flags, np.int8), gaps)
    if starts is not None:
        out["window_start"] = np.asarray(starts)
    for j, name in enumerate("xy"):
        out[f"score_{name}"] = np.ma.masked_array(parts[:, j], gaps)
    out["missing"] = gaps.astype(np.int8)
    return out


def test_the_summary_counts_and_lists_the_highest_windows_one_per_event():
    summary = ScoreSummary(("x", "y"), threshold=0.5, source="s.csv", timesteps=4)
    # chunk 1: an event at rows 10-12 (overlapping windows), one missing window
    summary.add(payload([0.1, 0.9, 1.0, 0.8, np.nan], [[0.1, 0], [0.9, 0], [0.75, 0.25], [0.8, 0], [0, 0]],
                        starts=[0, 10, 11, 12, 20], flags=[0, 1, 1, 1, 0], missing=[0, 0, 0, 0, 1]))
    # chunk 2: a second event, its best window lower than the first's, and one overlapping the first chunk's
    summary.add(payload([0.7, 0.2, 0.6], [[0.0, 0.7], [0.1, 0.1], [0.3, 0.3]], starts=[40, 50, 13],
                        flags=[1, 0, 1]))
    assert (summary.windows, summary.missing, summary.flagged) == (8, 1, 5)
    assert [w["start"] for w in summary.worst] == [11, 40, 50, 0]  # 10, 12 and 13 overlap 11; 20 was not scored
    lines = summary.lines(output=None)
    assert lines[0] == "scored 7 of 8 windows of s.csv: 5 flagged (71.4%) above the threshold 0.5; 1 not scored " \
                       "(missing values)"
    assert lines[2].split() == ["window_start", "11", "score", "1", "(2.0x", "threshold)", "FLAGGED", "x", "75%,",
                                "y", "25%"]
    assert lines[3].split()[-2:] == ["y", "100%"] and "FLAGGED" not in lines[4]
    assert lines[-1].startswith("every window's score") and "--output" in lines[-1]


def test_without_a_threshold_nothing_is_flagged_and_ready_windows_are_numbered():
    summary = ScoreSummary(("x", "y"), threshold=None, source="w.npy", timesteps=4)
    summary.add(payload([0.3, 0.4], [[0.2, 0.1], [0.1, 0.3]]))
    lines = summary.lines(output=None)
    assert lines[0] == "scored 2 of 2 windows of w.npy: no anomaly threshold (scores are in the model's units), " \
                       "nothing flagged"
    assert lines[2].split()[:4] == ["window", "1", "score", "0.4"] and "threshold" not in lines[2]


def test_score_prints_the_summary_by_default_and_json_only_with_json(tiny_export, tmp_path):
    rng = np.random.default_rng(3)
    values = rng.uniform(0.2, 0.4, (60, 3))
    values[30:32, 2] += 4.0  # feature 'c' breaks at 00:30
    data = tmp_path / "r.csv"
    data.write_text("time,a,b,c\n" + "\n".join(f"00:{i:02d}," + ",".join(f"{v:.5f}" for v in row)
                                                 for i, row in enumerate(values)) + "\n")
    values = np.loadtxt(data, delimiter=",", skiprows=1, usecols=(1, 2, 3))  # as written
    args = ["score", str(tiny_export), str(data), "--time-column", "time", "--provider", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    expected = runtime.load(tiny_export, "cpu").score(np.stack([values[i:i + 6] for i in range(55)]))
    lines = result.stdout.splitlines()
    flagged = int(expected.flags.sum())
    assert lines[0].startswith(f"scored 55 of 55 windows of r.csv: {flagged} flagged")
    worst = int(np.argmax(expected.scores))
    assert lines[2].split()[:4] == [f"00:{worst:02d}", "(window_start", f"{worst})", "score"]
    assert lines[2].split("  ")[-1].startswith("c ") and 25 <= worst <= 31  # a window over the spike, driven by 'c'
    assert not result.stdout.lstrip().startswith("{")

    as_json = CliRunner().invoke(main, [*args, "--json"])
    table = json.loads(as_json.stdout)
    np.testing.assert_allclose(table["score"], expected.scores, rtol=1e-6)
    assert table["start_time"][worst] == f"00:{worst:02d}"

    out = tmp_path / "scores.csv"
    written = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert written.exit_code == 0 and written.stdout.splitlines() == lines[:-1]  # the summary, less the hint
    assert len(out.read_text().splitlines()) == 56 and f"wrote 55 rows to {out}" in written.stderr


def test_an_export_ends_with_what_was_published_and_what_was_not_and_why(export_copy):
    manifest = read_manifest(export_copy).to_body()
    fp16 = manifest["variants"]["autoencoder"]["fp16"]
    fp16["published"] = False
    fp16["parity"]["failures"] = ["autoencoder.fp16.onnx: max abs 4.1e-02 > allowed 3e-03 of range"]
    write_manifest(export_copy, manifest)
    lines = export_summary_lines(export_copy)
    published = sum(entry["published"] for by_name in manifest["variants"].values() for entry in by_name.values())
    assert lines[0].startswith(f"summary: {published} variants published, 1 not published")
    assert "  NOT published  autoencoder/fp16: autoencoder.fp16.onnx: max abs 4.1e-02 > allowed 3e-03 of range" in lines
    shown = next(line for line in lines if line.strip().startswith("published      autoencoder:"))
    assert "fp16" not in shown and "fp32 (" in shown and "int8 (" in shown
    p, tol = manifest["variants"]["autoencoder"]["int8"]["parity"], manifest["variants"]["autoencoder"]["int8"]["tolerance"]
    use = min(v for v in (p["max_abs"] / tol["abs"] if tol["abs"] else None,
                          p["max_rel_range"] / tol["rel_range"] if tol["rel_range"] else None) if v is not None)
    assert f"int8 ({100 * use:.0f}%)" in shown
    if manifest.get("skipped"):
        assert any(line.strip().startswith("not built") for line in lines)
