"""The Helm chart: lint, render, Kubernetes schemas, and the values it must refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.promtools import CHART, REPO, RULES, tool

HELM = tool("helm")
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed: run deploy/tools/install.sh")

CI_VALUES = CHART / "ci" / "gpu-keda-values.yaml"
PLATFORM_VALUES = CHART / "ci" / "platform-values.yaml"
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


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    workload = next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment"))
    return dict(workload["spec"]["template"]["spec"])


def load_tool(name: str) -> Any:
    """A script of deploy/tools/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VALUE_SETS = {
    "default": [],
    "gpu-keda": ["-f", str(CI_VALUES)],
    "platform": ["-f", str(PLATFORM_VALUES)],
}


def test_every_ci_values_file_is_a_value_set() -> None:
    """`helm lint` and the schema tests cover each file in ci/ (chart-testing runs them all too)."""
    used = {Path(args[1]).name for args in VALUE_SETS.values() if args}
    assert used == {p.name for p in (CHART / "ci").glob("*.yaml")}


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
    assert "NetworkPolicy" not in kinds
    assert kinds["Pod"]["metadata"]["annotations"]["helm.sh/hook"] == "test"  # helm test is on
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


def test_several_models_render_as_models_without_the_single_model(tmp_path: Path) -> None:
    """config.models (docs/models.md) replaces config.model in the rendered settings, and each
    entry's artifact is checked against the model volume."""
    from stream_infer.config import load_settings

    values = tmp_path / "models.yaml"
    values.write_text(
        "model: {source: volume, volume: {persistentVolumeClaim: {claimName: m}}}\n"
        "config:\n  models:\n"
        "    - {name: main, artifact: /models/v1, role: primary}\n"
        "    - {name: next, artifact: /models/v2, role: shadow}\n"
    )
    cm = by_kind(render("-f", str(values)))["ConfigMap"]
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    settings = load_settings(path)
    assert [(m.name, m.role) for m in settings.served_models] == [("main", "primary"), ("next", "shadow")]
    bad = helm("template", "r", str(CHART), "-f", str(values), "--set", "model.mountPath=/elsewhere")
    assert bad.returncode != 0 and "config.models[0].artifact" in bad.stderr


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
    # The PrometheusRule carries the rules of the file compose loads, narrowed to release si.
    assert _unscoped(kinds["PrometheusRule"]["spec"]) == yaml.safe_load(RULES.read_text())
    promtool = tool("promtool")
    if promtool:
        rules = tmp_path / "rules.yaml"
        rules.write_text(yaml.safe_dump(kinds["PrometheusRule"]["spec"]))
        proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _exprs(spec: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in spec["groups"] for r in g["rules"]]


def _unscoped(spec: dict[str, Any]) -> dict[str, Any]:
    """A rendered PrometheusRule spec (release si, namespace infer, StatefulSet) as the plain rule file."""
    spec = json.loads(json.dumps(spec))
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["expr"] = (
                rule["expr"]
                .replace('job="stream-infer", release="si"', 'job="stream-infer"')
                .replace(
                    'container="stream-infer", namespace="infer", pod=~"si-stream-infer-[0-9]+"',
                    'container="stream-infer"',
                )
            )
    return spec


def test_platform_values_render_everything() -> None:
    docs = render("-f", str(PLATFORM_VALUES))
    kinds = by_kind(docs)
    values = yaml.safe_load(PLATFORM_VALUES.read_text())
    pod = pod_spec(docs)
    c = container(docs)
    # envFrom, extraEnv, extraVolumes, extraVolumeMounts and podAnnotations land in the pod.
    assert c["envFrom"] == values["envFrom"]
    assert {"name": "SSL_CERT_FILE", "value": "/etc/platform-ca/ca.crt"} in c["env"]
    assert values["extraVolumes"][0] in pod["volumes"]
    assert values["extraVolumeMounts"][0] in c["volumeMounts"]
    assert {"config", "tmp"} <= {m["name"] for m in c["volumeMounts"]}  # the chart's own stay
    template = kinds["StatefulSet"]["spec"]["template"]
    assert template["metadata"]["annotations"]["platform.example.com/team"] == "inference"

    # The engine cache is a claim per pod, not an emptyDir, and is emptied for a new image.
    claims = kinds["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert [t["metadata"]["name"] for t in claims] == ["engine-cache"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claims[0]["spec"]["storageClassName"] == "fast-ssd"
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "engine-cache" not in {v["name"] for v in pod["volumes"]}
    assert {"name": "engine-cache", "mountPath": "/var/cache/stream-infer"} in c["volumeMounts"]
    reset = pod["initContainers"][0]
    assert reset["name"] == "engine-cache-reset" and reset["image"] == c["image"]
    assert {"name": "IMAGE", "value": c["image"]} in reset["env"]

    # NetworkPolicy: metrics in (from Prometheus and the test pod), DNS and Kafka out.
    np = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and "helm.sh/hook" not in d["metadata"].get("annotations", {})
    )
    assert np["spec"]["podSelector"]["matchLabels"] == kinds["Service"]["spec"]["selector"]
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    [ingress] = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9100, "protocol": "TCP"}]
    assert values["networkPolicy"]["metricsFrom"][0] in ingress["from"]
    test_pod = kinds["Pod"]
    assert {"podSelector": {"matchLabels": _test_selector(test_pod)}} in ingress["from"]
    egress = np["spec"]["egress"]
    assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in egress
    assert {
        "ports": [{"port": 9093, "protocol": "TCP"}],
        "to": values["networkPolicy"]["kafkaPeers"],
    } in egress
    assert values["networkPolicy"]["extraEgress"][0] in egress

    # The test hook: the chart's image, restricted, GETs /readyz of the Service.
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert (
        test_pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        == "before-hook-creation,hook-succeeded"
    )
    [tc] = test_pod["spec"]["containers"]
    assert tc["image"] == c["image"] and tc["command"][:2] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in tc["env"]}
    service = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None")
    assert env["READYZ_URL"] == f"http://{service['metadata']['name']}:9100/readyz"
    assert tc["securityContext"] == c["securityContext"]
    assert test_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert test_pod["spec"]["restartPolicy"] == "Never"
    # The Service, PDB and workload must never select the test pod.
    labels = test_pod["metadata"]["labels"]
    for selector in (
        kinds["Service"]["spec"]["selector"],
        kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        kinds["StatefulSet"]["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()
    hook_np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d is not np)
    assert hook_np["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert hook_np["spec"]["podSelector"]["matchLabels"] == _test_selector(test_pod)

    # Monitoring: targets labelled with the release; rules narrowed to it, runbooks linked.
    [endpoint] = kinds["ServiceMonitor"]["spec"]["endpoints"]
    assert {"action": "replace", "targetLabel": "release", "replacement": "si"} in endpoint["relabelings"]
    assert kinds["ServiceMonitor"]["spec"]["jobLabel"] == "app.kubernetes.io/name"
    rules_text = "\n".join(_exprs(kinds["PrometheusRule"]["spec"]))
    assert 'job="stream-infer", release="si"' in rules_text
    assert 'job="stream-infer"}' not in rules_text
    rules = [r for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://git.example.com/stream-infer/blob/main/docs/deploy.md#"), url


def _test_selector(test_pod: dict[str, Any]) -> dict[str, str]:
    labels = test_pod["metadata"]["labels"]
    return {
        k: labels[k]
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/component", "stream-infer.io/test-of")
    }


def test_network_policy_defaults_allow_any_scraper_and_any_broker() -> None:
    docs = render("--set", "networkPolicy.enabled=true")
    np = next(d for d in docs if d["kind"] == "NetworkPolicy" and "annotations" not in d["metadata"])
    [ingress] = np["spec"]["ingress"]
    assert "from" not in ingress and ingress["ports"] == [{"port": 9100, "protocol": "TCP"}]
    kafka = [r for r in np["spec"]["egress"] if {"port": 9092, "protocol": "TCP"} in r["ports"]]
    assert kafka == [{"ports": [{"port": 9092, "protocol": "TCP"}, {"port": 9093, "protocol": "TCP"}]}]


def test_tests_disabled_renders_no_hook() -> None:
    docs = render("--set", "tests.enabled=false", "--set", "networkPolicy.enabled=true")
    assert not [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]


def test_engine_cache_on_an_existing_claim_for_a_deployment() -> None:
    docs = render(
        "--set",
        "workload.kind=Deployment",
        "--set",
        "engineCache.enabled=true",
        "--set",
        "engineCache.persistence.enabled=true",
        "--set",
        "engineCache.persistence.existingClaim=plans",
    )
    pod = pod_spec(docs)
    assert {"name": "engine-cache", "persistentVolumeClaim": {"claimName": "plans"}} in pod["volumes"]
    assert "volumeClaimTemplates" not in by_kind(docs)["Deployment"]["spec"]
    # Without persistence the cache stays an emptyDir and no init container is added.
    docs = render("--set", "engineCache.enabled=true")
    assert {"name": "engine-cache", "emptyDir": {"sizeLimit": "2Gi"}} in pod_spec(docs)["volumes"]
    assert "initContainers" not in pod_spec(docs)
    assert "volumeClaimTemplates" not in by_kind(docs)["StatefulSet"]["spec"]


def test_engine_cache_reset_empties_the_volume_only_for_a_new_image(tmp_path: Path) -> None:
    """The init container's script, run here with the same env the chart gives it."""
    docs = render("-f", str(PLATFORM_VALUES))
    reset = pod_spec(docs)["initContainers"][0]
    script = reset["command"][2]
    cache = tmp_path / "cache"
    (cache / "model").mkdir(parents=True)
    (cache / "model" / "model.plan").write_text("old plan")
    (cache / "lost+found").mkdir()

    def run(image: str) -> None:
        env = {**os.environ, "CACHE_DIR": str(cache), "IMAGE": image}
        subprocess.run(["sh", "-c", script], env=env, check=True, capture_output=True)

    run("registry.example.com/stream-infer:1")
    assert sorted(p.name for p in cache.iterdir()) == [".stream-infer-image", "lost+found"]
    (cache / "model").mkdir()
    (cache / "model" / "model.plan").write_text("plan for image 1")
    run("registry.example.com/stream-infer:1")
    assert (cache / "model" / "model.plan").read_text() == "plan for image 1"  # same image: kept
    run("registry.example.com/stream-infer:2")
    assert not (cache / "model").exists()


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def _readyz_server(status: int) -> Iterator[str]:
    handler = type("Handler", (_Readyz,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/readyz"
    finally:
        server.shutdown()
        server.server_close()


def test_helm_test_pod_passes_only_on_200() -> None:
    """The hook's python, run here against a stand-in /readyz."""
    [tc] = by_kind(render())["Pod"]["spec"]["containers"]
    code = tc["command"][2]

    def run(url: str) -> int:
        env = {**os.environ, "READYZ_URL": url}
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        ).returncode

    with _readyz_server(200) as url:
        assert run(url) == 0
    with _readyz_server(503) as url:
        assert run(url) != 0
    with _readyz_server(200) as url:
        closed = url
    assert run(closed) != 0  # nothing listening


def test_prometheus_rule_keeps_releases_apart(tmp_path: Path) -> None:
    """The rules as rendered for release si, under promtool: another release's targets never count."""
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run deploy/tools/install.sh")
    spec = by_kind(render("-f", str(PLATFORM_VALUES)))["PrometheusRule"]["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    si = 'up{job="stream-infer",release="si",namespace="infer",instance="10.0.0.1:9100"}'
    other = 'up{job="stream-infer",release="other",namespace="infer",instance="10.0.0.2:9100"}'
    restarts = (
        'kube_pod_container_status_restarts_total{{namespace="infer",pod="{}",container="stream-infer"}}'
    )
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                # Only the other release's target exists, and it is down.
                "interval": "1m",
                "input_series": [
                    {"series": other, "values": "0x10"},
                    # Another release's pod (si-stream-infer-canary-0) restarting; and si's own.
                    {"series": restarts.format("si-stream-infer-canary-0"), "values": "0 1 2 3 4x10"},
                    {"series": restarts.format("si-stream-infer-1"), "values": "0 1 2 3 4x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "StreamInferDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "StreamInferAbsent",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "critical", "job": "stream-infer", "release": "si"}}
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "StreamInferPodRestarting",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "infer",
                                    "pod": "si-stream-infer-1",
                                }
                            }
                        ],
                    },
                ],
            },
            {
                # Both exist: si's target is down, the other's up.
                "interval": "1m",
                "input_series": [{"series": si, "values": "0x10"}, {"series": other, "values": "1x10"}],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "StreamInferAbsent", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "StreamInferDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "stream-infer",
                                    "release": "si",
                                    "namespace": "infer",
                                    "instance": "10.0.0.1:9100",
                                }
                            }
                        ],
                    },
                ],
            },
        ],
    }
    # promtool compares annotations only where a case names them: drop them from the rules instead.
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scale_to_zero_leaves_out_the_absent_alert() -> None:
    kinds = by_kind(
        render(
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "keda.enabled=true",
            "--set",
            "keda.minReplicaCount=0",
        )
    )
    alerts = [r["alert"] for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    assert "StreamInferAbsent" not in alerts and "StreamInferDown" in alerts
    assert all('job="stream-infer"}' not in e for e in _exprs(kinds["PrometheusRule"]["spec"]))


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
    "engine cache claim missing on a deployment": (
        [
            "--set",
            "workload.kind=Deployment",
            "--set",
            "engineCache.enabled=true",
            "--set",
            "engineCache.persistence.enabled=true",
        ],
        "engineCache.persistence.existingClaim must be set",
    ),
    "engine cache persistence without the cache": (
        ["--set", "engineCache.persistence.enabled=true"],
        "engineCache.persistence.enabled needs engineCache.enabled",
    ),
    "unknown networkPolicy key": (["--set", "networkPolicy.ingress=x"], "ingress"),
    "bad kafka port": (["--set", "networkPolicy.kafkaPorts[0]=0"], "kafkaPorts"),
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
    module = load_tool("chart_schema")
    current = json.loads(module.SCHEMA.read_text())
    assert module.dumps(module.render(current)) == module.SCHEMA.read_text(), (
        "values.schema.json is stale: run .venv/bin/python deploy/tools/chart_schema.py"
    )


def test_readme_is_generated_from_values() -> None:
    """The chart README's values table follows values.yaml (regenerate when it changes)."""
    module = load_tool("chart_readme")
    fresh = module.render(
        module.README.read_text(), module.VALUES.read_text(), json.loads(module.SCHEMA.read_text())
    )
    assert fresh == module.README.read_text(), (
        "helm/stream-infer/README.md is stale: run .venv/bin/python deploy/tools/chart_readme.py"
    )
    # Every value has a row.
    values = yaml.safe_load(module.VALUES.read_text())
    paths = {
        row.path for row in module.parse(module.VALUES.read_text(), json.loads(module.SCHEMA.read_text()))
    }
    assert set(values) <= {p.split(".")[0] for p in paths}
    for key in (
        "envFrom",
        "extraVolumes",
        "networkPolicy.kafkaPeers",
        "engineCache.persistence.existingClaim",
    ):
        assert key in paths
