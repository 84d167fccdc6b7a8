"""Writes the `config` part of the chart's values.schema.json from the service's Settings.

`config` in the chart's values is the service's settings file, so its schema is generated from
``stream_infer.config.Settings`` (pydantic) rather than kept by hand: unknown keys, wrong types,
enums and bounds then fail at `helm install` exactly as they would at service start. The rest of
values.schema.json is hand-written; only ``properties.config`` and the ``$defs`` that pydantic
names (``*Settings``) are replaced. tests/deploy checks the file is up to date.

    .venv/bin/python deploy/tools/chart_schema.py          # rewrite
    .venv/bin/python deploy/tools/chart_schema.py --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[2] / "helm" / "stream-infer" / "values.schema.json"


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def render(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``properties.config`` and the settings ``$defs`` regenerated."""
    from stream_infer.config import Settings

    generated = _strip_titles(Settings.model_json_schema())
    defs = generated.pop("$defs", {})
    generated["description"] = (
        "The service's settings file (stream_infer/config.py), rendered into a ConfigMap."
    )
    out = dict(schema)
    out["properties"] = {**schema["properties"], "config": generated}
    kept = {k: v for k, v in schema.get("$defs", {}).items() if not k.endswith("Settings")}
    out["$defs"] = {**kept, **dict(sorted(defs.items()))}
    return out


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    current = json.loads(SCHEMA.read_text())
    fresh = dumps(render(current))
    if "--check" in sys.argv[1:]:
        if SCHEMA.read_text() != fresh:
            print(f"{SCHEMA} is stale: run .venv/bin/python deploy/tools/chart_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(fresh)
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
