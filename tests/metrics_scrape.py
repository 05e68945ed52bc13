"""What the dashboards query, and what Ray's Prometheus endpoints export: for the scrape test.

``dashboard_series()`` reads the PromQL out of ``dashboards/*.json`` (panel targets and query
variables) and returns the series names it selects, so the expected set follows the dashboards as
they change. ``Scraper`` polls every node's metrics endpoint while a run goes on and keeps the
union of the series it saw (a short-lived process's gauge is gone from the endpoint soon after it
exits, so one scrape at the end would miss it).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"

# A metric name in PromQL: an identifier that is not a label (followed by a matcher), not a
# function or keyword (followed by "("), and not inside a string.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\s*(?:=|!=|=~|!~|\(|\w))")
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "le", "inf", "nan"}


def promql_exprs(dashboard: dict) -> list[str]:
    exprs: list[str] = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def series_in(expr: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana ``label_values(metric, label)``) selects."""
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [5m], [$__rate_interval]
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping label lists
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*,\s*\w+\s*\)", r"\1\2", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    names = {m.group(1) for m in _NAME.finditer(expr)}
    return {n for n in names if n.lower() not in _PROMQL_WORDS and not re.fullmatch(r"[0-9.e+-]+", n)}


def dashboard_series(directory: Path = DASHBOARDS) -> dict[str, set[str]]:
    """``{series: {dashboard file names}}`` for every dashboard in ``directory``."""
    out: dict[str, set[str]] = {}
    for path in sorted(directory.glob("*.json")):
        for expr in promql_exprs(json.loads(path.read_text())):
            for name in series_in(expr):
                out.setdefault(name, set()).add(path.name)
    return out


def exported_series(text: str) -> set[str]:
    """Series names in a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


class Scraper:
    """Polls the metrics endpoints of a Ray cluster's nodes in a thread; ``seen`` is the union."""

    def __init__(self, endpoints_fn, interval_s: float = 2.0) -> None:
        self._endpoints_fn = endpoints_fn  # -> list of "http://host:port/metrics"
        self.interval_s = interval_s
        self.seen: set[str] = set()
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def scrape_once(self) -> None:
        for url in self._endpoints_fn():
            try:
                text = urllib.request.urlopen(url, timeout=10).read().decode("utf-8", "replace")
            except OSError:
                continue  # a node that just went away; the next round tries again
            self.seen |= exported_series(text)
            self.scrapes += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    def wait_for(self, names: set[str], timeout_s: float) -> set[str]:
        """Keep scraping until every name was seen or ``timeout_s`` passed; returns those still missing
        (exporters push every few seconds, so the last stage's series can land after its job ends)."""
        deadline = time.monotonic() + timeout_s
        while names - self.seen and time.monotonic() < deadline:
            time.sleep(self.interval_s)
        return names - self.seen

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

