"""The docs that users read stay true to the code."""

import json
from pathlib import Path

from pydantic import BaseModel

from stream_infer.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        t = field.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            out += _keys(t, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_setting_is_documented_in_the_configuration_reference():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in _keys(Settings) if f"`{k}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_docs_prediction_schema_is_the_packaged_one():
    packaged = ROOT / "stream_infer" / "schemas" / "prediction.schema.json"
    assert json.loads((ROOT / "docs" / "prediction.schema.json").read_text()) == json.loads(
        packaged.read_text()
    )


def test_readme_names_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"


def test_the_architecture_table_names_every_module_and_only_modules_that_exist():
    """docs/architecture.md's "concept -> its one module" table is true of the code: every path it
    names exists, and every module of the package is named (or its folder is, e.g. ``model/``)."""
    import re

    pkg = ROOT / "stream_infer"
    table = [
        line.split("|")[-2]
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| ") and line.count("|") >= 3
    ]
    named = {m for cell in table for m in re.findall(r"`([\w/]+(?:\.py|/))`", cell)}
    assert named, "no module table in docs/architecture.md"
    missing = sorted(m for m in named if not (pkg / m).exists())
    assert not missing, f"the table names modules that do not exist: {missing}"
    unnamed = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        parents = {p.as_posix() + "/" for p in path.relative_to(pkg).parents if p.as_posix() != "."}
        if path.name == "__init__.py" and rel != "kafka/__init__.py" and rel.count("/") <= 1:
            continue  # a package's marker; the package itself is named by its modules
        if rel not in named and not parents & named:
            unnamed.append(rel)
    assert not unnamed, f"modules with no row in docs/architecture.md: {unnamed}"
