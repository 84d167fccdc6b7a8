"""Stage 2: build TensorRT plans (FP32 and/or FP16) for this GPU and TensorRT version.

    python -m engines.build_trt artifacts/basicmotions-cnnlstm --precision fp16 fp32 --max-batch 4096

Plans land in ``artifact/trt/model.<precision>.trt<ver>.sm<cc>.plan``; a timing cache next to
them makes rebuilds fast. See ``stream_infer.backends.trt_build`` for how FP16 is made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_infer.backends.trt_build import BuildResult, TrtBuilder
from stream_infer.errors import StreamInferError


class PlanBuilder:
    def __init__(self, artifact: Path, precisions: list[str], max_batch: int, opt_batch: int) -> None:
        self.builder = TrtBuilder(artifact, max_batch=max_batch, opt_batch=opt_batch)
        self.precisions = precisions

    def run(self) -> list[BuildResult]:
        return [self.builder.build(p) for p in self.precisions]  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--precision", nargs="+", choices=["fp16", "fp32"], default=["fp16", "fp32"])
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--opt-batch", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        results = PlanBuilder(args.artifact, args.precision, args.max_batch, args.opt_batch).run()
    except StreamInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.path} ({r.precision}, {r.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
