"""Alert rules, dashboard and compose stack: valid, and using only metrics the service exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_infer.metrics import Metrics
from tests.deploy.promtools import (
    DASHBOARD,
    EXTERNAL_METRICS,
    REPO,
    RULES,
    dashboard_exprs,
    exported_metric_names,
    promql_metric_names,
    rule_exprs,
    tool,
)

DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metric_names(Metrics(CollectorRegistry()).registry)


def test_promtool_check_rules_passes() -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run deploy/tools/install.sh")
    proc = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_tests_pass() -> None:
    """The alerts' behaviour over time (tests/deploy/rules_test.yaml): when each fires and when not."""
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run deploy/tools/install.sh")
    proc = subprocess.run(
        [promtool, "test", "rules", str(Path(__file__).with_name("rules_test.yaml"))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_rules_are_the_chart_rules() -> None:
    assert (DEPLOY / "prometheus" / "rules.yaml").read_text() == RULES.read_text()


def test_rules_use_only_exported_metrics(exported: set[str]) -> None:
    exprs = rule_exprs()
    assert {
        "StreamInferDown",
        "StreamInferAbsent",
        "StreamInferConsumerLagGrowing",
        "StreamInferInputTransactionStuck",
        "StreamInferLatencyP99AboveSLO",
        "StreamInferDeadLetters",
        "StreamInferNoPredictions",
        "StreamInferPodRestarting",
    } <= exprs.keys()
    for name, expr in exprs.items():
        unknown = promql_metric_names(expr) - exported - EXTERNAL_METRICS.keys()
        assert not unknown, f"rule {name} uses metrics the service does not export: {unknown}"


def test_every_alert_has_a_runbook_entry() -> None:
    runbook = (REPO / "docs" / "deploy.md").read_text()
    doc = yaml.safe_load(RULES.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        name = rule["alert"]
        assert f"### {name}" in runbook, f"docs/deploy.md has no runbook section for {name}"
        # runbook_url is what Alertmanager templates and the operator's tooling look for; the chart
        # prefixes it with prometheusRule.runbookBaseUrl.
        assert rule["annotations"]["runbook_url"] == f"docs/deploy.md#{name.lower()}", name
        assert "runbook" not in rule["annotations"], name


_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count|topk|bottomk|quantile)\s*(by\s*\(([^)]*)\))?\s*\(")


def test_every_aggregation_keeps_the_release() -> None:
    """Two releases (two models) must never be summed into one alert, or alert under each other's name."""
    for name, expr in rule_exprs().items():
        if 'job="stream-infer"' not in expr:
            continue  # kube-state-metrics' restarts: by namespace and pod
        aggregations = _AGGREGATION.findall(expr)
        for op, by, labels in aggregations:
            assert by and "release" in [label.strip() for label in labels.split(",")], (
                f"{name}: {op} {by or '(no by)'} drops the release label"
            )
    assert "absent(" in rule_exprs()["StreamInferAbsent"]


def test_compose_scrape_carries_a_release() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["stream-infer"]["static_configs"][0]["labels"] == {"release": "local"}


def test_dashboard_parses_and_uses_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    exprs = dashboard_exprs(dashboard)
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        unknown = names - exported
        assert not unknown, f"dashboard query uses metrics the service does not export: {unknown}\n{expr}"
        used |= names
    # The panels the runbook refers to.
    for name in (
        "stream_infer_event_to_publish_seconds_bucket",
        "stream_infer_events_total",
        "stream_infer_messages_total",
        "stream_infer_predictions_total",
        "stream_infer_batch_size_bucket",
        "stream_infer_queue_wait_seconds_bucket",
        "stream_infer_engine_seconds_bucket",
        "stream_infer_consumer_lag",
        "stream_infer_input_unstable_records",
        "stream_infer_input_lso_stuck_seconds",
        "stream_infer_dead_letters_total",
        "stream_infer_invalid_events_total",
        "stream_infer_active_entities",
        "stream_infer_state_restored_entities_total",
        "stream_infer_rebalances_total",
        "stream_infer_commit_seconds_bucket",
    ):
        assert name in used, f"no dashboard panel shows {name}"
    assert any("histogram_quantile(0.99" in e and "event_to_publish" in e for e in exprs)
    # Namespace and release narrow every query; "All" is ".*", which also matches a series without
    # the label (the compose stack has no namespace).
    for name, multi in (("namespace", False), ("release", True)):
        var = variables[name]
        assert var["includeAll"] and var["allValue"] == ".*" and var["multi"] is multi, name
    panel_exprs = dashboard_exprs({"panels": dashboard["panels"]})  # the variables chain on their own
    selectors = [sel for e in panel_exprs for sel in re.findall(r"\{[^}]*\}", e) if 'job=~"$job"' in sel]
    assert len(selectors) > 40
    for sel in selectors:
        assert 'namespace=~"$namespace"' in sel and 'release=~"$release"' in sel, sel
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_metric_name_parser_sees_selectors() -> None:
    expr = 'sum by (le) (rate(stream_infer_x_bucket{job="a"}[5m])) and up{job="b"} == 0'
    assert promql_metric_names(expr) == {"stream_infer_x_bucket", "up"}


def test_compose_stack_parses_and_is_wired() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "topics", "stream-infer", "producer", "prometheus", "grafana"} <= services.keys()
    si = services["stream-infer"]
    assert si["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    assert services["producer"]["command"][0] == "produce"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # Every bind-mounted file or folder exists (paths relative to deploy/).
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["stream-infer"]["static_configs"][0]["targets"] == ["stream-infer:9100"]


def test_compose_service_config_is_a_valid_settings_file() -> None:
    from stream_infer.config import load_settings

    for path in (
        DEPLOY / "compose" / "config.yaml",
        DEPLOY / "docker" / "config.yaml",
        DEPLOY / "docker" / "config.gpu.yaml",
    ):
        load_settings(path)


def test_promtool_check_config_of_compose_prometheus(tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run deploy/tools/install.sh")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]  # where compose mounts it: /etc/prometheus/rules/
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((prov / "dashboards" / "stream-infer.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == dash["providers"][0]["options"]["path"]
