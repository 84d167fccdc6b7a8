"""The forecaster's training: validation reports and never changes the model that ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream_infer.errors import DataError
from stream_infer.model.datasets import Recordings
from stream_infer.model.forecast import fit_forecaster


def _series() -> Recordings:
    """A rising, seasonal, noisy series: 300 training samples, then 120 test samples (their
    recording starts a window early, as CO2's does)."""
    t = np.arange(420, dtype=np.float32)
    rng = np.random.default_rng(7)
    v = (0.01 * t + np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=t.size)).astype(np.float32)[:, None]
    return Recordings(
        values=[v[:300], v[300 - 24 :]],
        labels=["x", "x"],
        names=["train", "test"],
        split=["train", "test"],
        channels=["v"],
        dataset="synthetic",
    )


SMALL = dict(targets=["v"], horizon=2, window=24, hidden=8, epochs=2, chunk=16, batch=4)


def test_validation_never_changes_the_shipped_forecaster() -> None:
    """With validation the model is the one a run without it gives (same seed), weight for
    weight: trained on every training hop for the whole schedule; validation only reports."""
    recs = _series()
    model, training, accuracy = fit_forecaster(recs, val_fraction=0.2, **SMALL)  # type: ignore[arg-type]
    plain, plain_training, plain_accuracy = fit_forecaster(recs, val_fraction=0.0, **SMALL)  # type: ignore[arg-type]
    a, b = model.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert accuracy == plain_accuracy and accuracy["n"] == 144 - 24 - 2 + 1
    val = training["validation_mae"]
    assert val["fraction"] == 0.2 and val["n_val"] == int((300 - 24 - 2 + 1) * 0.2)
    assert val["epochs"] == 2 and len(val["per_epoch"]) == 2 and 1 <= val["best_epoch"] <= 2
    assert val["mae"] == val["per_epoch"][-1] and val["best_mae"] == min(val["per_epoch"])
    assert val["mae_noise"] >= 0 and "report only" in val["used_for"]
    assert "validation_mae" not in plain_training
    assert {k: v for k, v in training.items() if k != "validation_mae"} == plain_training


def test_the_forecaster_is_deterministic_given_the_seed() -> None:
    recs = _series()
    first, _, _ = fit_forecaster(recs, val_fraction=0.0, seed=3, **SMALL)  # type: ignore[arg-type]
    again, _, _ = fit_forecaster(recs, val_fraction=0.0, seed=3, **SMALL)  # type: ignore[arg-type]
    other, _, _ = fit_forecaster(recs, val_fraction=0.0, seed=4, **SMALL)  # type: ignore[arg-type]
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_validation_fraction_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        fit_forecaster(_series(), val_fraction=1.0, **SMALL)  # type: ignore[arg-type]


def test_the_train_summary_line_says_what_the_forecasters_validation_measured() -> None:
    """The last line of ``train`` reports the hold-out MAE, its best epoch and its noise."""
    from types import SimpleNamespace

    from stream_infer.cli import _summary

    _, training, accuracy = fit_forecaster(_series(), val_fraction=0.2, **SMALL)  # type: ignore[arg-type]
    card = SimpleNamespace(model_id="co2@1+x", head_kind="forecast", accuracy=accuracy, training=training)
    line = _summary(card, Path("out"))
    val = training["validation_mae"]
    assert "latest 20% of each training recording" in line
    assert f"MAE {val['mae']:.4g}" in line and f"at epoch {val['best_epoch']} of 2" in line
