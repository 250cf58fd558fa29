"""Issue 28's bar, with default flags on real series: a spike and a flat stretch injected into the
trending, gappy Mauna Loa CO2 record are flagged and every gap is accounted for; a stationary
series' normal stretch is rarely flagged. Full default training (up to 300 epochs), so marked slow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeae.data.series import load_series
from edgeae.data.windows import make_windows
from edgeae.exporter import publish
from edgeae.exporter.options import ExportOptions
from edgeae.runtime import load
from edgeae.trainer import training as trainer

pytestmark = pytest.mark.slow

CO2 = Path(__file__).parent / "data" / "co2_mauna_loa_weekly.csv"


def test_co2_with_default_flags_flags_a_spike_and_a_flat_stretch_and_accounts_for_every_gap(tmp_path):
    config = trainer.config_for(CO2)  # the defaults `edgeae pipeline --data co2.csv` applies
    out, _, training = publish.run_pipeline(config, tmp_path / "co2", CO2, options=ExportOptions(providers="cpu"))
    assert training.data["time_axis"] == ["date"] and training.preprocessing.features == 1
    assert training.preprocessing.level == "remove"  # 81% of the held-out windows lie above the training's
    model = load(out, "cpu")

    values = load_series(CO2, missing_ok=True).values[:, 0].copy()
    gaps = np.isnan(values)
    assert gaps.sum() == 59
    held_out = len(values) - round(len(values) * config.validation_fraction)
    spike, flat = held_out + 100, slice(held_out + 200, held_out + 230)
    assert not gaps[spike] and not gaps[flat].any()
    values[spike] += 40.0  # ppm: nearly the whole 1958-1992 range in one week
    values[flat] = values[flat.start]  # thirty weeks stuck at one reading
    windows = make_windows(values[:, None], model.timesteps)
    result = model.score(windows)

    starts = np.arange(len(windows))
    holds_gap = make_windows(gaps[:, None].astype(np.int8), model.timesteps).any(axis=(1, 2))
    assert np.array_equal(result.missing, holds_gap)  # every window with a gap is reported, none dropped
    assert not result.flags[result.missing].any() and np.isnan(result.scores[result.missing]).all()
    over_spike = (starts <= spike) & (starts > spike - model.timesteps)
    over_flat = (starts < flat.stop) & (starts > flat.start - model.timesteps)
    assert result.flags[over_spike & ~result.missing].all()
    assert result.flags[over_flat].any()
    normal = ~over_spike & ~over_flat & ~result.missing & (starts >= held_out)
    assert result.flags[normal].mean() <= 0.03  # measured 1.0% (AMD EPYC Zen 4); the quantile aims at 1%


def test_a_stationary_series_normal_stretch_is_rarely_flagged(tmp_path):
    """InternalBleeding16 (UCR 135, as aeon ships it): trained on its 1,200 normal rows with default
    flags, then scored on the test file's stretch before its one labelled anomaly (rows 4187-4198)."""
    aeon = pytest.importorskip("aeon")
    folder = Path(aeon.__file__).parent / "datasets" / "data" / "KDD-TSAD_135"
    train = folder / "135_UCR_Anomaly_InternalBleeding16_TRAIN.csv"
    test = folder / "135_UCR_Anomaly_InternalBleeding16_TEST.csv"
    config = trainer.config_for(train, ("value",))
    out, _, training = publish.run_pipeline(config, tmp_path / "bleeding", train, ("value",),
                                            options=ExportOptions(providers="cpu"))
    assert training.preprocessing.level == "keep"  # its held-out windows lie at the training's levels
    model = load(out, "cpu")
    normal = load_series(test, ("value",)).values[:4100]
    flags = model.score(make_windows(normal, model.timesteps)).flags
    assert flags.mean() <= 0.03
