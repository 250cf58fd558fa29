"""Fleets on Dask: a real two-process LocalCluster, Parquet written with pyarrow (row groups cut
through series), object storage through moto's S3 server and s3fs, and the numbers one process gives."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from .conftest import import_or_skip  # noqa: E402

import_or_skip("distributed", "dask")  # skipped without the extra, except in CI: there it fails

import dask.dataframe as dd  # noqa: E402
import distributed  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from edgeae import fleet  # noqa: E402
from edgeae import runtime  # noqa: E402
from edgeae.contract.files import read_json
from edgeae.contract.manifest import write_manifest  # noqa: E402
from edgeae.cli import main  # noqa: E402
from edgeae.data.series import load_series  # noqa: E402
from edgeae.data.windows import make_windows, window_series, window_starts  # noqa: E402
from edgeae.contract.versions import environment  # noqa: E402
from edgeae.contract.errors import (  # noqa: E402
    EXIT_DATA, EXIT_INTEGRITY, EXIT_RUNTIME, EXIT_USAGE, DataError, ExportExistsError, IntegrityError)
from edgeae.fleet import FleetOptions, SampleOptions  # noqa: E402

from .conftest import EXPORTED  # noqa: E402

FEATURES = [f"f{i}" for i in range(5)]
TIMESTEPS = 10
MACHINES = FleetOptions(by="machine", order="step")


def _series(name: str, steps: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    values = 0.5 + 0.3 * np.sin(steps[:, None] / 7.0 + rng.uniform(0, 6, 5)) + rng.normal(0, 0.05, (len(steps), 5))
    return pd.DataFrame({"machine": name, "step": steps, **dict(zip(FEATURES, values.T))})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Six series: regular ones of several lengths, one with a gap, one of step 2 with a gap, one too short."""
    rng = np.random.default_rng(7)
    parts = [
        _series("a", np.arange(300), rng),
        _series("b", np.concatenate([np.arange(150), np.arange(161, 311)]), rng),  # a gap of 11 steps
        _series("c", np.arange(7), rng),  # fewer rows than one window
        _series("d", np.arange(0, 520, 2), rng),  # usual step 2
        _series("e", np.concatenate([np.arange(0, 40, 2), np.arange(43, 103, 2)]), rng),  # step 2, one gap of 3
        _series("f", np.arange(1000, 1413), rng),
    ]
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def parquet_dir(frame, tmp_path_factory) -> str:
    """Three files cut through series, each in row groups of 97 rows (also cut through series)."""
    folder = tmp_path_factory.mktemp("fleet") / "data"
    folder.mkdir()
    for number, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False),
                       folder / f"part-{number}.parquet", row_group_size=97)
    return str(folder)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def reference(frame) -> pd.DataFrame:
    return fleet.reference_frame(EXPORTED, frame, MACHINES)


def _sorted(result: pd.DataFrame) -> pd.DataFrame:
    return result.sort_values(["machine", "window_start"], ignore_index=True)


def _identical(result: pd.DataFrame, reference: pd.DataFrame) -> None:
    """The same windows, and bit for bit the same scores and flags."""
    result, reference = _sorted(result), _sorted(reference)
    assert len(result) == len(reference)
    assert not result.duplicated(["machine", "window_start"]).any()
    for column in reference.columns:
        assert np.array_equal(result[column].to_numpy(), reference[column].to_numpy()), column


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


# ---------------------------------------------------------------- windows and numbers


def test_windows_and_scores_are_those_of_edgeae_score_per_series(frame, reference):
    """Where a series has no gap, its windows are the ones `edgeae score` cuts from it alone, and
    the scores those of EdgeModel.score up to the batch routing's 1.6e-8 (the flags the same)."""
    edge = runtime.load(EXPORTED, "cpu")
    for name in ("a", "d", "f"):
        series = frame[frame.machine == name]
        mine = reference[reference.machine == name]
        windows = make_windows(series[FEATURES].to_numpy(), TIMESTEPS)
        expected = edge.score(windows)
        starts = window_starts(len(series), TIMESTEPS)
        assert np.array_equal(mine.window_start.to_numpy(), series.step.to_numpy()[starts])
        assert np.abs(mine.score.to_numpy() - expected.scores).max() < 2e-8
        assert np.array_equal(mine.anomaly.to_numpy(), expected.flags)


def test_windows_never_cross_a_gap_or_a_series(reference, frame):
    usual = {"a": 1, "b": 1, "d": 2, "e": 2, "f": 1}
    spans = reference.window_end - reference.window_start
    assert (spans.to_numpy() == reference.machine.map(usual).to_numpy() * (TIMESTEPS - 1)).all()
    assert "c" not in set(reference.machine)  # 7 rows: no window
    # b: 150 + 150 rows, windows restart after the gap; e: 20 + 30 rows of step 2
    assert (reference.machine == "b").sum() == 2 * (150 - TIMESTEPS + 1)
    assert (reference.machine == "e").sum() == (20 - TIMESTEPS + 1) + (30 - TIMESTEPS + 1)


def test_a_flag_never_depends_on_partitioning(client, frame, parquet_dir, reference):
    """Files and row groups cut through series, and 1, 4 or 9 partitions: bit-identical scores and flags."""
    _identical(fleet.score_dataset(EXPORTED, parquet_dir, MACHINES).compute(), reference)
    shuffled = pd.concat([frame[frame.machine == name] for name in "fbdaec"])  # series in another order
    for partitions in (1, 4, 9):
        source = dd.from_pandas(shuffled, npartitions=partitions, sort=False)
        _identical(fleet.score_dataset(EXPORTED, source, MACHINES).compute(), reference)


def test_embeddings_equal_one_process(client, frame, parquet_dir):
    result = fleet.encode_dataset(EXPORTED, parquet_dir, MACHINES).compute()
    expected = fleet.reference_frame(EXPORTED, frame, MACHINES, command="encode")
    assert [c for c in result.columns if c.startswith("embedding_")] == [f"embedding_{i}" for i in range(100)]
    _identical(result, expected)
    # And against an independent path, not the encode_partition both of the above run: where a series has no
    # gap, its windows cut alone (make_windows) and encoded by the runtime API. The routing may run another fp32
    # graph of the encoder for some sizes; each is within its recorded worst error of Keras, so two are within
    # twice the largest of those (2.4e-7 each in exported/). Equal here, measured.
    edge = runtime.load(EXPORTED, "cpu")
    recorded = max(entry.details["parity"]["max_abs"] for entry in edge.manifest.variants["encoder"].values()
                   if entry.published and entry.precision == "fp32")
    columns = [f"embedding_{i}" for i in range(100)]
    for name in ("a", "d", "f"):
        series = frame[frame.machine == name]
        mine = _sorted(result[result.machine == name])
        windows = make_windows(series[FEATURES].to_numpy(), TIMESTEPS)
        assert len(mine) == len(windows) > 0
        assert np.array_equal(mine.window_start.to_numpy(), series.step.to_numpy()[window_starts(len(series), TIMESTEPS)])
        assert np.abs(mine[columns].to_numpy() - edge.encode(windows)).max() <= 2 * recorded, name


def test_csv_files_and_a_time_column(client, frame, tmp_path, reference):
    timed = frame.assign(when=pd.Timestamp("2026-01-01") + pd.to_timedelta(frame.step, unit="s"))
    for number, rows in enumerate(np.array_split(np.arange(len(timed)), 2)):
        timed.iloc[rows].to_csv(tmp_path / f"part-{number}.csv", index=False)
    result = fleet.score_dataset(EXPORTED, str(tmp_path / "*.csv"), replace(MACHINES, time="when")).compute()
    _identical(result.drop(columns="window_time"), reference)
    first = _sorted(result).iloc[0]
    assert str(first.window_time) == "2026-01-01 00:00:00"


# ---------------------------------------------------------------- a run: Parquet, record, count


def test_a_run_writes_parquet_and_its_record(client, parquet_dir, reference, tmp_path):
    out = tmp_path / "scores"
    on_client = replace(MACHINES, scheduler=client)
    record = fleet.run_dataset("score", EXPORTED, parquet_dir, out, on_client)
    manifest = read_json(out / "manifest.json", "record")
    assert manifest["windows_written"] == manifest["windows_expected"] == len(reference) == record["windows_written"]
    assert manifest["export"]["checksum"] == runtime.load(EXPORTED, "cpu").manifest.checksum
    assert manifest["export"]["graph"] == runtime.load(EXPORTED, "cpu").models["autoencoder"].graph_for(256).name
    assert manifest["threshold"] == runtime.load(EXPORTED, "cpu").threshold
    assert manifest["series_without_windows"] == {"count": 1, "first": ["c"]}
    assert manifest["gaps"] == 2 and manifest["series"] == 6 and manifest["engine"]["workers"] == 2
    assert set(manifest["files"]) == {p.name for p in out.glob("part.*.parquet")}
    _identical(dd.read_parquet(out).compute(), reference)
    with pytest.raises(ExportExistsError):
        fleet.run_dataset("score", EXPORTED, parquet_dir, out, on_client)
    fleet.run_dataset("encode", EXPORTED, parquet_dir, out, replace(on_client, force=True))
    assert "embedding_99" in dd.read_parquet(out).compute().columns


def test_the_cli_scores_a_folder_on_a_scheduler(client, parquet_dir, reference, tmp_path):
    out = tmp_path / "cli-scores"
    result = run_cli("fleet", "score", EXPORTED, parquet_dir, "--by", "machine", "--order", "step",
                     "--scheduler", client.scheduler.address, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {len(reference)} windows of 6 series" in result.output
    assert "1 series had no window of 10 regular steps: c" in result.output
    _identical(dd.read_parquet(out).compute(), reference)
    again = run_cli("fleet", "score", EXPORTED, parquet_dir, "--by", "machine", "--order", "step",
                    "--scheduler", client.scheduler.address, "-o", out)
    one_line_error(again, EXIT_USAGE, "pass --force")


def test_a_killed_worker_loses_and_duplicates_no_window(client, tmp_path):
    """Dask reruns a dead worker's tasks: the output still holds every window exactly once."""
    data = tmp_path / "big"
    by_series = FleetOptions(by="series", order="step")
    fleet.synthetic_fleet(data, series=24, rows=2500, features=5, files=6)
    reference = fleet.reference_frame(EXPORTED, pd.read_parquet(data), by_series)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    killed = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any("score_partition" in str(key) for key in client.processing(workers=[victim]).get(victim, ())):
                os.kill(pids[victim], signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    record = fleet.run_dataset("score", EXPORTED, str(data), tmp_path / "out", replace(by_series, scheduler=client))
    killer.join()
    assert killed.is_set(), "the worker was never seen scoring"
    assert record["windows_written"] == record["windows_expected"] == len(reference)
    result = dd.read_parquet(tmp_path / "out").compute().rename(columns={"series": "machine"})
    _identical(result, reference.rename(columns={"series": "machine"}))
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != set(pids.values())


# ---------------------------------------------------------------- object storage


@pytest.fixture(scope="module")
def s3(parquet_dir):
    """moto's S3 server on a free local port, holding the Parquet files under s3://fleet/history/."""
    boto3 = import_or_skip("boto3", "dev")  # moto[server] brings it
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    bucket = boto3.client("s3", endpoint_url=endpoint, **credentials)
    bucket.create_bucket(Bucket="fleet")
    for path in sorted(os.listdir(parquet_dir)):
        bucket.upload_file(os.path.join(parquet_dir, path), "fleet", f"history/{path}")
    yield {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
    server.stop()


def test_object_storage_through_s3fs(client, s3, reference, tmp_path):
    on_s3 = replace(MACHINES, storage_options=s3)
    result = fleet.score_dataset(EXPORTED, "s3://fleet/history/*.parquet", on_s3).compute()
    _identical(result, reference)
    options = [arg for key, value in s3.items() for arg in ("--storage-option", f"{key}={value}")]
    cli = run_cli("fleet", "score", EXPORTED, "s3://fleet/history/", "--by", "machine", "--order", "step",
                  "--scheduler", client.scheduler.address, "-o", tmp_path / "s3-scores", *options)
    assert cli.exit_code == 0, cli.output
    _identical(dd.read_parquet(tmp_path / "s3-scores").compute(), reference)
    missing = run_cli("fleet", "score", EXPORTED, "s3://fleet/nothing/*.parquet", "--by", "machine", "--order", "step",
                      "--scheduler", client.scheduler.address, "-o", tmp_path / "none", *options)
    one_line_error(missing, EXIT_USAGE, "no Parquet or CSV files match s3://fleet/nothing/*.parquet")


# ---------------------------------------------------------------- a training sample


def test_a_sample_is_reproducible_and_train_reads_it(client, frame, parquet_dir, tmp_path):
    out = tmp_path / "sample.npy"
    five = SampleOptions(TIMESTEPS, per_series=5, seed=4)
    record = fleet.write_sample(out, parquet_dir, replace(MACHINES, scheduler=client), five)
    windows = np.load(out)
    assert windows.shape == (25, TIMESTEPS, 5) and record["windows"] == 25 and record["series"] == 5
    index = pd.read_csv(tmp_path / "sample.windows.csv")
    for (name, start), window in zip(index.itertuples(index=False), windows):
        rows = frame[(frame.machine == name) & (frame.step >= start)].head(TIMESTEPS)
        assert np.array_equal(rows[FEATURES].to_numpy(), window)  # a real window of one series, never across two
    again = fleet.sample_windows(dd.from_pandas(frame, npartitions=7), MACHINES, five)
    assert np.array_equal(again.windows, windows)
    other = fleet.sample_windows(parquet_dir, MACHINES, replace(five, seed=5))
    assert not np.array_equal(other.windows, windows)
    share = fleet.sample_windows(parquet_dir, MACHINES, SampleOptions(TIMESTEPS, share=0.1, seed=4))
    assert share.index.groupby("machine").size().to_dict() == {"a": 29, "b": 28, "d": 25, "e": 3, "f": 40}
    loaded = load_series(out)
    assert loaded.is_windows and window_series(loaded, TIMESTEPS, 5, validation_fraction=0.2).train.shape[0] == 20
    result = run_cli("fleet", "sample", parquet_dir, "--by", "machine", "--order", "step", "--timesteps", TIMESTEPS,
                     "--per-series", 5, "--seed", 4, "--scheduler", client.scheduler.address, "-o", out)
    one_line_error(result, EXIT_USAGE, "pass --force")


# ---------------------------------------------------------------- bad input: one line, a code


def test_bad_input_is_refused_in_one_line(client, frame, parquet_dir, tmp_path):
    address = client.scheduler.address
    base = ["fleet", "score", EXPORTED]
    one_line_error(run_cli(*base, parquet_dir, "--by", "unit", "--order", "step", "--scheduler", address,
                           "-o", tmp_path / "o1"), EXIT_DATA, "no series (--by) column 'unit'")
    one_line_error(run_cli(*base, parquet_dir, "--by", "machine", "--order", "step", "--columns", "f0,f1,f9",
                           "--scheduler", address, "-o", tmp_path / "o2"), EXIT_DATA, "no column 'f9'")
    one_line_error(run_cli(*base, tmp_path / "nowhere", "--by", "machine", "--order", "step", "--scheduler", address,
                           "-o", tmp_path / "o3"), EXIT_USAGE, "data not found")
    unsorted = frame.copy()
    unsorted.loc[[5, 6], "step"] = [6, 5]
    unsorted.to_csv(tmp_path / "unsorted.csv", index=False)
    one_line_error(run_cli(*base, tmp_path / "unsorted.csv", "--by", "machine", "--order", "step", "--scheduler",
                           address, "-o", tmp_path / "o4"), EXIT_DATA, "series 'a': step 5 follows step 6")
    assert not (tmp_path / "o4").exists()
    first = frame.index[frame.machine == "d"][0]
    in_one_file = pd.concat([frame.loc[:first], frame.loc[first:]], ignore_index=True)
    in_two_files = dd.concat([dd.from_pandas(frame, npartitions=1), dd.from_pandas(frame.loc[[first]], npartitions=1)])
    for source in (dd.from_pandas(in_one_file, npartitions=1), in_two_files):  # the second met once the series is gathered
        with pytest.raises(DataError, match="series 'd': step 0 appears twice"):
            fleet.score_dataset(EXPORTED, source, MACHINES).compute()
    broken = frame.copy()
    broken.loc[40, "f3"] = np.inf  # a missing value (NaN) is a gap: tests/test_fleet_missing.py
    with pytest.raises(DataError, match=r"series 'a', step 40: column 'f3' is inf"):
        fleet.score_dataset(EXPORTED, dd.from_pandas(broken, npartitions=2), MACHINES).compute()
    unreachable = run_cli(*base, parquet_dir, "--by", "machine", "--order", "step", "--scheduler",
                          "tcp://127.0.0.1:9", "-o", tmp_path / "o5")
    one_line_error(unreachable, EXIT_RUNTIME, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")


def test_a_worker_refuses_an_export_whose_checksum_changed(client, parquet_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(EXPORTED, export)
    lazy = fleet.score_dataset(export, parquet_dir, MACHINES)
    manifest = read_json(export / "manifest.json", "manifest")
    write_manifest(export, {**manifest, "created": "later"})  # resealed: valid, but another export
    with pytest.raises(IntegrityError, match="the run started with"):
        lazy.compute()
    assert IntegrityError.exit_code == EXIT_INTEGRITY


def test_the_runtime_never_imports_dask_and_a_missing_extra_is_named():
    code = ("import sys; import edgeae.runtime, edgeae.cli; assert 'dask' not in sys.modules, 'dask imported'; "
            "sys.modules['distributed'] = None; sys.modules['dask.dataframe'] = None; "
            "from click.testing import CliRunner; from edgeae.cli import main; "
            "r = CliRunner().invoke(main, ['fleet', 'score', 'exported', 'data', '--by', 'a', '--order', 'b', '-o', 'x']); "
            "print(r.exit_code); print(r.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=EXPORTED.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "7"
    assert "pip install 'edgeae[dask]'" in done.stdout


def test_help_names_every_fleet_command():
    for command in ("score", "encode", "sample", "bench"):
        result = run_cli("fleet", command, "--help")
        assert result.exit_code == 0 and "Example:" in result.output
    assert json.loads(json.dumps(environment(fleet.FLEET_DISTRIBUTIONS)))["dask"]
