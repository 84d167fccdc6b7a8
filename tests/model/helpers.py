"""Write real BasicMotions recordings out in the user data format (docs/data-format.md)."""

from __future__ import annotations

import csv
from pathlib import Path

from stream_infer.model.datasets import Recordings, basic_motions


def write_user_dataset(root: Path, per_class: int = 4, with_split: bool = True) -> Recordings:
    """``per_class`` train and ``per_class`` test recordings of each class as CSV files, plus
    labels.csv (with a subject column for --split-by)."""
    recs = basic_motions()
    root.mkdir(parents=True, exist_ok=True)
    chosen: list[int] = []
    for split in ("train", "test"):
        for label in recs.classes:
            idx = [i for i in range(len(recs)) if recs.split[i] == split and recs.labels[i] == label]
            chosen += idx[:per_class]
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recording", "label", "subject", *(["split"] if with_split else [])])
        for n, i in enumerate(chosen):
            name = f"rec{n:03d}"
            with (root / f"{name}.csv").open("w", newline="") as rf:
                rw = csv.writer(rf)
                rw.writerow(recs.channels)
                rw.writerows(recs.values[i].tolist())
            w.writerow([name, recs.labels[i], f"s{n % 5}", *([recs.split[i]] if with_split else [])])
    return Recordings(
        [recs.values[i] for i in chosen],
        [recs.labels[i] for i in chosen],
        [f"rec{n:03d}" for n in range(len(chosen))],
        [recs.split[i] for i in chosen],
        recs.channels,
    )
