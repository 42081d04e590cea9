"""The ops team's view in deploy/: Prometheus alerting rules, their runbook, the Grafana dashboard.

Every PromQL expression is parsed (promql-parser) and may name only metrics the services export, with labels
those metrics carry; every alert has a runbook. The metrics are read from the services' own Prometheus
registry (importing each service's bootstrap registers everything it exports) and, for the gauge added for the
desk alert, from a running risk service while an alert waits.
"""

from __future__ import annotations

import importlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RUNBOOK = ROOT / "deploy" / "prometheus" / "RUNBOOK.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "jinshui.json"
SERVICES = ("registry", "incidents", "risk", "gateway")
# Series Prometheus makes itself for each scrape target, and the labels it attaches to every series.
SYNTHETIC = {"up": set()}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
HIGH_ALERT_METRIC = "jinshui_risk_alert_unacknowledged_oldest_seconds"


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every jinshui_ metric the four services register."""
    for service in SERVICES:
        importlib.import_module(f"jinshui.{service}.main")
    names: dict[str, set[str]] = {}
    for collector in set(REGISTRY._names_to_collectors.values()):
        for family in collector.describe() if hasattr(collector, "describe") else ():
            if not family.name.startswith("jinshui_"):
                continue
            labels = set(getattr(collector, "_labelnames", ()))
            base = family.name.removesuffix("_total") if family.type == "counter" else family.name
            suffixes = SUFFIXES.get(family.type, ("",))
            for suffix in suffixes:
                names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


@pytest.fixture(scope="module")
def metrics() -> dict[str, set[str]]:
    return exported() | SYNTHETIC


class UnknownMetric(ValueError):
    pass


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) of every selector in the expression; raises on a PromQL syntax error."""
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: m.value for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_expression(expr: str, metrics: dict[str, set[str]]) -> set[str]:
    """The metric names `expr` uses; raises UnknownMetric for a name or label no service exports."""
    used = set()
    for name, matchers in selectors(expr):
        if name not in metrics:
            raise UnknownMetric(f"{name} is exported by no service ({expr})")
        unknown = set(matchers) - metrics[name] - TARGET_LABELS
        if unknown:
            raise UnknownMetric(f"{name} has no label {sorted(unknown)} ({expr})")
        used.add(name)
    return used


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# --- the checker itself -----------------------------------------------------------------------------------


def test_checker_refuses_a_misspelt_metric_an_unknown_label_and_bad_syntax(metrics):
    assert check_expression("max by (consumer) (jinshui_consumer_pending) > 5000", metrics) == {
        "jinshui_consumer_pending"
    }
    with pytest.raises(UnknownMetric, match="jinshui_consumer_pendng"):
        check_expression("max by (consumer) (jinshui_consumer_pendng) > 5000", metrics)
    with pytest.raises(UnknownMetric, match="durable"):
        check_expression('jinshui_consumer_pending{durable="registry-intake"} > 0', metrics)
    with pytest.raises(ValueError):
        check_expression("sum(rate(jinshui_consumer_messages_total[5m])", metrics)


def test_the_kit_and_the_desk_gauges_are_among_the_exported_metrics(metrics):
    assert {"jinshui_consumer_messages_total", "jinshui_consumer_batch_seconds_bucket", "jinshui_ready"} <= set(metrics)
    assert metrics[HIGH_ALERT_METRIC] == {"level"}
    assert metrics["jinshui_consumer_messages_total"] == {"consumer", "outcome"}


# --- alerting rules -----------------------------------------------------------------------------------------


def runbook_sections() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^## (\w+)\s*$", RUNBOOK.read_text(), re.MULTILINE)}


def test_every_alert_refers_only_to_exported_metrics_and_has_a_runbook(rules, metrics):
    sections = runbook_sections()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        check_expression(rule["expr"], metrics)
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warning")
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and len(annotations["runbook"].split()) >= 15, rule["alert"]
        assert annotations["runbook_url"] == f"RUNBOOK.md#{rule['alert'].lower()}"
        assert rule["alert"] in sections, f"RUNBOOK.md has no section for {rule['alert']}"
        # A template may name only labels the expression's result keeps.
        for label in re.findall(r"\$labels\.(\w+)", annotations["summary"]):
            assert label in TARGET_LABELS or re.search(rf"by \([^)]*\b{label}\b", rule["expr"]), (rule["alert"], label)
    assert sections == set(names), "a runbook section for an alert that no longer exists"


def test_the_alerts_cover_what_the_ops_team_asked_for(rules, metrics):
    def alerting_on(metric: str, **labels: str) -> list[str]:
        return [
            rule["alert"]
            for rule in rules
            for name, matchers in selectors(rule["expr"])
            if name == metric and all(matchers.get(k) == v for k, v in labels.items())
        ]

    assert alerting_on("jinshui_consumer_pending"), "consumer lag"
    assert alerting_on("jinshui_outbox_oldest_seconds"), "outbox age"
    assert alerting_on("jinshui_outbox_backlog"), "outbox backlog"
    assert alerting_on("jinshui_consumer_messages_total", outcome="dlq"), "DLQ growth"
    assert alerting_on(HIGH_ALERT_METRIC, level="HIGH"), "HIGH alerts unacknowledged"
    assert alerting_on("jinshui_ready"), "a service not ready"


# --- the dashboard ------------------------------------------------------------------------------------------


def test_dashboard_panels_query_exported_metrics(metrics):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            used |= check_expression(target["expr"], metrics)
    # Everything the services export for the ops team is on the dashboard.
    assert {
        name for name in metrics if name.startswith("jinshui_") and not name.endswith(("_created", "_sum", "_count"))
    } <= used


# --- the desk gauge, on a running risk service --------------------------------------------------------------


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_high_alert_waiting_for_the_desk_shows_on_risk_metrics_until_acknowledged(stack, service_env, rules):
    s = await stack(services=("registry", "risk", "gateway"))
    home = service_env["JINSHUI_HOME"]

    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=home, role=role)}"}

    (rule,) = [r for r in rules if any(n == HIGH_ALERT_METRIC for n, _ in selectors(r["expr"]))]
    threshold = float(re.search(r">\s*([\d.]+)\s*$", rule["expr"]).group(1))
    key_count = ("jinshui_risk_alerts_unacknowledged", (("level", "HIGH"),))
    key_age = (HIGH_ALERT_METRIC, (("level", "HIGH"),))

    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=20) as gw, httpx.AsyncClient(timeout=10) as http:

        async def risk_metrics() -> dict:
            return scrape((await http.get(s.url("risk") + "/metrics")).text)

        before = await risk_metrics()
        assert before[key_count] == 0 and before[key_age] == 0

        household = {"code": "M1", "address": "金水小区2-1-101", "grid": "G01", "beat": "B1"}
        assert (await gw.post("/v1/households", json=household, headers=auth("community_admin"))).status_code == 201
        visit = {"household_code": "M1", "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
        r = await gw.post("/v1/visits", json={"visits": [visit]}, headers={**auth("grid_worker"), "Prefer": "wait=20"})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text

        async def counted():
            return (await risk_metrics())[key_count] == 1

        await eventually(counted, what="the HIGH alert counted as unacknowledged")
        advance(service_env["JINSHUI_CLOCK_FILE"], threshold + 60)
        waited = (await risk_metrics())[key_age]
        assert waited > threshold, "the rule's threshold is passed once the desk has left it that long"

        raised = (await gw.get("/v1/alerts", params={"status": "raised"}, headers=auth("police"))).json()["alerts"]
        (alert,) = [a for a in raised if a["level"] == "HIGH"]
        r = await gw.post(f"/v1/alerts/{alert['id']}/acknowledge", json={}, headers=auth("police"))
        assert r.status_code == 200, r.text
        after = await risk_metrics()
        assert after[key_count] == 0 and after[key_age] == 0

        # What the rules use from the kit is exported by every running service, not only registered.
        for service in ("registry", "risk", "gateway"):
            text = (await http.get(s.url(service) + "/metrics")).text
            families = {f.name for f in text_string_to_metric_families(text)}
            assert {"jinshui_consumer_pending", "jinshui_consumer_messages", "jinshui_ready"} <= families, service
