"""Every Python block of the docs runs as a test (sybil), in a scratch folder holding a copy of the
committed export and the small data files the pages name (readings.csv, sensors.csv, data/ ...).

A block preceded by `<!-- slow: reason -->` (it trains or exports) is marked `slow`: the README's
test command runs it, `-m "not slow"` leaves it out. `<!-- skip: next "reason" -->` is sybil's own
way to show a block without running it; the pages use none today.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.test_docs import make_workdir  # noqa: E402  (one scratch folder recipe for pages and README)

SLOW_MARK = re.compile(r"<!--\s*slow:\s*\S.*?-->\s*$")


@pytest.fixture(scope="session")
def docs_data(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("docs-data"))


@pytest.fixture()
def docs_workdir(docs_data, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the scratch folder for each block, as the working directory."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(docs_data, work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGEAE_QUIET_UNSIGNED", "1")  # the committed export is unsigned: no note per block
    return work


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["*.md"],
    fixtures=["docs_workdir"],
).pytest()


def _marked_slow(item) -> bool:
    example = getattr(item, "example", None)
    if example is None:
        return False
    before = example.document.text[:example.start].rstrip().splitlines()
    return bool(before) and bool(SLOW_MARK.search(before[-1]))


def pytest_collection_modifyitems(items):
    for item in items:
        if _marked_slow(item):
            item.add_marker(pytest.mark.slow)
