"""One owner for an entity's life: outside the state package's own tests, nothing touches the
entity store's private members (the service, ``evaluate`` and the benchmarks use its API)."""

from __future__ import annotations

import ast
from pathlib import Path

from stream_infer.state.store import EntityStore

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "stream_infer" / "state" / "store.py"


def _private_members() -> set[str]:
    """The store's private attributes, read from its ``__init__`` (``self._x = ...``)."""
    tree = ast.parse(STORE.read_text())
    init = next(
        f
        for c in tree.body
        if isinstance(c, ast.ClassDef) and c.name == EntityStore.__name__
        for f in c.body
        if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    return {
        t.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Attribute) and t.attr.startswith("_")
    }


def test_the_store_keeps_its_state_private() -> None:
    assert {"_slots", "_windows", "_slab", "_dirty", "_tombstones", "_disk"} <= _private_members()


def test_no_code_outside_the_state_package_touches_the_store_s_private_members() -> None:
    private = _private_members()
    allowed = {STORE}
    files = [
        p
        for d in ("stream_infer", "benchmarks", "engines", "examples", "tests")
        for p in (ROOT / d).rglob("*.py")
        if p not in allowed and (ROOT / "tests" / "state") not in p.parents
    ]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            own = (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            )
            if isinstance(node, ast.Attribute) and node.attr in private and not own:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not offenders, "the entity store's private members used outside it:\n" + "\n".join(offenders)
