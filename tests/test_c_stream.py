"""The generated C's streaming API (issue 29, item 5): rows pushed one at a time give, for every window
completed, the score and flag the batch call edgeae_score gives that window (bit for bit) and the
flags Python's StreamScorer gives; a window holding a NaN is reported missing and never run."""
from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeae import runtime
from edgeae.contract.golden import read_golden
from edgeae.contract.manifest import read_export_manifest
from edgeae.data.windows import seed_sequence
from edgeae.mcu import bench as c_bench
from edgeae.mcu.c_code import HEADER_FILE, SOURCE_FILE, generate_c
from edgeae.mcu.stream_c import EXAMPLE_END, EXAMPLE_START, stream_bytes
from edgeae.runtime.streaming import StreamScorer

from .conftest import EXPORTED, needs_tools

pytestmark = needs_tools("gcc", install="Debian: apt-get install gcc")  # missing: fails in CI, skipped elsewhere

# Streams a file of float32 rows through edgeae_stream_push and, for each window completed, scores the
# same window of the whole series with the batch call: prints its first row, what the stream said, and
# whether the two agree bit for bit (score, reconstruction and flag).
STREAMER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "edgeae_model.h"

#define MAX_ROWS 4096

static edgeae_stream stream;
static edgeae_work work;
static float series[MAX_ROWS * EDGEAE_FEATURES];
static float reconstruction[EDGEAE_WINDOW_VALUES];

int main(int argc, char **argv)
{
    FILE *file;
    long rows, r;
    if (argc != 3 || (file = fopen(argv[1], "rb")) == NULL)
        return 2;
    rows = (long)fread(series, sizeof(float) * EDGEAE_FEATURES, MAX_ROWS, file);
    fclose(file);
    edgeae_stream_init(&stream);
    if (atoi(argv[2]) > 0)
        stream.stride = atoi(argv[2]);
    printf("sizeof %lu stride %d\n", (unsigned long)sizeof(edgeae_stream), (int)stream.stride);
    for (r = 0; r < rows; r++) {
        double score = -1.0, batch;
        int anomaly = -1, same;
        const long start = r - EDGEAE_TIMESTEPS + 1;
        const int code = edgeae_stream_push(&stream, series + r * EDGEAE_FEATURES, &score, &anomaly);
        if (code == EDGEAE_STREAM_NONE) {
            if (score != -1.0 || anomaly != -1)
                printf("%ld wrote-without-a-window\n", r);
            continue;
        }
        if (code == EDGEAE_STREAM_MISSING) {
            printf("%ld missing %d %d\n", start, isnan(score) != 0, anomaly);
            continue;
        }
        batch = edgeae_score(series + start * EDGEAE_FEATURES, reconstruction, &work);
        same = memcmp(&batch, &score, sizeof batch) == 0 && anomaly == edgeae_is_anomaly(batch)
               && memcmp(reconstruction, stream.reconstruction, sizeof reconstruction) == 0;
        printf("%ld %s %.17g %d %d\n", start, code == EDGEAE_STREAM_WINDOW ? "window" : "other", score, anomaly, same);
    }
    return 0;
}
"""


def build(c_dir: Path, build_dir: Path, program: str, name: str, link: bool = True) -> Path:
    """`program` compiled with the model under gcc's strictest C99 flags (warnings are errors)."""
    source = build_dir / f"{name}.c"
    source.write_text(program)
    out = build_dir / (name if link else f"{name}.o")
    command = (["gcc", *c_bench.STRICT, "-O2", f"-I{c_dir}", str(c_dir / SOURCE_FILE), str(source), "-lm", "-o", str(out)]
               if link else ["gcc", *c_bench.STRICT, "-O2", f"-I{c_dir}", "-c", str(source), "-o", str(out)])
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def stream_in_c(exe: Path, rows: np.ndarray, stride: int = 0) -> tuple[int, int, list[tuple]]:
    """(sizeof(edgeae_stream), its stride, one (start, kind, score, flag, same) per completed window)."""
    data = exe.parent / "rows.bin"
    np.ascontiguousarray(rows, np.float32).tofile(data)
    done = subprocess.run([str(exe), str(data), str(stride)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    size, used = re.fullmatch(r"sizeof (\d+) stride (\d+)", lines[0]).groups()
    windows = []
    for line in lines[1:]:
        parts = line.split()
        if parts[1] == "missing":
            windows.append((int(parts[0]), "missing", bool(int(parts[2])), int(parts[3]), True))
        else:
            assert parts[1] == "window", line
            windows.append((int(parts[0]), "window", float(parts[2]), int(parts[3]), bool(int(parts[4]))))
    return int(size), int(used), windows


def check_against_python(export: Path, windows: list[tuple], rows: np.ndarray, stride: int) -> int:
    """Every C window against StreamScorer's (pushed row by row): same starts, same missing windows, same
    flags, scores within a float32 step of the graph's; returns how many windows were flagged."""
    scorer = StreamScorer(runtime.load(export, "cpu"), stride=stride)
    python = [result for row in rows for result in scorer.push(row)]
    assert [w[0] for w in windows] == [p.start for p in python]
    for (start, kind, score, flag, same), p in zip(windows, python):
        assert same, f"window {start}: the stream and the batch call differ"
        if p.missing:
            assert (kind, score, flag) == ("missing", True, 0), start
            continue
        assert kind == "window" and flag == int(p.anomaly), (start, score, p.score)
        assert math.isclose(score, p.score, rel_tol=1e-5, abs_tol=1e-12), (start, score, p.score)
    return sum(1 for w in windows if w[1] == "window" and w[3])


@pytest.fixture(scope="module")
def seed_stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    folder = generate_c(EXPORTED, root / "c").folder
    return folder, build(folder, root, STREAMER, "streamer")


def seed_rows() -> np.ndarray:
    """The seed window's rows eight times over (a window starting on a multiple of 10 is the training
    window, normal; the others anomalous), then golden windows' rows, with one NaN at row 45."""
    golden = read_golden(EXPORTED, read_export_manifest(EXPORTED))
    rows = np.concatenate([np.tile(seed_sequence()[0], (8, 1)), golden.inputs["outside_range"][:2].reshape(-1, 5),
                           golden.inputs["in_range"][:3].reshape(-1, 5)]).astype(np.float32)
    rows[45, 2] = np.nan
    return rows


@pytest.mark.parametrize("stride", [1, 3])
def test_stream_equals_batch_c_and_the_python_stream_scorer(seed_stream, stride):
    folder, exe = seed_stream
    rows = seed_rows()
    size, used, windows = stream_in_c(exe, rows, stride)
    assert used == stride and len(windows) == len(range(0, len(rows) - 10 + 1, stride))
    missing = [w[0] for w in windows if w[1] == "missing"]
    assert missing == [s for s in range(0, len(rows) - 9, stride) if s <= 45 <= s + 9]  # each window holding row 45
    flagged = check_against_python(EXPORTED, windows, rows, stride)
    normal = [w for w in windows if w[1] == "window" and not w[3]]
    assert flagged and normal  # both answers were exercised
    assert size == stream_bytes(50, 5240) and f"{size} bytes (sizeof(edgeae_stream))" in (folder / HEADER_FILE).read_text()


def test_a_stride_from_the_manifest_and_scaling(scaled_export, tmp_path):
    """The scaled export's windows are 4 rows apart: the stream's default, as StreamScorer's."""
    folder = generate_c(scaled_export, tmp_path / "c").folder
    assert "#define EDGEAE_STRIDE 4 " in (folder / HEADER_FILE).read_text()
    exe = build(folder, tmp_path, STREAMER, "streamer")
    rows = np.load(scaled_export.parent / "series.npy")[:120].astype(np.float32)
    rows[50, 1] = np.nan
    _, used, windows = stream_in_c(exe, rows)
    assert used == 4 and [w[0] for w in windows] == list(range(0, 120 - 8 + 1, 4))
    assert [w[0] for w in windows if w[1] == "missing"] == [44, 48]
    check_against_python(scaled_export, windows, rows, 4)


def test_the_headers_example_compiles_as_written(seed_stream, tmp_path):
    """The 20-line main loop in edgeae_model.h, cut from the comment, compiles warning-free."""
    folder, _ = seed_stream
    header = (folder / HEADER_FILE).read_text()
    example = header[header.index(EXAMPLE_START) + len(EXAMPLE_START):header.index(EXAMPLE_END)]
    code = "\n".join(line[len(" *     "):] if line.startswith(" *     ") else "" for line in example.splitlines())
    assert 18 <= len(code.strip().splitlines()) <= 26 and "edgeae_stream_push(&stream, row, &score, &anomaly)" in code
    build(folder, tmp_path, code, "example", link=False)


def test_restart_and_a_stride_below_one(seed_stream, tmp_path):
    """init restarts a stream (the first window again after EDGEAE_TIMESTEPS rows); a stride set to 0 acts as 1."""
    folder, _ = seed_stream
    program = r"""
#include <stdio.h>
#include "edgeae_model.h"
static edgeae_stream s;
int main(void)
{
    float row[EDGEAE_FEATURES] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    double score;
    int anomaly, r, done = 0, count = 0;
    edgeae_stream_init(&s);
    for (r = 0; r < 12; r++) count += edgeae_stream_push(&s, row, &score, &anomaly);
    edgeae_stream_init(&s);
    s.stride = 0;
    for (r = 0; r < 9; r++) done += edgeae_stream_push(&s, row, &score, &anomaly);
    for (r = 0; r < 3; r++) done += edgeae_stream_push(&s, row, &score, &anomaly) == EDGEAE_STREAM_WINDOW;
    printf("%d %d\n", count, done);
    return 0;
}
"""
    exe = build(folder, tmp_path, program, "restart")
    assert subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout.split() == ["3", "3"]
