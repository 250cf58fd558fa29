"""The documentation cannot rot: the site builds with `mkdocs build --strict` (no broken link,
anchor, reference or nav entry), the exit-code table is generated from the code, every `edgeae`
command line in the docs and the README either runs here or says why not, the README stays short
and points at each docs section, its Python example runs, and the built site is looked at in
headless Chromium (screenshots in test-output/).

The docs' Python blocks run through sybil (docs/conftest.py), in the scratch folder make_workdir builds.
"""
from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import serve_folder

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
EXPORTED = REPO / "exported"
NODE = REPO / "node"
SCREENSHOTS = REPO / "test-output"
README_LIMIT = 8192
# The two commands: the pipeline that regenerates exported/, and the test command (.ci/run ends with it).
PIPELINE_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -e "
                    "'.[train,runtimes]' && npm ci --prefix node --ignore-scripts && .venv/bin/edgeae pipeline --force "
                    "&& .venv/bin/edgeae targets")
TEST_COMMAND = "bash .ci/run"
SECTIONS = ("quickstart/device.md", "quickstart/workstation.md", "how-to/index.md", "reference/index.md",
            "explanation/index.md", "benchmarks.md")

RUN_MARK = re.compile(r"^<!--\s*run\s*-->$")
NOT_RUN_MARK = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_LANGUAGES = {"bash", "console", "shell", "sh"}
EDGEAE_LINE = re.compile(r"(^|[\s/;&|(])edgeae\s")


# --- the scratch folder the examples run in ------------------------------------------------------------------

def _write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    path.write_text(",".join(header) + "\n" + "".join(",".join(f"{v:.6g}" for v in row) + "\n" for row in rows))


def make_workdir(folder: Path) -> Path:
    """What the docs' examples read: a copy of the committed export and small data files named as the
    pages name them. Seed-shaped files have the seed's 5 features; sensors.csv is a 2-sensor series."""
    shutil.copytree(EXPORTED, folder / "exported")
    seed = np.arange(50, dtype=np.float64).reshape(10, 5) / 50
    drift = seed + np.linspace(0, 0.3, 10)[:, None]
    spike = seed.copy()
    spike[4, 2] = 3.0
    readings = np.concatenate([seed, seed, drift, spike, seed])
    features = ["a", "b", "c", "d", "e"]
    _write_csv(folder / "readings.csv", features, readings)
    labels = np.zeros(len(readings))
    labels[34] = 1  # the spike's row
    _write_csv(folder / "labelled.csv", [*features, "is_anomaly"], np.column_stack([readings, labels]))
    rng = np.random.default_rng(0)
    rows = np.arange(320)  # 29 validation windows of 32 rows: enough to calibrate a threshold (20)
    sensors = np.column_stack([rows, 20 + np.sin(rows / 5) + rng.normal(0, 0.05, rows.size),
                               3 + np.cos(rows / 7) + rng.normal(0, 0.05, rows.size)])
    _write_csv(folder / "sensors.csv", ["time", "temp", "pressure"], sensors)
    wave = (np.sin(np.arange(300)[:, None] / 6 + np.arange(5)) + 1) / 2
    _write_csv(folder / "train.csv", features, wave[:200] + rng.normal(0, 0.01, (200, 5)))
    _write_csv(folder / "normal.csv", features, wave[200:] + rng.normal(0, 0.01, (100, 5)))
    shutil.copy(EXPORTED / "model.keras", folder / "my_model.keras")
    with contextlib.suppress(ImportError):
        import pandas as pd

        (folder / "data").mkdir()
        for part, machines in enumerate((("m1", "m2"), ("m3",))):
            frames = []
            for machine in machines:
                steps = np.arange(40)
                values = (np.sin(steps[:, None] / 4 + np.arange(5)) + 1) / 2
                frame = pd.DataFrame(values, columns=features)
                frame.insert(0, "step", steps)
                frame.insert(0, "machine", machine)
                frames.append(frame)
            pd.concat(frames).to_parquet(folder / "data" / f"part{part}.parquet", index=False)
    return folder


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    folder = make_workdir(tmp_path / "work")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("EDGEAE_QUIET_UNSIGNED", "1")
    return folder


def html_text(fragment: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


# --- the site builds, strictly ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_the_site_builds_strictly_with_every_section(site):
    for page in ("index.html", "quickstart/device/index.html", "how-to/index.html", "reference/cli/index.html",
                 "reference/api/index.html", "explanation/parity/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli/index.html").read_text()
    for command in ("edgeae score", "edgeae export", "edgeae fleet score", "edgeae c-bench"):
        assert command in cli, f"{command} is missing from the generated command reference"
    api = (site / "reference/api/index.html").read_text()
    for name in ("edgeae.runtime.loading.load", "edgeae.runtime.scoring.EdgeModel", "edgeae.exporter.publish.export"):
        assert f'id="{name}"' in api, name


def test_the_exit_code_table_is_generated_from_the_code(site):
    from edgeae.contract.errors import EXIT_CODES

    html = (site / "reference/exit-codes/index.html").read_text()
    cells = re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td>(.*?)</td>\s*</tr>", html, re.S)
    shown = {int(code): html_text(text) for code, text in cells}
    assert shown == {code: meaning.replace("`", "") for code, meaning in EXIT_CODES.items()}


# --- command lines: run here, or marked with the reason -----------------------------------------------------

def _shell_blocks(path: Path):
    """(language, code, the non-blank line before the fence) for each fenced shell block."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        if match.group(1) not in SHELL_LANGUAGES:
            continue
        before = text[:match.start()].rstrip().splitlines()
        yield match.group(2), before[-1].strip() if before else ""


def _command_lines(code: str) -> list[str]:
    lines, current = [], ""
    for raw in code.splitlines():
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            lines.append(current.strip())
        current = ""
    return lines


def _documents() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _run_blocks() -> list[tuple[str, list[str]]]:
    """(where, its command lines) for each block marked <!-- run -->; its lines run in order, in one folder."""
    found = []
    for path in _documents():
        text = path.read_text()
        for code, mark in _shell_blocks(path):
            if RUN_MARK.match(mark):
                line = text[:text.index(code)].count("\n")
                found.append((f"{path.relative_to(REPO)}:{line}", _command_lines(code)))
    return found


def test_every_edgeae_command_line_runs_here_or_says_why_not():
    unmarked = []
    for path in _documents():
        for code, mark in _shell_blocks(path):
            commands = [line for line in _command_lines(code) if EDGEAE_LINE.search(line)]
            if not commands:
                continue
            if RUN_MARK.match(mark):
                assert all(line.startswith("edgeae ") for line in _command_lines(code)), \
                    f"{path.name}: a block marked run holds only edgeae lines: {code}"
            elif not NOT_RUN_MARK.match(mark):
                unmarked.append(f"{path.relative_to(REPO)}: {commands[0]}")
    assert not unmarked, ("precede each block with <!-- run --> (tests/test_docs.py runs it) or "
                          "<!-- not run: reason -->:\n" + "\n".join(unmarked))
    assert len(_run_blocks()) >= 5


def test_every_code_block_names_a_language_the_checks_know():
    """A Python block spelt `py` or left unnamed would escape sybil, a shell one the command check."""
    known = {"python", "text", "json", "js", "c", *SHELL_LANGUAGES}
    for path in _documents():
        for match in FENCE.finditer(path.read_text()):
            assert match.group(1) in known, f"{path.relative_to(REPO)}: a ```{match.group(1)} block"


@pytest.mark.parametrize("lines", [lines for _, lines in _run_blocks()], ids=[where for where, _ in _run_blocks()])
def test_a_block_marked_run_runs(lines, workdir):
    from click.testing import CliRunner

    from edgeae.cli import main

    for line in lines:
        args = shlex.split(line, comments=True)
        assert args[0] == "edgeae"
        result = CliRunner().invoke(main, args[1:], catch_exceptions=False)
        assert result.exit_code == 0, (line, result.output[-2000:])


# --- the README --------------------------------------------------------------------------------------------

def test_the_readme_is_short_and_points_at_each_docs_section():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; keep it at most {README_LIMIT} and move detail to docs/"
    text = README.read_text()
    for section in SECTIONS:
        assert f"docs/{section}" in text, f"README.md does not link docs/{section}"
        assert (DOCS / section).is_file(), section
    assert "mkdocs serve" in text


def test_the_readme_keeps_the_two_commands_true():
    text = README.read_text()
    assert PIPELINE_COMMAND in text and TEST_COMMAND in text
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci
    assert "edgeae pipeline --force" in PIPELINE_COMMAND  # the pipeline command regenerates exported/


def test_the_readme_python_example_runs(workdir, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "README.md has no Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


# --- a reader's look, in headless Chromium --------------------------------------------------------------------


SHOOT = """
import { chromium } from "playwright-core";
const [base, ...pages] = process.argv.slice(1);
const browser = await chromium.launch({ executablePath: process.env.EDGEAE_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"] });
const seen = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  for (let i = 0; i < pages.length; i += 2) {
    const response = await page.goto(base + pages[i], { waitUntil: "load" });
    await page.screenshot({ path: pages[i + 1], fullPage: false });
    seen.push({ path: pages[i], status: response.status(), title: await page.title(),
                h1: await page.textContent("article h1"), text: await page.textContent("article") });
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen));
"""


def test_a_reader_sees_the_quickstart_and_the_command_reference(site):
    import json

    chromium = shutil.which("chromium")
    if chromium is None or not (NODE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("Debian's chromium and `npm ci --prefix node` are needed (.ci/run installs them)")
    SCREENSHOTS.mkdir(exist_ok=True)
    shots = {"/quickstart/device/": SCREENSHOTS / "docs_quickstart_device.png",
             "/reference/cli/": SCREENSHOTS / "docs_reference_cli.png"}
    for shot in shots.values():
        shot.unlink(missing_ok=True)
    with serve_folder(site) as base:
        proc = subprocess.run(["node", "--input-type=module", "-e", SHOOT, base,
                               *[str(x) for pair in shots.items() for x in pair]],
                              cwd=NODE, capture_output=True, text=True, timeout=120,
                              env={"EDGEAE_CHROMIUM": chromium, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {page["path"]: page for page in json.loads(proc.stdout)}
    device, cli = seen["/quickstart/device/"], seen["/reference/cli/"]
    assert device["status"] == 200 and device["h1"].strip().startswith("Quickstart: a device")
    assert "edgeae score exported readings.csv" in device["text"]
    assert cli["status"] == 200 and cli["h1"].strip().startswith("Commands")
    assert "edgeae fleet score" in cli["text"] and "--json" in cli["text"]
    for shot in shots.values():
        assert shot.stat().st_size > 10_000, shot
        print(f"screenshot: {shot.relative_to(REPO)}")
