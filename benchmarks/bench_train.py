"""What Ray Train + DeepSpeed + Ray Data ingest cost against a plain torch loop, how much of the
data a stage reads, and whether a killed worker costs more than one checkpoint interval.

    python benchmarks/bench_train.py --workdir /tmp/bench_train          # ~10 minutes on 2 cores

Runs, side by side, the tiny preset's model, batch and steps (Stage I on coco captions of the
default mini-world, built once into WORKDIR/data by the one-process build: laion, Stage I's other
task in the preset, is read as a Ray Dataset and has no one-process build, so it is left out):
  (a) bare   a plain torch loop in this process: reads and encodes its records inline, AdamW, the
             same schedule; ``--threads`` torch threads
  (b) ray-1  Ray Train + DeepSpeed, one worker with ``--threads`` torch threads, records through
             Ray Data (decoded and tokenized on another CPU)
  (c) ray-2  the same with two workers
  in-process (b) in this process, as a Tune trial of one worker trains (Ray Train's local mode),
             twice: the second as a reused trial process does, its imports done
  task       (b) as a stage of one worker trains it: in a Ray task holding the worker's CPUs
             (``ying.train.stages.fit_stage``), twice: the second in the pooled process the first
             left; its start-up is timed from the driver (the task's scheduling and process included)
  read       one epoch of (b) with a filesystem that counts the bytes Ray Data's readers read,
             divided by the bytes of the stage's own training files (coco train); the data dir also
             holds every other task's files, which Stage I must not read. The driver's record
             index (every train file's footer, once) is counted apart: index_read_amplification
  kill       (c) with a checkpoint every --checkpoint-every steps; one worker is SIGKILLed once
             half an interval of steps past the first checkpoint is reported; steps redone = last
             step reported before the kill - resume step
samples/s excludes each run's first logging window (start-up, first compile). startup_s per Ray
run: the fit's seconds minus rank 0's training seconds (the summary's timings["overhead"]: worker
group, imports, DeepSpeed, model, checkpoints, shutdown), the breakdown printed for ray-1; the kill
run's also holds the first attempt and the restart. The last line is JSON with ray_vs_bare
(b / a), read_amplification, index_read_amplification, startup_s, kill_resume_finished,
steps_redone_after_kill, checkpoint_every and the raw rates. Run it alone on the machine: other
load skews every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from ying.config import load_config  # noqa: E402
from ying.train import controller_env  # noqa: E402  (Ray Train's controller as in a tiny Ying run)

os.environ.update(controller_env(load_config("tiny").train))  # the cluster this script starts passes it on


def build_data(workdir: Path) -> str:
    """The default mini-world, built in one process (no Ray), reused across runs: every task the
    one-process build can read (not laion, which unify reads as a Ray Dataset)."""
    from ying.config import load_config
    from ying.data.build import build_unified_local, reads_dataset
    from ying.data.miniworld import generate_miniworld

    data_dir = workdir / "data"
    if (data_dir / "records" / "train").exists():
        return str(data_dir)
    tasks = [t for t in load_config("tiny").data.tasks if not reads_dataset(t)]
    cfg = load_config("tiny", overrides=[f"run.run_dir={workdir}", f"data.tasks=[{','.join(tasks)}]"])
    sources = generate_miniworld(str(workdir / "sources"), cfg.miniworld, cfg.run.seed, cfg.data.tasks)
    build_unified_local(cfg, sources, str(data_dir))
    return str(data_dir)


def bare_loop(cfg, data_dir: str, steps: int, threads: int, log_every: int) -> float:
    """(a): the same model, batch, optimizer and schedule; records read and encoded inline."""
    import pyarrow.parquet as pq
    import torch

    from ying.model.processor import YingProcessor
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import answer_loss, apply_freeze_policy, build_model
    from ying.train.ingest import stage_files
    from ying.train.loop import _param_groups, lr_lambda

    torch.set_num_threads(threads)
    spec = cfg.train.stage1
    tok = build_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tok, seed=cfg.run.seed).train()
    apply_freeze_policy(model, spec.trainable)
    proc = YingProcessor.from_model_config(tok, cfg.model)
    opt = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, spec.warmup_steps, steps))
    fs, files = stage_files(data_dir, "train", spec.tasks)

    def records():
        while True:
            for f in files:
                with fs.open(f, "rb") as fh:
                    for row in pq.read_table(fh).to_pylist():
                        if row["task"] in spec.tasks:
                            yield row

    stream = records()
    rates, t = [], time.time()
    for step in range(1, steps + 1):
        batch = proc.collate([proc.encode_train(next(stream)) for _ in range(spec.batch_size)])
        loss, _ = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0:
            rates.append(log_every * spec.batch_size / (time.time() - t))
            t = time.time()
    return sum(rates[1:]) / len(rates[1:])


def step_log_callback(path: str):
    """A Ray Train callback (it runs in the controller process) appending every reported step to ``path``."""
    import ray.train

    class StepLog(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({"step": metrics[0].get("step"), "checkpoint": checkpoint is not None}) + "\n")

    return StepLog()


def ray_run(cfg, data_dir: str, workdir: Path, name: str, steps: int, log_every: int,
            checkpoint_every: int = 0, filesystem=None, callbacks=None, kill_after_checkpoint: bool = False,
            dashboard: str = "", step_log: str = "", in_process: bool = False, task: bool = False):
    """One Stage I run on Ray Train; returns (summary, seconds); the summary's timings as
    ``ying.train.stages.fit`` reports them (``fit_timings``), plus the plan's seconds. ``in_process``:
    in this process as a Tune trial of one worker trains (``fit(in_process=True)``). ``task``: as a
    stage of one worker trains (``fit_stage``), its overhead counted from here."""
    from ying.train.stages import fit, fit_stage, fit_timings, stage_plan, trainer_for

    planned = time.time()
    # ``filesystem``: the workers' Ray Data readers open the records through it (it counts bytes).
    plan = stage_plan(cfg, "stage1", data_dir, None, max_steps=steps, log_every=log_every,
                      checkpoint_every=checkpoint_every, val_examples=0, context=name, filesystem=filesystem)
    storage = workdir / "ray" / name
    shutil.rmtree(storage, ignore_errors=True)  # a run of an earlier bench must not be resumed
    if in_process:
        t0 = time.time()
        summary = fit(cfg, plan, str(storage), name, in_process=True)
        summary["timings"]["plan"] = round(t0 - planned, 3)
        return summary, time.time() - t0
    if task:
        t0 = time.time()
        summary = fit_stage(cfg, plan, str(storage))
        seconds = time.time() - t0
        # The task's own timings start in its process: count from here, scheduling and process start included.
        summary["timings"]["overhead"] = round(seconds - summary["timings"]["worker"].get("train", 0.0), 3)
        summary["timings"]["plan"] = round(t0 - planned, 3)
        return summary, seconds
    trainer = trainer_for(cfg, plan, str(storage), name, callbacks=callbacks)
    killer = None
    if kill_after_checkpoint:
        killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                                  args=(storage / name, dashboard, step_log, checkpoint_every // 2), daemon=True)
        killer.start()
    t0 = time.time()
    planned = t0 - planned
    result = trainer.fit()
    if result.error:
        raise result.error
    summary = result.return_value
    summary["timings"] = fit_timings(summary.get("timings") or {}, t0, time.time())
    summary["timings"]["plan"] = round(planned, 3)
    return summary, time.time() - t0


def _kill_a_worker_after_first_checkpoint(run_dir: Path, dashboard: str, step_log: str, past: int) -> None:
    from ray.util.state import list_actors

    # The workers are looked up first, so that no State API call (a second or more) stands between
    # the awaited step and the kill.
    workers = []
    while len(workers) < 2:
        workers = [a.pid for a in list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"),
                                                                           ("state", "=", "ALIVE")]) if a.pid]
        time.sleep(0.2)
    while not (done := sorted(run_dir.glob("resume/step_*/COMPLETE.json"))):  # the first complete resume checkpoint
        time.sleep(0.05)
    first = int(done[0].parent.name.split("_")[-1])
    # ``past`` steps reported after it, so the kill lands between checkpoints (a fixed sleep once
    # landed before the next step's report, and the restart left no trace in the step log).
    while max(_logged_steps(step_log), default=0) < first + past:
        time.sleep(0.05)
    os.kill(workers[-1], signal.SIGKILL)
    print(f"[bench] killed training worker pid {workers[-1]}", flush=True)


def _logged_steps(path: str) -> list[int]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]


def kill_outcome(steps: list[int], resumed: int, final_step: int, kill_steps: int) -> tuple[int, int, int]:
    """(last step reported before the kill, steps redone, finished) from the reported steps in order.

    After the restart steps count up again from ``resumed + 1``: a step not above the one before
    marks it. No such step, yet a resume (``resumed`` > 0): the kill landed before any step past
    the checkpoint was reported, so none was redone.
    """
    restart_at = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if restart_at is not None:
        before_kill = steps[restart_at - 1]
    else:
        before_kill = resumed if resumed else max(steps, default=0)  # resumed: its checkpoint was trained
    redone = max(0, before_kill - resumed) if resumed or restart_at is not None else 0
    finished = int(final_step == kill_steps and (restart_at is not None or resumed > 0))
    return before_kill, redone, finished


def startup_breakdown(timings: dict) -> dict:
    """A fit's seconds outside training, by step (rank 0's steps but ``train`` nested under ``worker``)."""
    worker = {k: v for k, v in (timings.get("worker") or {}).items() if k != "train"}
    return {"overhead": timings["overhead"], "plan": timings.get("plan"), "to_loop": timings["to_loop"],
            "process_to_loop": timings.get("process_to_loop"), "worker": worker,
            "after_loop": timings["after_loop"], "train": (timings.get("worker") or {}).get("train")}


def mean_rate(summary: dict) -> float:
    rates = [h["samples_per_s"] for h in summary["history"]][1:]
    return sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="where the data and runs go (default: a temp dir)")
    p.add_argument("--steps", type=int, default=80, help="optimizer steps per throughput run (default 80)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for (a) and (b) (default 1)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=10, help="kill run: steps between checkpoints")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)

    import ray

    from counting_fs import CountingLocalFileSystem, bytes_read
    from ying.config import load_config
    from ying.train.ingest import stage_files

    data_dir = build_data(workdir)
    base = ["train.max_failures=2", f"train.torch_threads={args.threads}", "train.stage1.val_examples=0"]
    base += ["train.stage1.tasks=[coco]"]  # the data holds no laion (see build_data)
    cfg1 = load_config("tiny", overrides=base + ["train.num_workers=1", f"train.cpus_per_worker={args.threads}",
                                                  f"train.data_cpus={max(0.5, os.cpu_count() - args.threads)}"])
    cfg2 = load_config("tiny", overrides=base)
    print(f"[bench] data {data_dir}; {args.steps} steps of batch {cfg1.train.stage1.batch_size}; "
          f"{args.threads} torch thread(s)", flush=True)

    bare = bare_loop(cfg1, data_dir, args.steps, args.threads, args.log_every)
    print(f"[bench] (a) bare torch loop: {bare:.1f} samples/s", flush=True)

    context = ray.init(num_cpus=os.cpu_count(), include_dashboard=True, log_to_driver=False,
                       runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}})
    dashboard = f"http://{context.dashboard_url}"
    one, _ = ray_run(cfg1, data_dir, workdir, "one", args.steps, args.log_every)
    print(f"[bench] (b) Ray Train + DeepSpeed, 1 worker: {mean_rate(one):.1f} samples/s; start-up "
          f"{one['timings']['overhead']:.1f} s", flush=True)
    print(f"[bench] (b)'s start-up breakdown (s): {json.dumps(startup_breakdown(one['timings']))}", flush=True)
    two, _ = ray_run(cfg2, data_dir, workdir, "two", args.steps, args.log_every)
    print(f"[bench] (c) Ray Train + DeepSpeed, 2 workers: {mean_rate(two):.1f} samples/s; start-up "
          f"{two['timings']['overhead']:.1f} s", flush=True)
    # (b) as a Tune trial of one worker trains it: in its own process, imports done by the trial before.
    trials = [ray_run(cfg1, data_dir, workdir, f"in-process-{i}", args.steps, args.log_every, in_process=True)[0]
              for i in range(2)]
    print(f"[bench] (b) in this process (Ray Train's local mode), twice: {mean_rate(trials[1]):.1f} samples/s; "
          f"start-up {trials[0]['timings']['overhead']:.1f} s then {trials[1]['timings']['overhead']:.1f} s", flush=True)
    print(f"[bench] its start-up breakdown (s): {json.dumps(startup_breakdown(trials[1]['timings']))}", flush=True)
    # The same plan twice in one process: the same losses at every logged step (nothing carried over).
    same_bytes = [h["loss"] for h in trials[0]["history"]] == [h["loss"] for h in trials[1]["history"]]
    # (b) as a stage of one worker trains it: a Ray task, twice (the second in the process the first left).
    tasks = [ray_run(cfg1, data_dir, workdir, f"task-{i}", args.steps, args.log_every, task=True)[0] for i in range(2)]
    print(f"[bench] (b) in a Ray task (a 1-worker stage), twice: {mean_rate(tasks[1]):.1f} samples/s; start-up "
          f"{tasks[0]['timings']['overhead']:.1f} s then {tasks[1]['timings']['overhead']:.1f} s, from the driver; "
          f"in_process={tasks[1]['in_process']}", flush=True)

    # One epoch of the stage's records through a filesystem that counts what the readers read.
    stage_tasks = list(cfg1.train.stage1.tasks)
    fs, own_files = stage_files(data_dir, "train", stage_tasks)
    own_bytes = sum(fs.size(f) for f in own_files)
    _, all_files = stage_files(data_dir, "train", cfg1.data.tasks)
    all_bytes = sum(fs.size(f) for f in all_files)
    from ying.data.records import count_records

    from ying.train.sampler import record_index

    epoch_steps = count_records(data_dir, "train", stage_tasks) // cfg1.train.stage1.batch_size
    counter_dir = workdir / "read-counts"
    index_counter_dir = workdir / "index-read-counts"
    for folder in (counter_dir, index_counter_dir):
        folder.mkdir(exist_ok=True)
        for f in folder.glob("*"):
            f.unlink()
    # The driver's index (stage_plan builds it from every train file's footer) read through a
    # counting filesystem too, so that no read of the stage's data goes uncounted.
    record_index(data_dir, "train", stage_tasks, filesystem=CountingLocalFileSystem(counter_dir=str(index_counter_dir)))
    index_read = bytes_read(str(index_counter_dir))
    read_run, _ = ray_run(cfg1, data_dir, workdir, "read", epoch_steps, epoch_steps,
                          filesystem=CountingLocalFileSystem(counter_dir=str(counter_dir)))
    read = bytes_read(str(counter_dir))
    amplification = read / own_bytes
    print(f"[bench] one epoch ({epoch_steps} steps) read {read:,} bytes; the stage's own files {own_bytes:,}; "
          f"every task's train files {all_bytes:,}; the driver's index read {index_read:,}", flush=True)

    log = workdir / "kill-steps.jsonl"
    log.unlink(missing_ok=True)
    # Long enough that the kill lands mid-run: on a fast hour 40 steps (4 s) were done before the step
    # log, which the controller writes a little behind the workers, showed the first checkpoint.
    kill_steps = max(12 * args.checkpoint_every, 120)
    summary, _ = ray_run(cfg2, data_dir, workdir, "kill", kill_steps, 1, checkpoint_every=args.checkpoint_every,
                         callbacks=[step_log_callback(str(log))], kill_after_checkpoint=True,
                         dashboard=dashboard, step_log=str(log))
    resumed = summary.get("resumed_from_step") or 0
    before_kill, redone, finished = kill_outcome(_logged_steps(str(log)), resumed, summary["step"], kill_steps)
    print(f"[bench] kill: trained to step {before_kill} before the kill, resumed at {resumed}, redid {redone} "
          f"step(s), finished {summary['step']}/{kill_steps}", flush=True)
    ray.shutdown()

    startup = {kind: run["timings"]["overhead"]
               for kind, run in (("ray-1", one), ("ray-2", two), ("in-process", trials[1]), ("task", tasks[0]),
                                 ("task-again", tasks[1]), ("read", read_run), ("kill", summary))}
    print(f"[bench] start-up (fit seconds minus training seconds): {json.dumps(startup)}", flush=True)
    result = {
        "ray_vs_bare": round(mean_rate(one) / bare, 3),
        "read_amplification": round(amplification, 3),
        "index_read_amplification": round(index_read / own_bytes, 3),
        "startup_s": startup,
        "kill_resume_finished": finished,
        "steps_redone_after_kill": redone,
        "checkpoint_every": args.checkpoint_every,
        "bare_samples_per_s": round(bare, 1),
        "ray_1_worker_samples_per_s": round(mean_rate(one), 1),
        "ray_2_workers_samples_per_s": round(mean_rate(two), 1),
        "in_process_samples_per_s": round(mean_rate(trials[1]), 1),
        "in_process_repeats_exactly": same_bytes,
        "task_samples_per_s": round(mean_rate(tasks[1]), 1),
        "threads": args.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
