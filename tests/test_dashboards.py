"""dashboards/*.json import into Grafana as they are, and the PromQL reader the scrape test relies on.

(That every queried series is really exported is tests/test_full_dag.py's scrape test.)"""

import json

import pytest

from metrics_scrape import DASHBOARDS, dashboard_series, promql_exprs, series_in

DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_imports_as_is_with_a_datasource_variable(path):
    text = path.read_text()
    dashboard = json.loads(text)
    # An export made "for sharing externally" needs an input picked at import; ours needs nothing.
    assert "__inputs" not in dashboard and "${DS_" not in text
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", var["name"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_variables_never_depend_on_a_stage_having_run(path):
    """A variable listing sessions from a pipeline metric is empty until that stage runs (and
    a counter bumped once leaves a single point): variables read Ray's own node metrics."""
    dashboard = json.loads(path.read_text())
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert series_in(var["query"]["query"]) <= {"ray_node_network_receive_speed", "ray_node_mem_used"}


def test_dashboards_chart_the_stages_and_serve():
    series = set(dashboard_series())
    assert {"ray_ying_records_built_total", "ray_ying_rephrase_requests_total", "ray_ying_train_loss"} <= series
    assert {"ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_bucket"} <= series


@pytest.mark.parametrize(
    "expr, names",
    [
        ('sum by (task) (rate(ray_ying_records_built_total{SessionName=~"$SessionName"}[$__rate_interval]))',
         {"ray_ying_records_built_total"}),
        ('histogram_quantile(0.99, sum by (le) (rate(lat_ms_bucket{route!~"/-/.*"}[5m])))', {"lat_ms_bucket"}),
        ("sum(rate(a_total[1m])) / clamp_min(sum(rate(b_total{x=\"y\"}[1m])) + sum(c), 1e-9)",
         {"a_total", "b_total", "c"}),
        ("label_values(ray_node_network_receive_speed, SessionName)", {"ray_node_network_receive_speed"}),
        ("max by (stage) (ray_ying_train_loss) > bool 0", {"ray_ying_train_loss"}),
    ],
)
def test_promql_reader_finds_exactly_the_series(expr, names):
    assert series_in(expr) == names


def test_promql_reader_reads_panels_and_variables():
    dashboard = {"panels": [{"targets": [{"expr": "a"}], "panels": [{"targets": [{"expr": "b"}]}]}],
                 "templating": {"list": [{"type": "query", "query": {"query": "label_values(c, x)"}},
                                         {"type": "datasource", "query": "prometheus"}]}}
    assert promql_exprs(dashboard) == ["a", "b", "label_values(c, x)"]
