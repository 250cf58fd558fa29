"""The benchmark runs and reports every path; no timing assertions (shared, noisy machines)."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeae.measure import bench, timing
from edgeae.measure.bench import KERAS_PATHS, BenchOptions, model_flops, run_bench
from edgeae.cli import main
from edgeae.contract.errors import UsageError

from .conftest import record_fits


def test_flop_counts_match_the_seed_model():
    assert model_flops("autoencoder", 10, 5, 100) == pytest.approx(2.45e6, rel=0.01)
    assert model_flops("encoder", 10, 5, 100) == pytest.approx(0.84e6, rel=0.01)


def test_bench_reports_every_path_with_ratios(tiny_export):
    report = run_bench(tiny_export, BenchOptions(keras=True, runs=5, warmup=1, batches=(8,), cold=False))
    names = {(r.role, r.name) for r in report.results}
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    routed = {e["file"]: [r["file"] for r in e["by_batch"] if r["file"] != e["file"]]
              for by_name in manifest["variants"].values() for e in by_name.values() if e.get("by_batch")}
    assert set(routed) <= {"autoencoder.onnx", "encoder.onnx"}  # as measured: the fp32 graphs route
    served = {f for files in routed.values() for f in files if f.split(".")[1] in ("b1", "unrolled")}
    onnx_files = [n for n, entry in manifest["files"].items() if n.endswith((".onnx", ".ort")) and n not in served
                  and entry["role"] != "onnx-detector"]  # the detector graphs are apps' files, not timed paths
    for name in onnx_files:  # a one-window or unrolled graph is timed inside the path it serves; others alone too
        label = "+".join(dict.fromkeys([name, *(f.split(".")[-2] for f in routed[name])])) if name in routed else name
        assert (name.split(".")[0], label) in names
    assert len(names) == len(onnx_files) + 2 * len(KERAS_PATHS)
    for role in ("autoencoder", "encoder"):
        for path in KERAS_PATHS:
            assert (role, path) in names
        base = next(r for r in report.results if r.role == role and r.name == report.baseline[role])
        assert base.latency_ratio == pytest.approx(1.0)
    for r in report.results:
        assert r.error is None, r
        assert r.latency_us_median > 0 and r.latency_us_p99 >= r.latency_us_median
        assert r.throughput["8"] > 0 and r.percent_of_matmul["8"] > 0
        assert r.latency_ratio > 0 and r.throughput_ratio["8"] > 0
        assert (set(r.versus_xla) == {"1", "8"} and min(r.versus_xla.values()) > 0) == (r.kind == "onnx")
    assert report.machine_matmul_gflops > 0
    assert "x base" in report.table() and "times faster than keras-tf.function-xla" in report.table()


def test_each_block_is_warm_interleaved_and_paired_by_round(monkeypatch):
    """Every timed block follows WARM_S of untimed calls of the same path and ends in a pause,
    each round gives every path one block, and each path gets one array of times per round."""
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: calls.append(("pause", seconds)))
    runners = {name: (lambda x, name=name: calls.append((name, timing.time.perf_counter())))
               for name in ("a", "b", "c")}
    samples = timing.time_rounds(runners, None, runs=20, warmup=2)
    rounds, block = 5, 4  # at least five rounds
    assert {name: [len(r) for r in arrays] for name, arrays in samples.items()} == {name: [block] * rounds for name in runners}
    blocks: list[list[tuple[str, float]]] = [[]]
    for call in calls[3 * 2:]:  # after each path's warm-up calls
        if call[0] == "pause":
            assert call[1] == timing.SETTLE_S
            blocks.append([])
        else:
            blocks[-1].append(call)
    assert blocks.pop() == [] and len(blocks) == 3 * rounds
    for r in range(rounds):
        assert sorted(b[0][0] for b in blocks[3 * r:3 * r + 3]) == ["a", "b", "c"]
    for calls_in_block in blocks:
        assert len({name for name, _ in calls_in_block}) == 1
        times = [at for _, at in calls_in_block]
        untimed = len(times) - block
        assert untimed >= 1 and times[untimed] - times[0] >= timing.WARM_S


def test_cold_start_and_peak_memory_per_path(tiny_export):
    report = run_bench(tiny_export, BenchOptions(keras=True, runs=3, warmup=0, batches=(4,), cold=True, roles=("encoder",)))
    by_name = {r.name.split("+")[0]: r for r in report.results}  # encoder.onnx with the graphs it routes to
    onnx, keras = by_name["encoder.onnx"], by_name["keras-predict"]
    for r in (onnx, keras):
        assert r.cold_start_s > 0 and r.peak_rss_mb > 10
    # the runtime path never loads TensorFlow, so its process is far smaller
    assert onnx.peak_rss_mb < keras.peak_rss_mb


def test_bench_over_onnx_needs_no_tensorflow(tiny_export):
    code = ("import sys\n"
            "from edgeae.measure.bench import BenchOptions, run_bench\n"
            f"run_bench({str(tiny_export)!r}, BenchOptions(runs=3, warmup=0, batches=(2,), cold=False))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("kwargs", [
    {"runs": 1}, {"runs": 3.5}, {"runs": True}, {"warmup": -1}, {"warmup": "2"}, {"threads": 0}, {"threads": True},
    {"batches": (0,)}, {"batches": ()}, {"batches": 8}, {"batches": (2.0,)}, {"batches": (bench.MAX_BATCH + 1,)},
    {"roles": ()}, {"roles": ("decoder",)}, {"roles": "encoder"},
])
def test_bad_bench_options(tiny_export, kwargs):
    """Each is refused in one line before anything loads or is timed."""
    with pytest.raises(UsageError) as caught:
        run_bench(tiny_export, BenchOptions(cold=False, **kwargs))
    assert "\n" not in str(caught.value)


def test_bench_cli_json(tiny_export, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tiny_export), "--runs", "3", "--warmup", "0", "--batch", "2",
                                       "--no-cold-start", "--json", "--output", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["results"] and json.loads((tmp_path / "b.json").read_text()) == payload


def test_batch_one_throughput_never_replaces_the_latency_rounds(tiny_export, monkeypatch):
    """--batch 1 times batch 1 twice: the latency figures and ratio come from the latency rounds."""
    calls = []
    real = bench.time_rounds
    def recording(runners, x, runs, warmup):
        rounds = real(runners, x, runs, warmup)
        calls.append(rounds)
        return rounds
    monkeypatch.setattr(bench, "time_rounds", recording)
    report = run_bench(tiny_export, BenchOptions(runs=3, warmup=0, batches=(1, 2, 1), cold=False,
                                                 roles=("encoder", "encoder")))
    assert report.batches == (1, 2) and len({r.name for r in report.results}) == len(report.results) > 0
    latency = calls[0]  # the first rounds of the role are its latency rounds
    for r in report.results:
        assert r.latency_ratio == pytest.approx(timing.paired_ratio(latency[r.name], latency[report.baseline["encoder"]]))
    json.dumps(report.to_dict(), allow_nan=False)


def test_a_numpy_batch_size_gives_a_report_json_can_write(tiny_export):
    import numpy as np

    report = run_bench(tiny_export, BenchOptions(runs=3, warmup=0, batches=(np.int64(2),), cold=False, roles=("encoder",)))
    assert report.batches == (2,) and json.loads(json.dumps(report.to_dict()))["batches"] == [2]


def test_a_baseline_that_cannot_be_opened_stops_the_bench_before_timing(export_copy, monkeypatch):
    from edgeae.contract.manifest import file_entry, read_manifest, write_manifest
    from edgeae.contract.errors import IntegrityError

    (export_copy / "encoder.plain.onnx").write_bytes(b"not a model")
    manifest = read_manifest(export_copy).to_body()
    manifest["files"]["encoder.plain.onnx"] = file_entry(export_copy / "encoder.plain.onnx", "onnx-plain")
    write_manifest(export_copy, manifest)
    monkeypatch.setattr(bench, "time_rounds", lambda *a: pytest.fail("timed without a baseline"))
    with pytest.raises(IntegrityError, match="encoder.plain.onnx: the baseline cannot be run here"):
        run_bench(export_copy, BenchOptions(runs=3, warmup=0, batches=(2,), cold=False, roles=("encoder",)))


def test_a_batch_graph_the_manifest_does_not_list_is_refused_as_the_runtime_refuses_it(fixed_routes):
    from edgeae.contract.manifest import read_manifest, write_manifest
    from edgeae.contract.errors import IntegrityError

    manifest = read_manifest(fixed_routes).to_body()  # its routes send batch 1 to autoencoder.b1.onnx
    del manifest["files"]["autoencoder.b1.onnx"]
    write_manifest(fixed_routes, manifest)
    with pytest.raises(IntegrityError, match="autoencoder.b1.onnx"):
        run_bench(fixed_routes, BenchOptions(runs=3, warmup=0, batches=(2,), cold=False, roles=("autoencoder",)))


X86_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9R14
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes asimddp sve i8mm
CPU implementer\t: 0x41
"""


def test_cpu_description_names_the_vector_features_that_change_the_figures():
    x86 = timing.cpu_description(X86_CPUINFO)
    assert x86["model"] == "AMD EPYC 9R14" and x86["features"] == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI"]
    assert x86["cores"] >= 1
    arm = timing.cpu_description(ARM_CPUINFO)
    assert arm["features"] == ["NEON", "ARM dot product", "ARM i8mm", "SVE"]
    assert "no AVX2" in timing.cpu_line(timing.cpu_description("model name\t: Old CPU\nflags\t: sse2\n"))


def test_bench_states_the_cpu_in_its_table_and_json(tiny_export):
    report = run_bench(tiny_export, BenchOptions(runs=3, warmup=0, batches=(4,), cold=False, roles=("encoder",)))
    cpu = report.to_dict()["cpu"]
    assert cpu == timing.cpu_description() and cpu["cores"] >= 1
    assert report.table().splitlines()[0].startswith(f"CPU: {timing.cpu_line(cpu)}")
    assert json.loads(json.dumps(report.to_dict()))["cpu"]["model"] == cpu["model"]


def test_bench_training_times_keras_fit_without_and_with_xla(tiny_config, monkeypatch):
    fits = record_fits(monkeypatch)  # each Keras fit: compiled by XLA or not, and whether it finished
    result = bench.bench_training(tiny_config, count=64, epochs=2)
    assert result.shape == "6x3x8 relu" and result.windows == 64 and result.run_epochs == 40
    # Not that XLA ran (it may not compile on every CPU) but that the report says truthfully whether it did:
    # the plain run's one fit was not compiled; the XLA run's finished fit, the one timed, was exactly when
    # xla_ran says so (a compiled fit that failed first is the fallback the line reports).
    finished = [f for f in fits if f["finished"]]
    assert len(finished) == 2 and not finished[0]["xla"]
    assert result.xla_ran == finished[1]["xla"]
    assert ("XLA failed here: fell back" in result.line()) == (not result.xla_ran)
    for name in ("keras", "keras-xla"):
        assert result.epochs_per_s[name] > 0 and result.first_epoch_s[name] > 0
        assert result.run_s[name] > result.first_epoch_s[name]
    assert result.final_loss["keras-xla"] == pytest.approx(result.final_loss["keras"], rel=1e-3)
    assert result.speedup > 0 and "epochs/s" in result.line()


def test_bench_training_option_adds_the_row_to_table_and_json(tiny_export, monkeypatch):
    """The export's own model shape is timed (the slow part is stubbed: the test above times it)."""
    seen = []
    figures = {"keras": 1.0, "keras-xla": 3.0}
    monkeypatch.setattr(bench, "bench_training", lambda config, progress: seen.append(config) or bench.TrainingResult(
        "6x3x8 relu", 1769, 32, 4, figures, figures, figures, config.epochs, figures, 3.0, True))
    result = CliRunner().invoke(main, ["bench", str(tiny_export), "--training", "--role", "encoder", "--runs", "3",
                                       "--batch", "4", "--no-cold-start", "--json"])
    assert result.exit_code == 0, result.output
    assert [(c.timesteps, c.features, c.units, c.epochs) for c in seen] == [(6, 3, 8, 40)]
    assert json.loads(result.stdout)["training"]["speedup"] == 3.0
    report = run_bench(tiny_export, BenchOptions(runs=3, warmup=0, batches=(4,), cold=False, roles=("encoder",),
                                                 training=True))
    assert "training 6x3x8 relu, 1,769 windows, batch 32: 1.00 -> 3.00 epochs/s (3.00x)" in report.table()


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"epochs": 1}, {"pairs": 1.5}])
def test_bench_training_refuses_impossible_settings(kwargs):
    from edgeae.trainer.model import TrainConfig

    with pytest.raises(UsageError):
        bench.bench_training(TrainConfig(), **kwargs)
