"""The Prometheus alert rules and the Grafana dashboard in deploy/: valid for Prometheus's
own checker, and every metric and label they name is one the service exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from service.metrics import Metrics
from service.streams.metrics import StreamMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "convlstm.json"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
# Labels Prometheus adds itself, or the histogram's own.
OWN_LABELS = {"instance", "job", "le", "device"}


def exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Every metric family the service registers, with its label names."""
    families: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):  # noqa: SLF001
        describe = getattr(collector, "describe", None)
        for family in describe() if describe else []:
            labels = set(getattr(collector, "_labelnames", ()))
            families[family.name] = labels
    return families


@pytest.fixture(scope="module")
def families() -> dict[str, set[str]]:
    metrics = Metrics()
    StreamMetrics(metrics)
    return exported(metrics.registry)


def expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def panel_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def base_name(metric: str) -> str:
    for suffix in SUFFIXES:
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


@pytest.mark.parametrize(("alert", "expr"), expressions() + panel_queries())
def test_every_metric_and_label_a_rule_or_panel_names_is_exported(
    alert: str, expr: str, families: dict[str, set[str]]
) -> None:
    names = set(re.findall(r"\bconvlstm_[a-z0-9_]+", expr))
    assert names, f"{alert} names no metric of the service"
    for name in names:
        assert base_name(name) in families, f"{alert}: {name} is not exported"
    labels = set(re.findall(r"(\w+)\s*(?:=~|!=|=)\s*\"", expr))
    labels |= {x.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for x in group.split(",")}
    known = set().union(*(families[base_name(n)] for n in names)) | OWN_LABELS
    assert labels <= known, f"{alert}: labels {labels - known} are not on {names}"


def test_the_dashboard_is_provisioned_over_the_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and len(dashboard["panels"]) >= 8
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (datasource,) = source["datasources"]
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in dashboard["panels"])
    assert datasource["url"] == "http://prometheus:9090"


def test_every_alert_has_a_summary_and_a_severity() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]


def test_prometheus_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("REQUIRE_PROMTOOL"):
            pytest.fail("promtool is missing: `make test` installs Debian's prometheus as root")
        pytest.skip("no promtool (Debian's prometheus package; `make test` installs it as root)")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions())} rules found" in result.stdout
    # The scrape configuration that loads them (compose mounts both side by side).
    config = RULES.parent / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
