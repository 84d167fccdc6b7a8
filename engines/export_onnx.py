"""Stage 1: export ``weights.pt`` to ``model.onnx`` (one LSTM step, dynamic batch) and check it.

python -m engines.export_onnx artifacts/basicmotions-cnnlstm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_infer.errors import StreamInferError
from stream_infer.model.export import ExportResult, export_onnx


class OnnxExporter:
    def __init__(self, artifact: Path, opset: int = 18) -> None:
        self.artifact = artifact
        self.opset = opset

    def run(self) -> ExportResult:
        return export_onnx(self.artifact, opset=self.opset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path, help="artifact directory (model.json, weights.pt)")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    try:
        result = OnnxExporter(args.artifact, args.opset).run()
    except StreamInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.path}: {result.exporter} exporter, ops {', '.join(result.ops)}, "
        f"onnxruntime vs torch max |diff| {result.max_abs_diff:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
