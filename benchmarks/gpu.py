"""GPU engine benchmark: TensorRT FP32/FP16 vs torch CUDA (eager and CUDA graphs) at batch
1 ... 4096 on the BasicMotions model, after checking TensorRT's parity with ONNX Runtime.

    python -m benchmarks.gpu [--artifacts artifacts] [--quick]

Steps, in order: train/reuse the model -> build the FP32 and FP16 plans for this GPU
(``TrtBuilder``; a timing cache makes rebuilds fast) -> parity of each plan with ONNX Runtime
(CPU, the reference) on random and real inputs with random carried state -> time every engine at
every batch size with the inputs and state already on the GPU (``infer`` returns after the
device finished: TensorRT synchronises its stream, torch is synchronised here) -> write
``docs/benchmarks/gpu.json`` and ``gpu-throughput.png`` with the GPU's name. Without the
``tensorrt`` package the TensorRT steps are skipped with a message and the torch rows still run.
Needs a CUDA GPU; takes a few minutes (most of it the two TensorRT builds, on a cold cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
# Largest |diff| of y, hn, cn against ONNX Runtime (FP32 on CPU): FP16 runs the encoder and
# head in half precision (the LSTM stays FP32), so its bound is looser.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class GpuBench:
    def __init__(self, artifact: Path, batches: tuple[int, ...], repeats: int, min_time_s: float) -> None:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; torch sees none")
        from stream_infer.model.card import load_card

        self.torch = torch
        self.artifact = artifact
        self.card = load_card(artifact)
        self.batches = batches
        self.repeats = repeats
        self.min_time_s = min_time_s
        self.device = "cuda:0"
        self.gpu = torch.cuda.get_device_name(0)
        self.trt_version: str | None = None
        self.parity: list[dict[str, Any]] = []
        self.build_s: dict[str, float] = {}
        self.skipped: list[str] = []

    # --- engines ---

    def engines(self) -> list[tuple[str, Any]]:
        from stream_infer.backends.torch_backend import TorchEngine

        max_batch = max(self.batches)
        out: list[tuple[str, Any]] = [
            ("torch CUDA (eager)", TorchEngine(self.artifact, self.device, max_batch=max_batch)),
            (
                "torch CUDA graphs",
                TorchEngine(self.artifact, self.device, max_batch=max_batch, cuda_graphs=True),
            ),
        ]
        try:
            import tensorrt
        except ImportError:
            self.skipped.append(
                "TensorRT: the tensorrt package is not installed (pip install 'stream-infer[gpu]')"
            )
            print(f"skipping TensorRT: {self.skipped[-1]}", file=sys.stderr)
            return out
        self.trt_version = tensorrt.__version__
        from stream_infer.backends.tensorrt_backend import TrtEngine
        from stream_infer.backends.trt_build import TrtBuilder

        builder = TrtBuilder(self.artifact, max_batch=max_batch, opt_batch=min(256, max_batch))
        for precision in ("fp32", "fp16"):
            print(f"building the TensorRT {precision} plan ...", flush=True)
            result = builder.build(precision)  # type: ignore[arg-type]
            self.build_s[precision] = round(result.seconds, 1)
            eng = TrtEngine(self.artifact, self.device, max_batch=max_batch, precision=precision)
            self.check_parity(precision, eng)
            out.append((f"TensorRT {precision.upper()}", eng))
        return out

    def check_parity(self, precision: str, engine: Any) -> None:
        from stream_infer.backends.onnxruntime_backend import OrtEngine
        from stream_infer.backends.parity import compare

        ref = OrtEngine(self.artifact, "cpu")
        try:
            reports = compare(engine, ref, self.card, batches=(1, 7, 256))
        finally:
            ref.close()
        worst = max(r.worst for r in reports)
        ok = worst <= TOLERANCE[precision]
        self.parity.append(
            {
                "engine": f"TensorRT {precision}",
                "reference": "onnxruntime (CPU)",
                "max_abs_diff": worst,
                "tolerance": TOLERANCE[precision],
                "ok": ok,
                "per_case": [
                    {"inputs": r.inputs, "batch": r.batch, **{k: float(v) for k, v in r.max_abs_diff.items()}}
                    for r in reports
                ],
            }
        )
        print(
            f"parity TensorRT {precision} vs onnxruntime: max |diff| {worst:.2e} (tolerance {TOLERANCE[precision]:g})"
        )

    # --- timing ---

    def time_engine(self, engine: Any, batch: int) -> list[float]:
        torch = self.torch
        layers, hidden = self.card.state_shape
        gen = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(batch, *self.card.input_shape, device=self.device, generator=gen)
        h = 0.5 * torch.randn(layers, batch, hidden, device=self.device, generator=gen)
        c = 0.5 * torch.randn(layers, batch, hidden, device=self.device, generator=gen)

        def call() -> None:
            engine.infer(x, h, c)
            torch.cuda.synchronize(self.device)

        for _ in range(5):  # warm-up: cuDNN autotuning, CUDA graph capture for this bucket
            call()
        rates = []
        for _ in range(self.repeats):
            n = 0
            t0 = time.perf_counter()
            while True:
                call()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= self.min_time_s:
                    break
            rates.append(batch * n / dt)
        return rates

    def run(self) -> dict[str, Any]:
        engines = self.engines()
        rows = []
        for name, eng in engines:
            for b in self.batches:
                rates = self.time_engine(eng, b)
                med = float(np.median(rates))
                rows.append(
                    {
                        "engine": name,
                        "batch": b,
                        "predictions/s": med,
                        "us/call": 1e6 * b / med,
                        "spread": [min(rates), max(rates)],
                    }
                )
                print(f"{name:22s} batch {b:5d}: {med:14,.0f} predictions/s  ({1e6 * b / med:8.1f} us/call)")
            eng.close()
        return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=None, help="model root (default: artifacts/)")
    p.add_argument("--quick", action="store_true", help="batches 1, 64, 4096; one repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="default: docs/benchmarks/")
    a = p.parse_args(argv)
    import torch

    from benchmarks.common import ARTIFACTS, OUT_DIR, Report, figure, save
    from stream_infer.model.zoo import ensure_model

    out_dir = a.out or OUT_DIR
    batches = (1, 64, 4096) if a.quick else BATCHES
    artifact = ensure_model("sensor", a.artifacts or ARTIFACTS)
    bench = GpuBench(artifact, batches, 1 if a.quick else a.repeats, 0.1 if a.quick else 0.3)
    result = bench.run()
    report = Report(
        "gpu",
        {
            "gpu": bench.gpu,
            "cuda": torch.version.cuda,
            "tensorrt": bench.trt_version,
            "model": bench.card.model_id,
            "batches": list(batches),
            "repeats": bench.repeats,
            "trt_build_s": bench.build_s,
            "parity": bench.parity,
            "skipped": bench.skipped,
        },
        rows=result["rows"],
        columns=["engine", "batch", "predictions/s", "us/call"],
    )
    by = {(r["engine"], r["batch"]): r["predictions/s"] for r in result["rows"]}
    for b in batches:
        base = by.get(("torch CUDA (eager)", b))
        for name in ("torch CUDA graphs", "TensorRT FP32", "TensorRT FP16"):
            if base and (name, b) in by:
                report.ratios[f"{name} / torch eager (b={b})"] = by[(name, b)] / base
    report.notes += [f"skipped: {s}" for s in bench.skipped]
    fig, ax, path = figure(report, "throughput", out_dir)
    for name in dict.fromkeys(r["engine"] for r in result["rows"]):
        pts = [(r["batch"], r["predictions/s"]) for r in result["rows"] if r["engine"] == name]
        ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("predictions / s (median)")
    ax.set_title(f"GPU engines on {bench.gpu}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(report, fig, path)
    print(report.summary())
    print(f"wrote {report.write(out_dir)}")
    failed = [p["engine"] for p in bench.parity if not p["ok"]]
    if failed:
        print(f"parity FAILED for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
