"""Metric definitions shared by the pipeline and ``dashboards/ying.json``.

Every metric is a ``ray.util.metrics`` Counter or Gauge, created lazily on first use in the
process that records it (a Ray Data actor, a Train worker, a stage task). Each process pushes its
values to its node's metrics agent every few seconds (and when it exits), and Ray exposes them to
Prometheus on the node's metrics export port (``ray start --metrics-export-port``; 8080 in
cluster.yaml), with a ``ray_`` prefix, plus a ``_total`` suffix for counters:
``ying_records_built`` is charted as ``ray_ying_records_built_total``. ``exported_name`` does that
mapping. Every series also carries Ray's ``SessionName`` label, which the dashboard filters on.

Record while the work runs (per chunk, per request, per logging step), not once at the end, so a
rate panel shows progress rather than one spike; and keep tag values few (a task key, a short
reason), since each distinct tag set is a series of its own.

Adding a metric: append a ``MetricSpec`` below and an accessor, chart it in ``dashboards/ying.json``
(tests/test_packaging.py fails on a metric nobody charts), and make sure a run of
tests/test_full_dag.py records it: that test scrapes Ray's endpoint during the run and fails on
any series a dashboard queries that never shows up.

Ray drops a metric with an invalid name with only a warning, so names are checked at import.

    from ying import telemetry
    telemetry.records_counter().inc(n, tags={"task": "vqa-v2"})
    telemetry.train_loss_gauge().set(loss, tags={"stage": "stage2"})
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MetricSpec",
    "METRICS",
    "exported_name",
    "exported_names",
    "rephrase_requests_counter",
    "rephrase_failures_counter",
    "rephrase_cache_hits_counter",
    "rephrase_tokens_counter",
    "records_counter",
    "records_rejected_counter",
    "train_loss_gauge",
    "train_samples_per_s_gauge",
    "eval_examples_counter",
]

# Ray's own rule (ray/util/metrics.py), minus ':' which Ray has deprecated in names.
_VALID_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the name given to Ray, without the exported ray_ prefix
    kind: Literal["counter", "gauge"]
    description: str
    tag_keys: tuple[str, ...] = ()


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in [
        # Rephrasing (LLM client stage): one request per record sent to the LLM.
        MetricSpec("ying_rephrase_requests", "counter", "LLM rephrase requests sent.", ("task",)),
        MetricSpec(
            "ying_rephrase_failures",
            "counter",
            "LLM rephrase requests that failed after retries; the record keeps its original target.",
            ("task", "reason"),
        ),
        MetricSpec(
            "ying_rephrase_cache_hits",
            "counter",
            "Rephrases served from the rephrase cache instead of the LLM.",
            ("task",),
        ),
        MetricSpec(
            "ying_rephrase_tokens",
            "counter",
            "LLM tokens used by rephrasing; kind is prompt or completion.",
            ("task", "kind"),
        ),
        # Building unified records.
        MetricSpec("ying_records_built", "counter", "Unified records written.", ("task",)),
        MetricSpec(
            "ying_records_rejected",
            "counter",
            "Source instances rejected while building records (bad image, empty target, ...).",
            ("task", "reason"),
        ),
        # Training (reported by rank 0 of each Train run).
        MetricSpec("ying_train_loss", "gauge", "Latest training loss.", ("stage",)),
        MetricSpec(
            "ying_train_samples_per_s",
            "gauge",
            "Training throughput over the last logging window, in samples per second.",
            ("stage",),
        ),
        # Evaluation: examples answered per model and suite; source is generated (the model ran)
        # or cached (a re-run found the answer in the prediction cache).
        MetricSpec(
            "ying_eval_examples",
            "counter",
            "Evaluation examples answered, per model and suite; source is generated or cached.",
            ("model", "suite", "source"),
        ),
    ]
}

for _spec in METRICS.values():
    assert _VALID_NAME.match(_spec.name), f"invalid Ray metric name {_spec.name!r}"


def exported_name(name: str) -> str:
    """The Prometheus series name Ray exports for metric ``name`` (``ray_`` + name [+ ``_total``])."""
    spec = METRICS[name]
    return f"ray_{spec.name}" + ("_total" if spec.kind == "counter" else "")


def exported_names() -> set[str]:
    return {exported_name(name) for name in METRICS}


_lock = threading.Lock()
_instances: dict[str, object] = {}


def _get(name: str):
    """One Ray metric object per name and process, created on first use."""
    metric = _instances.get(name)
    if metric is not None:
        return metric
    with _lock:
        metric = _instances.get(name)
        if metric is None:
            from ray.util.metrics import Counter, Gauge

            spec = METRICS[name]
            cls = Counter if spec.kind == "counter" else Gauge
            metric = cls(spec.name, description=spec.description, tag_keys=spec.tag_keys)
            _instances[name] = metric
    return metric


def rephrase_requests_counter():
    return _get("ying_rephrase_requests")


def rephrase_failures_counter():
    return _get("ying_rephrase_failures")


def rephrase_cache_hits_counter():
    return _get("ying_rephrase_cache_hits")


def rephrase_tokens_counter():
    return _get("ying_rephrase_tokens")


def records_counter():
    return _get("ying_records_built")


def records_rejected_counter():
    return _get("ying_records_rejected")


def train_loss_gauge():
    return _get("ying_train_loss")


def train_samples_per_s_gauge():
    return _get("ying_train_samples_per_s")


def eval_examples_counter():
    return _get("ying_eval_examples")
