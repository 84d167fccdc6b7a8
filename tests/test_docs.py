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
