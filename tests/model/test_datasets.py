from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_infer.errors import DataError
from stream_infer.model.datasets import (
    basic_motions,
    hop_windows,
    lfw_frames,
    load_recordings,
    video_clips,
    video_frames,
)
from tests.model.helpers import write_user_dataset


def test_basic_motions_official_split() -> None:
    recs = basic_motions()
    assert len(recs) == 80 and recs.split.count("train") == 40 and recs.split.count("test") == 40
    assert recs.values[0].shape == (100, 6) and recs.values[0].dtype == np.float32
    assert recs.classes == ["Badminton", "Running", "Standing", "Walking"]


def test_hop_windows_are_the_windows_the_service_scores() -> None:
    values = np.arange(100 * 2, dtype=np.float32).reshape(100, 2)
    w = hop_windows(values, 20, 10)
    assert w.shape == (9, 20, 2)
    np.testing.assert_array_equal(w[0], values[0:20])
    np.testing.assert_array_equal(w[-1], values[80:100])
    assert hop_windows(values[:19], 20, 10).shape == (0, 20, 2)
    assert hop_windows(values, 20, 10, offset=5).shape == (8, 20, 2)


def test_lfw_split_is_seeded_and_stratified() -> None:
    a, b = lfw_frames(seed=3), lfw_frames(seed=3)
    assert a.split == b.split and a.split != lfw_frames(seed=4).split
    assert a.images.shape == (200, 1, 25, 25) and a.images.max() > 200
    test_labels = [lab for lab, s in zip(a.labels, a.split, strict=True) if s == "test"]
    assert test_labels.count("face") == test_labels.count("non-face") == 25


def test_video_frames_decode_shipped_clip() -> None:
    assert "bigbuckbunny.mp4" in video_clips()
    gray = video_frames("bigbuckbunny.mp4", size=(25, 25), n=5)
    assert gray.shape == (5, 25, 25) and gray.dtype == np.uint8 and gray.std() > 0
    rgb = video_frames("bigbuckbunny.mp4", size=(32, 48), n=2, gray=False)
    assert rgb.shape == (2, 32, 48, 3)
    with pytest.raises(DataError, match="nope.mp4"):
        video_frames("nope.mp4")


def test_user_csv_dataset_round_trips(tmp_path: Path) -> None:
    written = write_user_dataset(tmp_path, per_class=2)
    recs = load_recordings(tmp_path)
    assert recs.names == written.names and recs.labels == written.labels and recs.split == written.split
    assert recs.channels == written.channels
    np.testing.assert_allclose(recs.values[3], written.values[3], rtol=1e-6)


def test_user_npz_recording(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", values=np.ones((30, 3), np.float32))
    np.savez(tmp_path / "b.npz", values=np.zeros((25, 3), np.float32))
    (tmp_path / "labels.csv").write_text("recording,label,split\na,x,train\nb.npz,y,test\n")
    recs = load_recordings(tmp_path)
    assert [v.shape for v in recs.values] == [(30, 3), (25, 3)] and recs.channels == ["ch0", "ch1", "ch2"]


def test_split_by_holds_out_whole_groups(tmp_path: Path) -> None:
    write_user_dataset(tmp_path, per_class=3, with_split=False)
    recs = load_recordings(tmp_path, split_by="subject", seed=1)
    subjects = [f"s{n % 5}" for n in range(len(recs))]
    test_groups = {s for s, sp in zip(subjects, recs.split, strict=True) if sp == "test"}
    train_groups = {s for s, sp in zip(subjects, recs.split, strict=True) if sp == "train"}
    assert test_groups and train_groups and not test_groups & train_groups
    assert "subject" in recs.split_rule


@pytest.mark.parametrize(
    ("labels", "files", "match"),
    [
        (None, {"a.csv": "x,y\n1,2\n"}, r"labels\.csv: missing"),
        ("recording,lab\na,x\n", {"a.csv": "x,y\n1,2\n"}, r"labels\.csv: no 'label' column"),
        ("recording,label\nb,x\n", {"a.csv": "x,y\n1,2\n"}, r"recording 'b' has no file"),
        ("recording,label\na,x\n", {"a.csv": "x,y\n1,2\n3\n"}, r"a\.csv: line 3: 1 fields"),
        ("recording,label\na,x\n", {"a.csv": "x,y\n1,abc\n"}, r"a\.csv: line 2: not a number"),
        ("recording,label\na,x\n", {"a.csv": "1,2\n3,4\n"}, r"a\.csv: first row must be a header"),
        (
            "recording,label\na,x\nb,y\n",
            {"a.csv": "x,y\n1,2\n", "b.csv": "x,y,z\n1,2,3\n"},
            r"b\.csv: 3 channels, but a\.csv has 2",
        ),
        ("recording,label,split\na,x,dev\n", {"a.csv": "x,y\n1,2\n"}, r"split must be train or test"),
        ("recording,label\na,x\n", {"a.csv": "x,y\n1,nan\n"}, r"a\.csv: non-finite value"),
    ],
)
def test_bad_user_data_names_the_file_and_problem(
    tmp_path: Path, labels: str | None, files: dict[str, str], match: str
) -> None:
    if labels is not None:
        (tmp_path / "labels.csv").write_text(labels)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        load_recordings(tmp_path)


def test_unknown_split_by_column(tmp_path: Path) -> None:
    write_user_dataset(tmp_path, per_class=1, with_split=False)
    with pytest.raises(DataError, match=r"labels\.csv: unknown --split-by column 'patient'"):
        load_recordings(tmp_path, split_by="patient")
