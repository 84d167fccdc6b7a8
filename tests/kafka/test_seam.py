"""One Kafka seam: only ``stream_infer/kafka/`` touches a Kafka client library, each library in
its own modules; no import cycle among the package's modules; a missing extra ends the start in
one line naming it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import stream_infer
from stream_infer.config import load_settings
from stream_infer.errors import ConfigError

ROOT = Path(stream_infer.__file__).resolve().parent
CLIENTS = {"kafka": "kafka-python", "confluent_kafka": "confluent-kafka"}
# The only modules that may import each client library.
ALLOWED = {
    "kafka": {"stream_infer.kafka.kafka_python", "stream_infer.kafka.kafka_python_admin"},
    "confluent_kafka": {"stream_infer.kafka.confluent"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(ROOT.rglob("*.py"))}


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """Every import anywhere in ``tree``: (module imported, names imported from it)."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((_absolute(node, module, is_package), [a.name for a in node.names]))
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def test_only_the_kafka_layer_imports_a_kafka_client() -> None:
    wrong = []
    for name, (path, tree) in _modules().items():
        for imported, _ in _imports(tree, name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top in CLIENTS and name not in ALLOWED[top]:
                wrong.append(f"{name} imports {imported} ({CLIENTS[top]})")
    assert not wrong, wrong


def _module_level_imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``tree`` imports when it is imported: module-level statements
    (in ``try``/``if`` too), not under ``if TYPE_CHECKING`` nor inside functions or classes."""
    found: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for imported, names in _imports(node, module, is_package):
                    if not imported.startswith("stream_infer"):
                        continue
                    # ``from pkg import sub`` imports the submodule; ``from pkg import name``
                    # needs ``pkg``'s ``__init__`` to have run (that is the cycle a submodule
                    # importing its own package back makes).
                    subs = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in known]
                    found.update(subs)
                    if len(subs) < len(names) or not names:
                        found.add(imported)

    visit(tree.body)
    return {m for m in found if m in known and m != module}


def test_no_import_cycle_among_the_packages_modules() -> None:
    modules = _modules()
    known = set(modules)
    graph = {
        name: _module_level_imports(tree, name, path.name == "__init__.py", known)
        for name, (path, tree) in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])


def test_kafka_python_missing_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_infer import kafka as layer

    monkeypatch.setitem(sys.modules, "kafka", None)
    s = load_settings(kafka={"client": "kafka-python"}, topics={"input": "in"})
    for call in (
        lambda: layer.connect_admin(s, timeout_s=0.1),
        lambda: layer.make_consumer(s),
        lambda: layer.make_producer(s),
        lambda: layer.make_reader(s, "changelog"),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == (
            "kafka.client: kafka-python needs the extra: pip install 'stream-infer[kafka-python]'"
        )


def test_the_confluent_client_needs_no_kafka_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings, the oauth provider and the librdkafka clients load without kafka-python."""
    from stream_infer.kafka import confluent

    monkeypatch.setitem(sys.modules, "kafka", None)
    s = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token_endpoint_url": "http://127.0.0.1:1/token",
            "sasl_oauth_client_id": "svc",
            "sasl_oauth_client_secret": "s",
        },
        topics={"input": "in"},
    )
    assert "oauth_cb" in confluent.base_config(s.kafka, "admin")


@pytest.mark.parametrize("missing", ["fastavro", "google.protobuf", "grpc_tools"])
def test_registry_extra_missing_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    s = load_settings(
        input={"format": "registry", "schema_registry_url": "http://127.0.0.1:1"}, topics={"input": "in"}
    )
    with pytest.raises(ConfigError) as info:
        s.input.schema_registry()
    assert str(info.value) == "input.format: registry needs the extra: pip install 'stream-infer[registry]'"
