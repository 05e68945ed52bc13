"""A readable console: what a user can act on, and nothing else.

Stages print one ``[ying]`` progress line per long step (``ying.progress``). Around them, Ray and
the libraries it runs print a lot that nobody can act on: Ray Data's progress bars (redrawn with
cursor-control codes, one per operator), its execution plans, Tune's trial tables, Train's
per-report notices, DeepSpeed's and transformers' notices, torch's FutureWarnings about calls
only the libraries make. They are turned off where they start:

- ``worker_env()``: environment variables for every Ray worker of a run (the job's runtime_env);
- ``quiet_stage_process()``: called first in every stage task (and CPU task), where Ray Data runs;
- ``filter_forwarded_logs()``: in the driver, drops the few lines Ray itself forwards that no
  setting turns off (``FORWARDED_NOISE``).

Errors are never filtered: an exception still ends the stage with its traceback, and warnings
about Ying's own code still show.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Callable

__all__ = ["worker_env", "quiet_stage_process", "filter_forwarded_logs", "is_noise", "FORWARDED_NOISE",
           "TRAIN_LOG_LEVEL"]

# Ray Train's own INFO lines (worker group started, report N, checkpoint created) are in the
# session's train logs; the console keeps its warnings and errors. For RunConfig(logging_config=...).
TRAIN_LOG_LEVEL = "WARNING"

# torch.distributed's deprecation wrapper warns, from this module, about calls DeepSpeed makes.
_PYTHONWARNINGS = "ignore::FutureWarning:torch.distributed.c10d_logger"

# Lines Ray forwards to the driver that no setting turns off, each with why nobody can act on it.
FORWARDED_NOISE: list[tuple[re.Pattern, str]] = [
    (re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store "
                r"and max_restarts > 0"),
     "Ray Data's and Ray Train's own actors; a note for Ray's developers (ray-project/ray#53727)"),
    (re.compile(r"Task ServeController\.graceful_shutdown failed"),
     "serve.shutdown() kills the controller while its own graceful_shutdown call is in flight"),
    (re.compile(r"DeepSpeed deepspeed\.ops\.comm\.\w+ built successfully"),
     "DeepSpeed prints it in every CPU training worker"),
    (re.compile(r"Progress bars (for operators )?disabled\. To enable, set"),
     "Ray Data's note that its bars are off: Ying turns them off on purpose"),
    (re.compile(r"PYTHON worker processes have been started on node: \w+ with address: \S+, which is \d+x the "
                r"maximum expected startup concurrency"),
     "stage tasks ask for 0 CPUs and training workers for fractions on purpose; the raylet counts the processes"),
    (re.compile(r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group"),
     "Ray Train's cleanup after every finished run (each LR-search and ablation trial is one)"),
    (re.compile(r"Reporting training result \d+: TrainingReport\("),
     "Ray Train's notice for every report, on a logger its LoggingConfig does not reach"),
]


def worker_env() -> dict[str, str]:
    """Environment for every Ray worker process of a run (Train workers, Data actors, Serve replicas)."""
    return {
        # transformers' "Loading weights" bar (huggingface_hub's switch turns off both libraries' bars).
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": _PYTHONWARNINGS,
        # Ray Train routes a worker's print() to its logger and also echoes it to a wrapped stdout,
        # so each progress line of a training worker reached the console twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # Ray Data's INFO lines ("Dataset ... execution finished") from the actors it starts itself,
        # e.g. Train's SplitCoordinator, where quiet_stage_process never runs; warnings still show.
        "RAY_DATA_LOG_LEVEL": "WARNING",
        # Each ray.data.read_parquet starts this many actors (a worker process each, 128 I/O threads
        # apiece) to read the files' footers; Ray's default is 32 whatever the file count. The rephrase
        # stage's read took 8.4-8.6 s with 32 and 5.3 s with 2 (default DAG's records, 2 cores).
        "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
    }


def _filter_warnings() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\.c10d_logger")


def quiet_stage_process() -> None:
    """Settings for the process a stage (or a stage's CPU task) runs in. Idempotent."""
    _filter_warnings()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Ray Data's bars are redrawn in place with cursor codes: in a log (and through Ray's log
    # forwarding) each redraw is a new line. Stages print their own progress line instead.
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    # "Registered dataset logger", "Starting execution of Dataset", "Dataset ... execution finished"
    # stay in Ray Data's log file in the session folder; warnings and errors still reach the console.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Tune (the LR search runs in its stage's process): with RunConfig(verbose=0), the classic
    # output prints nothing, where the new one still prints its experiment table and TensorBoard
    # hints; "Wrote the latest version of all result files" is an INFO of ray.tune.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    # Ray Train in a Tune trial's own process (local mode: ying.tune.runner) logs "Running in local
    # mode" and every report's metrics at INFO, with no LoggingConfig to reach them: TRAIN_LOG_LEVEL.
    logging.getLogger("ray.train").setLevel(TRAIN_LOG_LEVEL)
    # Serve's client lines ("Started Serve", "Deleting app") in the stage that checks the app.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def is_noise(line: str) -> bool:
    return any(pattern.search(line) for pattern, _ in FORWARDED_NOISE)


def _filtered(handler: Callable[..., None]) -> Callable[..., None]:
    def handle(data: dict, *args, **kwargs) -> None:
        lines = [line for line in data.get("lines", []) if not is_noise(line)]
        if lines:
            handler({**data, "lines": lines}, *args, **kwargs)

    handle._ying_filtered = True  # type: ignore[attr-defined]
    return handle


def filter_forwarded_logs() -> bool:
    """Drop ``FORWARDED_NOISE`` lines from what Ray prints in this driver for its workers and raylets.

    Ray has no public hook for this. Worker output reaches ``ray._private.worker.print_to_stdstream``
    through a log dispatcher (whose handler ``ray.init`` binds), and raylet error messages are passed
    to it directly; both are wrapped (call this before ``ray.init``, or after: both cases are
    covered). If Ray's internals moved, nothing is filtered and False is returned; nothing fails.
    """
    try:
        import ray._private.worker as worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        if not getattr(worker.print_to_stdstream, "_ying_filtered", False):
            worker.print_to_stdstream = _filtered(worker.print_to_stdstream)
        with dispatcher._lock:
            dispatcher.handlers = [
                (name, _filtered(h) if name == "ray_print_logs" and not getattr(h, "_ying_filtered", False) else h)
                for name, h in dispatcher.handlers]
        return True
    except (ImportError, AttributeError, TypeError):
        return False
