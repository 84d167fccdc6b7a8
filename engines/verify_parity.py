"""Stage 3: run two backends on random and real inputs and report the max |diff| per output.

    python -m engines.verify_parity artifacts/basicmotions-cnnlstm --a torch --b onnxruntime
    python -m engines.verify_parity ART --a torch --a-device cuda:0 --b tensorrt --b-device cuda:0 --tol 2e-2

Exit code 1 when any difference exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_infer.backends import load_engine
from stream_infer.backends.parity import ParityReport, compare
from stream_infer.errors import StreamInferError
from stream_infer.model.card import load_card


class ParityCheck:
    def __init__(self, artifact: Path, a: str, a_device: str, b: str, b_device: str) -> None:
        self.card = load_card(artifact)
        self.a = load_engine(artifact, a, a_device)  # type: ignore[arg-type]
        self.b = load_engine(artifact, b, b_device)  # type: ignore[arg-type]

    def run(self, batches: tuple[int, ...]) -> list[ParityReport]:
        try:
            return compare(self.a, self.b, self.card, batches)
        finally:
            self.a.close()
            self.b.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--a", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--a-device", default="cpu")
    parser.add_argument("--b", default="onnxruntime", choices=["torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--b-device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 7, 256])
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    try:
        reports = ParityCheck(args.artifact, args.a, args.a_device, args.b, args.b_device).run(
            tuple(args.batches)
        )
    except StreamInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.a}@{args.a_device} vs {args.b}@{args.b_device}")
    for r in reports:
        diffs = "  ".join(f"{k}={v:.2e}" for k, v in r.max_abs_diff.items())
        print(f"  {r.inputs:6s} batch {r.batch:5d}  {diffs}  {'ok' if r.worst <= args.tol else 'FAIL'}")
    return 0 if all(r.worst <= args.tol for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
