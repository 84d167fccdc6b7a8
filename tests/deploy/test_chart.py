"""The Helm chart: lint, render, Kubernetes schemas, and the values it must refuse."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.promtools import CHART, REPO, RULES, tool

HELM = tool("helm")
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed: run deploy/tools/install.sh")

CI_VALUES = CHART / "ci" / "gpu-keda-values.yaml"
KUBE_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    proc = helm("template", "si", str(CHART), "--namespace", "infer", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    workload = next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment"))
    return dict(workload["spec"]["template"]["spec"]["containers"][0])


VALUE_SETS = {"default": [], "gpu-keda": ["-f", str(CI_VALUES)]}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_passes_strict(name: str) -> None:
    proc = helm("lint", str(CHART), "--strict", *VALUE_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_match_kubernetes_schemas(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(*VALUE_SETS[name])
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # CRDs: no schema in kubernetes_validate; test_crds_are_well_formed checks them
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_default_install_is_a_hardened_statefulset() -> None:
    docs = render()
    kinds = by_kind(docs)
    assert {"StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds.keys()
    assert not CRD_KINDS & kinds.keys()  # optional extras are off by default
    sts = kinds["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    c = container(docs)
    assert c["args"] == ["serve", "--config", "/etc/stream-infer/config.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["config.yaml"])
    assert pod["terminationGracePeriodSeconds"] > config["shutdown_grace_s"]


def test_configmap_is_a_valid_settings_file(tmp_path: Path) -> None:
    """The rendered config.yaml loads with the service's own Settings (unknown keys would fail)."""
    from stream_infer.config import load_settings

    for args in VALUE_SETS.values():
        cm = by_kind(render(*args))["ConfigMap"]
        path = tmp_path / "config.yaml"
        path.write_text(cm["data"]["config.yaml"])
        overrides = {}
        if "SASL" in cm["data"]["config.yaml"]:  # the password comes from the secret's env var
            overrides = {"kafka": {"sasl_password": "from-secret"}}
        settings = load_settings(path, **overrides)
        assert settings.metrics.port == 9100


def test_gpu_keda_values_render_everything() -> None:
    docs = render("-f", str(CI_VALUES))
    kinds = by_kind(docs)
    assert kinds.keys() >= CRD_KINDS
    assert "HorizontalPodAutoscaler" not in kinds  # KEDA owns scaling
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["STREAM_INFER_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "stream-infer-kafka-user", "key": "password"}
    assert any(v.get("secret", {}).get("secretName") == "stream-infer-kafka-ca" for v in pod["volumes"])
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["config.yaml"])
    assert config["kafka"]["ssl_cafile"] == "/etc/stream-infer/kafka-tls/ca.crt"
    assert "sasl_password" not in config["kafka"]
    values = yaml.safe_load(CI_VALUES.read_text())
    so = kinds["ScaledObject"]["spec"]
    assert so["maxReplicaCount"] <= values["inputPartitions"]
    assert so["triggers"][0]["type"] == "kafka"
    assert so["triggers"][0]["metadata"]["topic"] == config["topics"]["input"]


# Minimal structural schemas for the CRDs (the fields the operators require and the chart sets).
_CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"]},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "required": ["name", "rules"]},
            }
        },
    },
    "ScaledObject": {
        "required": ["scaleTargetRef", "triggers", "maxReplicaCount"],
        "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"]},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "properties": {
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
            },
        },
    },
}
_API = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}


def test_crds_are_well_formed(tmp_path: Path) -> None:
    """CRDs have no schema in kubernetes_validate: check their shape here, and the rules with promtool."""
    kinds = by_kind(render("-f", str(CI_VALUES)))
    for kind, schema in _CRD_SCHEMAS.items():
        doc = kinds[kind]
        assert doc["apiVersion"] == _API[kind]
        assert doc["metadata"]["name"]
        jsonschema.validate(doc["spec"], {"type": "object", **schema})
    workload = kinds["StatefulSet"]
    assert kinds["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    # The ServiceMonitor selects exactly one Service (the headless one would double every scrape).
    services = [d for d in render("-f", str(CI_VALUES)) if d["kind"] == "Service"]
    match = kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if match.items() <= s["metadata"]["labels"].items()]
    assert len(selected) == 1
    # The PrometheusRule carries the same rules as the file compose loads.
    assert kinds["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())
    promtool = tool("promtool")
    if promtool:
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(kinds["PrometheusRule"]["spec"]))
        proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


BAD_VALUES = {
    "replicas as a string": (["--set-string", "replicaCount=two"], "replicaCount"),
    "unknown top-level key": (["--set", "replicas=3"], "replicas"),
    "unknown setting in config": (["--set", "config.kafka.bootstrap=x:9092"], "bootstrap"),
    "bad enum in config": (["--set", "config.model.backend=tensorflow"], "backend"),
    "keda max above partitions": (
        ["--set", "keda.enabled=true", "--set", "keda.maxReplicaCount=12", "--set", "inputPartitions=6"],
        "keda.maxReplicaCount",
    ),
    "hpa max above partitions": (
        [
            "--set",
            "autoscaling.enabled=true",
            "--set",
            "autoscaling.maxReplicas=8",
            "--set",
            "inputPartitions=6",
        ],
        "autoscaling.maxReplicas",
    ),
    "replicas above partitions": (
        ["--set", "replicaCount=7", "--set", "inputPartitions=6"],
        "inputPartitions",
    ),
    "grace shorter than shutdown": (
        ["--set", "terminationGracePeriodSeconds=20", "--set", "config.shutdown_grace_s=30"],
        "terminationGracePeriodSeconds",
    ),
    "grace equal to shutdown": (
        ["--set", "terminationGracePeriodSeconds=30", "--set", "config.shutdown_grace_s=30"],
        "terminationGracePeriodSeconds",
    ),
    "hpa and keda together": (
        ["--set", "keda.enabled=true", "--set", "autoscaling.enabled=true"],
        "exclusive",
    ),
    "root allowed": (["--set", "securityContext.runAsNonRoot=false"], "runAsNonRoot"),
    "writable root filesystem": (
        ["--set", "securityContext.readOnlyRootFilesystem=false"],
        "readOnlyRootFilesystem",
    ),
    "password in the configmap": (["--set", "config.kafka.sasl_password=hunter2"], "sasl_password"),
    "artifact outside the model volume": (
        [
            "--set",
            "model.source=initContainer",
            "--set",
            "model.initContainer.image=models:1",
            "--set",
            "config.model.artifact=/opt/model",
        ],
        "model.mountPath",
    ),
    "exactly-once on a deployment": (
        ["--set", "workload.kind=Deployment", "--set", "config.delivery.guarantee=exactly-once"],
        "StatefulSet",
    ),
    "bad workload kind": (["--set", "workload.kind=DaemonSet"], "kind"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_at_template_time(case: str) -> None:
    args, needle = BAD_VALUES[case]
    proc = helm("template", "si", str(CHART), *args)
    assert proc.returncode != 0, f"{case}: rendered although it should not"
    assert needle in proc.stderr, proc.stderr


def test_model_from_init_container_and_deployment_render() -> None:
    docs = render(
        "--set",
        "model.source=initContainer",
        "--set",
        "model.initContainer.image=models:1",
        "--set",
        "config.model.artifact=/models/basicmotions",
        "--set",
        "workload.kind=Deployment",
        "--set",
        "autoscaling.enabled=true",
    )
    kinds = by_kind(docs)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "models:1"
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert "POD_NAME" not in {e["name"] for e in container(docs).get("env") or []}
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert "replicas" not in kinds["Deployment"]["spec"]


def test_values_schema_is_generated_from_settings() -> None:
    """`config` in values.schema.json follows stream_infer/config.py (regenerate when it changes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "chart_schema", REPO / "deploy" / "tools" / "chart_schema.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = json.loads(module.SCHEMA.read_text())
    assert module.dumps(module.render(current)) == module.SCHEMA.read_text(), (
        "values.schema.json is stale: run .venv/bin/python deploy/tools/chart_schema.py"
    )
