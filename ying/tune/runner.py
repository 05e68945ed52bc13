"""Running a Tune experiment the way the DAG needs it: resumable, tied to what it computes.

An experiment's folder is named after its fingerprint (like a stage's Ray Train run): the same
experiment interrupted and run again is restored with ``Tuner.restore`` (finished trials are kept,
unfinished ones resume from their last Ray Train checkpoint), while a changed experiment starts
afresh and the folders of older ones are removed.

Where a trial trains:
- a trial of one worker trains in the trial's own process, with Ray Train's local mode
  (``ying.train.stages.fit(in_process=True)``): the process asks for the worker's resources, and Tune
  reuses it for the next trial (``reuse_actors``), so a trial starts no Train controller, helper
  actors or worker process, and imports nothing again. On 2 CPUs that was 20-30 s of every trial;
- a trial of several workers starts a worker group (a TorchTrainer) and only waits on it, so it asks
  for no CPU (Tune refuses an all-zero request: a token 1 MiB of memory instead); the workers ask
  for their own.
Either way the trial trains the same plan, bit for bit. Keep the dashboard on: Tune frees a stopped
trial's resources through the State API.
"""

from __future__ import annotations

from typing import Any, Callable

from ying import storage
from ying.config import YingConfig

__all__ = ["run_experiment", "trains_in_trial", "trial_resources", "trial_timing"]


def trains_in_trial(cfg: YingConfig) -> bool:
    """Whether a trial of ``cfg`` (the trial's config: its ``train.num_workers``) trains in its own process."""
    return cfg.train.num_workers == 1


def trial_resources(cfg: YingConfig) -> dict:
    """What one trial's process asks Tune for (see the module's notes)."""
    if trains_in_trial(cfg):
        return {"cpu": cfg.train.cpus_per_worker, **({"gpu": 1} if cfg.train.use_gpu else {})}
    return {"cpu": 0, "memory": 1 << 20}


def trial_timing(summary: dict) -> str:
    """A trained trial's console note: its steps, training seconds and start-up (the fit's seconds
    less training's: ``ying.train.stages.fit_timings``), and where it trained."""
    t = summary.get("timings") or {}
    where = "in the trial's process" if summary.get("in_process") else "in a worker group"
    return (f"{summary['step']} steps in {summary['train_seconds']:.1f} s, start-up {t.get('overhead', 0.0):.1f} s "
            f"({where})")


def run_experiment(name: str, fingerprint: str, trainable: Callable, param_space: dict, tune_config,
                   storage_dir: str, trial_cfg: YingConfig, fresh: bool = False):
    """Fit (or restore and finish) the experiment ``<name>-<fingerprint>`` under ``storage_dir``;
    ``trial_cfg`` (a trial's config) says where its trials train and what they ask for."""
    import ray.tune

    experiment = f"{name}-{fingerprint}"
    fs, root = storage.filesystem(storage_dir)
    if fs.exists(root):
        for entry in fs.ls(root, detail=False):
            folder = entry.rstrip("/").rsplit("/", 1)[-1]
            if folder.startswith(f"{name}-") and (folder != experiment or fresh) and fs.isdir(entry):
                print(f"[ying] {name}: removing Tune experiment {folder} (another configuration, or --force)",
                      flush=True)
                fs.rm(entry, recursive=True)
    ray_storage = storage.ray_run_storage(storage_dir)
    storage_path, storage_filesystem = ray_storage["storage_path"], ray_storage["storage_filesystem"]
    path = f"{storage_path.rstrip('/')}/{experiment}"
    trainable = ray.tune.with_resources(trainable, trial_resources(trial_cfg))
    if trains_in_trial(trial_cfg):
        tune_config.reuse_actors = True  # the next trial trains in a process that has imported everything
    if ray.tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
        print(f"[ying] {name}: resuming Tune experiment {experiment} (finished trials are kept)", flush=True)
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                       param_space=param_space, storage_filesystem=storage_filesystem)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=ray.tune.RunConfig(name=experiment, storage_path=storage_path,
                                          storage_filesystem=storage_filesystem, verbose=0,
                                          failure_config=ray.tune.FailureConfig(max_failures=1)),
        )
    return tuner.fit()


def last_results(results) -> list[dict[str, Any]]:
    """Each trial's config, last metrics and error, from a ``ResultGrid``."""
    out = []
    for r in results:
        out.append({"config": r.config, "metrics": dict(r.metrics or {}), "error": repr(r.error) if r.error else None,
                    "path": r.path})
    return out
