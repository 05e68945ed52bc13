"""Evaluations over HTTP: a paper suite (or a list of tasks) for one served model, run on the cluster.

``POST /v1/evaluations`` hands the request to ``EvaluationRegistry`` (a one-replica Serve deployment
of the app, so it lives and dies with the app). The registry answers at once with an id and starts a
Ray task, ``run_evaluation``, which goes through the eval stage's own path in ``ying.eval.evaluate``:
the examples (``plan_evaluation``), answers from the Ray Data model actors with the prediction
cache shared with the DAG's eval stage (``predict_plan``: ``eval.use_gpu`` puts them on GPUs in the
model's dtype), the scores (``score_plan``) and the report table (``suite_table``). Nothing runs
inside the model replicas.

The id is the hash of what decides the result: the model's weights fingerprint, the suite, the
data's fingerprint, the limit and the decoding settings. A finished result is stored under
``<eval cache dir>/serve-evaluations/<id>.json`` (``ying.eval.evaluate.eval_cache_dir``), so asking
again (even after a restart) answers from the store, and an identical request in flight gets the same id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any, Iterator

import ray

from ying import storage
from ying.config import YingConfig

__all__ = ["paper_suite_names", "resolve_suite", "evaluation_id", "run_evaluation",
           "EvaluationRegistry", "results_dir"]

logger = logging.getLogger(__name__)

# A list of tasks, each with its own instruction: ying.eval.evaluate.TASKS_SUITE, not imported from
# there so that the ingress does not load the metrics (nltk) at start.
TASKS_SUITE = "tasks"


def paper_suite_names() -> dict[str, str]:
    """``{"table4": "kvqa", ...}``: each suite under the name of the paper table or figure it fills."""
    from ying.eval.suites import SUITES

    return {s.paper.lower().replace(" ", ""): name for name, s in SUITES.items()}


def resolve_suite(suite: str | list[str], built_tasks: list[str]) -> tuple[str, list[str]]:
    """(suite name, tasks) for a request's ``suite``; ValueError naming the valid choices."""
    from ying.eval.suites import SUITES

    if isinstance(suite, list):
        if not suite:
            raise ValueError(f"suite: an empty task list; tasks with data here: {sorted(built_tasks)}")
        unknown = [t for t in suite if t not in built_tasks]
        if unknown:
            raise ValueError(f"suite: unknown task(s) {unknown}; tasks with data here: {sorted(built_tasks)}")
        return TASKS_SUITE, sorted(set(suite))
    tables = paper_suite_names()
    key = suite.strip().lower().replace(" ", "")
    name = tables.get(key, key if key in SUITES else None)
    if name is None:
        valid = [f"{t} ({n})" for t, n in tables.items()]
        raise ValueError(f"suite: unknown suite {suite!r}; valid: {', '.join(valid)}, or a list of task names")
    return name, list(SUITES[name].tasks)


def results_dir(cfg: YingConfig) -> str:
    from ying.eval.evaluate import eval_cache_dir

    return storage.join(eval_cache_dir(cfg), "serve-evaluations")


def _data_fingerprint(data_dir: str) -> str:
    """``records.data_fingerprint`` of a data dir to evaluate on, which must hold records."""
    from ying.data.records import data_fingerprint, list_files
    from ying.data.schema import SPLITS

    if not any(list_files(data_dir, split)[1] for split in SPLITS):
        raise FileNotFoundError(f"{data_dir} holds no records (records/<split>/*.parquet)")
    return data_fingerprint(data_dir)


def evaluation_id(model_fingerprint: str, suite: str, tasks: list[str], data_fp: str, limit: int,
                  cfg: YingConfig) -> str:
    e = cfg.eval
    return "eval-" + storage.fingerprint({
        "model": model_fingerprint, "suite": suite, "tasks": tasks, "data": data_fp, "limit": limit,
        "decoding": [e.max_new_tokens, e.caption_max_new_tokens], "chair": [e.chair_vocabulary, e.chair_instances],
    })


def _evaluate(cfg: YingConfig, spec: dict) -> Iterator[dict]:
    """Yields ``{"progress": ...}`` items, then ``{"result": ...}``: the eval stage's own path
    (``plan_evaluation``, ``predict_plan``, ``score_plan``, its report tables) for one model."""
    from ying.eval.evaluate import plan_evaluation, predict_plan, score_plan, suite_table
    from ying.eval.predictors import ModelSpec
    from ying.eval.report import render_report, render_suite_table

    model, suite, tasks, limit = spec["model"], spec["suite"], spec["tasks"], spec["limit"]
    yield {"progress": {"phase": "reading records", "fraction": 0.05}}
    is_tasks = suite == TASKS_SUITE
    plan = plan_evaluation(cfg, spec["data_dir"], suites=[] if is_tasks else [suite], tasks=tasks if is_tasks else [],
                           limit=limit, sources=spec["sources"])
    n = plan.n_examples
    yield {"progress": {"phase": "generating answers", "fraction": 0.1, "examples": n}}
    answers, cache = predict_plan(cfg, ModelSpec(model, "ying", spec["checkpoint"]), plan.suite_examples(),
                                  spec["cache_dir"], fingerprint=spec["model_fingerprint"])
    yield {"progress": {"phase": "scoring", "fraction": 0.9, "examples": n, **cache}}
    scores = score_plan(plan, answers)
    if is_tasks:
        metrics = scores["tasks"]
        not_run = {t: f"no {t} data" for t in plan.not_scored}
        report = render_report({model: metrics}, title=f"{model}: {', '.join(tasks)}")
        if not_run:
            report += "\n" + "\n".join(f"- {t}: not run: {why}" for t, why in not_run.items()) + "\n"
        result = {"metrics": metrics, "not_run": not_run}
    else:
        table = suite_table(plan, suite, {model: scores["suites"][suite]})
        report = render_suite_table(table)
        result = {"metrics": scores["suites"][suite], "not_run": table["not_run"], "paper": table["paper"],
                  "title": table["title"]}
    result.update({"report": report, "examples": n, "prediction_cache": cache})
    yield {"result": result}


@ray.remote(num_cpus=0, max_retries=0)
def run_evaluation(cfg: YingConfig, spec: dict):
    """A Ray task (zero CPUs: the Ray Data model actors it starts ask for their own): progress items,
    then the result, which is also stored for the next identical request."""
    started = time.time()
    for item in _evaluate(cfg, spec):
        if "result" in item:
            item["result"]["seconds"] = round(time.time() - started, 1)
            storage.write_json_atomic(storage.join(spec["results_dir"], f"{spec['id']}.json"),
                                      {**item["result"], "request": {k: spec[k] for k in ("model", "suite", "tasks", "limit")}})
        yield item


class EvaluationRegistry:
    """State of every evaluation this app started: ``queued`` -> ``running`` -> ``done`` | ``failed``."""

    def __init__(self, cfg: YingConfig, data_dir: str | None, data_fp: str | None, sources: dict[str, str]):
        self.cfg = cfg
        self.data_dir = data_dir
        self.data_fp = data_fp
        self.sources = sources
        self.results_dir = results_dir(cfg)
        self.jobs: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, model: str, checkpoint: str, suite: str, tasks: list[str], limit: int) -> dict:
        from ying.eval.evaluate import eval_cache_dir
        from ying.eval.predictors import ModelSpec, model_fingerprint

        if self.data_dir is None:
            raise ValueError("this server has no evaluation data: start it from a run (`ying serve --run-dir`) "
                             "or give data_dir")
        model_fp, data_fp = await asyncio.gather(
            asyncio.to_thread(model_fingerprint, ModelSpec(model, "ying", checkpoint)),
            asyncio.to_thread(lambda: self.data_fp or _data_fingerprint(self.data_dir)))
        eval_id = evaluation_id(model_fp, suite, tasks, data_fp, limit, self.cfg)
        job = self.jobs.get(eval_id)
        if job is not None and job["state"] != "failed":
            return self._public(job)
        stored = await asyncio.to_thread(self._stored, eval_id)
        request = {"model": model, "suite": suite, "tasks": tasks, "limit": limit}
        if stored is not None:
            self.jobs[eval_id] = {"id": eval_id, "state": "done", "progress": {"phase": "done", "fraction": 1.0},
                                  "cached": True, **request, **stored}
            return self._public(self.jobs[eval_id])
        job = {"id": eval_id, "state": "queued", "progress": {"phase": "queued", "fraction": 0.0},
               "created": time.time(), "cached": False, **request}
        self.jobs[eval_id] = job
        spec = {**request, "id": eval_id, "checkpoint": checkpoint, "model_fingerprint": model_fp,
                "data_dir": self.data_dir, "sources": self.sources, "cache_dir": eval_cache_dir(self.cfg),
                "results_dir": self.results_dir}
        task = asyncio.get_running_loop().create_task(self._follow(job, spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self._public(job)

    async def _follow(self, job: dict, spec: dict) -> None:
        try:
            stream = run_evaluation.options(num_returns="streaming", name=f"ying:{job['id']}").remote(self.cfg, spec)
            async for ref in stream:
                item = await ref
                if "progress" in item:
                    job.update(state="running", progress=item["progress"])
                else:
                    job.update(state="done", progress={"phase": "done", "fraction": 1.0}, **item["result"])
            if job["state"] != "done":
                raise RuntimeError("the evaluation task ended without a result")
        except Exception as e:  # the evaluation's failure is reported, not raised into the replica
            logger.warning("evaluation %s failed: %s", job["id"], "".join(traceback.format_exception_only(e)).strip())
            job.update(state="failed", error=f"{type(e).__name__}: {_short(e)}")

    def _stored(self, eval_id: str) -> dict | None:
        path = storage.join(self.results_dir, f"{eval_id}.json")
        if not storage.exists(path):
            return None
        try:
            stored = storage.read_json(path)
        except (json.JSONDecodeError, OSError):
            return None
        return {**stored.pop("request", {}), **stored}

    async def get(self, eval_id: str) -> dict | None:
        job = self.jobs.get(eval_id)
        if job is not None:
            return self._public(job)
        if not eval_id.startswith("eval-") or not eval_id[5:].isalnum():
            return None
        stored = await asyncio.to_thread(self._stored, eval_id)
        if stored is None:
            return None
        return self._public({"id": eval_id, "state": "done", "progress": {"phase": "done", "fraction": 1.0},
                             "cached": True, **stored})

    @staticmethod
    def _public(job: dict) -> dict:
        return {k: v for k, v in job.items() if k != "created"}


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    # A RayTaskError's text starts with its traceback; its last line says what went wrong.
    return (text[-1] if text else "")[:500]
