"""Writes the values table of the chart's README.md from the comments in its values.yaml.

Every key of values.yaml becomes a row: its dotted path, its default and the comment block right
above it (no blank line between). A mapping whose keys values.schema.json fixes
(``additionalProperties: false``, e.g. ``engineCache``) gets a row per key, and a row of its own only
when it has a comment; a free-form one (``resources``, ``securityContext``) is one row with the
whole mapping as its default. In a comment block, a line indented past the block's first
(``#   item``) and the line after such a list start new lines in the cell. Everything in README.md
above the marker line is hand-written and kept; everything below it is generated. tests/deploy
checks the file is up to date.

    .venv/bin/python deploy/tools/chart_readme.py          # rewrite
    .venv/bin/python deploy/tools/chart_readme.py --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "stream-infer"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
README = CHART / "README.md"
MARKER = "<!-- Below this line: generated from values.yaml by deploy/tools/chart_readme.py. -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"):(?:\s|$)")
_ITEM = re.compile(r"^(?P<indent> *)- ")
_MISSING = object()


class Row(NamedTuple):
    path: str
    default: Any
    description: str
    leaf: bool


def _lookup(values: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return _MISSING
        values = values[key]
    return values


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def _fixed_keys(schema: dict[str, Any], path: list[str]) -> bool:
    """Whether the schema lists the keys of the mapping at ``path`` (rather than leaving it free-form)."""
    node = schema
    for key in path:
        node = _resolve(schema, node).get("properties", {}).get(key)
        if node is None:
            return False
    node = _resolve(schema, node)
    return node.get("additionalProperties") is False and bool(node.get("properties"))


def _description(comments: list[str]) -> str:
    """The comment block as one cell: lines joined; a list (indented lines) kept one per line."""
    texts = [c[1:] for c in comments]  # drop "#"
    margins = [len(t) - len(t.lstrip()) for t in texts if t.strip()]
    base = min(margins, default=0)
    out = ""
    in_list = False
    for text in texts:
        body = text[base:]
        indented = body.startswith(" ")
        if out and (indented or in_list):
            out += "<br>" + body.strip()
        else:
            out += (" " if out else "") + body.strip()
        in_list = indented
    return out.strip()


def parse(text: str, schema: dict[str, Any]) -> list[Row]:
    """Rows in file order for every key of the values file ``text``."""
    values = yaml.safe_load(text) or {}
    rows: list[Row] = []
    stack: list[tuple[int, str | None]] = []  # (indent, key); None marks a list item
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        item = _ITEM.match(line)
        key = _KEY.match(line)
        if item or not key:
            # List items and flow/continuation lines: keys nested in them are no values of their own.
            if item:
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                stack.append((indent, None))
            comments = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = key["key"].strip('"')
        # Keys inside a list item, or inside a mapping shown whole, have no row of their own.
        hidden = any(k is None for _, k in stack)
        path = [k for _, k in stack if k is not None] + [name]
        described = _description(comments)
        comments = []
        default = _lookup(values, path)
        leaf = not (isinstance(default, dict) and default and _fixed_keys(schema, path))
        stack.append((indent, None if leaf else name))
        if hidden or default is _MISSING:
            continue
        if leaf or described:
            rows.append(Row(".".join(path), default, described, leaf))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    lines = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for row in rows:
        default = f"`{_cell(json.dumps(row.default))}`" if row.leaf else ""
        lines.append(f"| `{row.path}` | {default} | {_cell(row.description)} |")
    return "\n".join(lines) + "\n"


def render(readme: str, values: str, schema: dict[str, Any]) -> str:
    """``readme`` with everything below the marker regenerated from ``values`` (and its ``schema``)."""
    if MARKER not in readme:
        raise ValueError(f"{README.name} has no marker line {MARKER!r}")
    header = readme.split(MARKER, 1)[0]
    body = (
        "\n\n## Values\n\n"
        "Defaults of `values.yaml`; `values.schema.json` checks types and rejects unknown keys.\n\n"
        + table(parse(values, schema))
    )
    return header + MARKER + body


def main() -> int:
    fresh = render(README.read_text(), VALUES.read_text(), json.loads(SCHEMA.read_text()))
    if "--check" in sys.argv[1:]:
        if README.read_text() != fresh:
            print(f"{README} is stale: run .venv/bin/python deploy/tools/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
