"""``ying``: run the whole DAG, or part of it, and inspect configs.

    ying run                          # the whole DAG on the embedded default (tiny preset, mini-world)
    ying run --preset paper --set data.sources.vqa-v2=/data/vqa ...
    ying run --until unify            # stop after a stage (later stages are not run)
    ying run --force stage2           # re-run a stage even if its manifest matches
    ying run --serve                  # keep the Serve app up at the end
    ying run --retry-failed           # re-send only the rephrase fallbacks (the rest comes from the cache)
    ying config --preset tiny         # print the resolved config
    ying plan-memory --preset paper   # per-GPU and per-node memory for ZeRO-2/3 on 40 and 80 GB GPUs, eval, serve
    ying stages                       # list the stages in order
    ying status --run-dir DIR         # each stage: done, stale (and why) or missing
    ying stats --data-dir DIR         # paper Tables 2, 3 and 9 -> DIR/stats.json, DIR/stats.md
    ying review --data-dir DIR        # QC review page: 20 random records per task and split -> review.html
    ying serve --run-dir DIR          # the run's models behind an OpenAI-compatible API, until Ctrl-C
    ying m3it import SRC --out DIR    # the released M3IT layout -> our Parquet records
    ying m3it export --data-dir DIR --out DST   # our records -> the M3IT layout (base64 JSONL)

``workflows/full.py`` is the same as ``ying run`` (and what ``ray job submit`` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "run_parser", "run_pipeline_from_args", "ablations_parser", "run_ablations_from_args",
           "print_status"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="tiny (embedded default: random-init model, mini-world) or paper")
    p.add_argument("--config", default=None, help="a YAML file merged over the preset")
    p.add_argument("--run-dir", default=None, help="where every stage writes (local path or s3://...); "
                   "default: run.run_dir of the config (runs/default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set train.stage2.lr=2e-5")


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ying run",
        description="Run Ying's DAG: sources -> unify -> rephrase -> qc -> stage1 -> tune -> stage2 -> eval -> "
        "report -> serve, with the ablations branching after tune and the paper's variants (--set "
        "'variants.enabled=[llava,zh,video]') trained before the eval. --set data.m3it=DIR trains on an M3IT "
        "release instead of the raw releases. Finished stages whose config, code and inputs are unchanged are "
        "skipped.",
    )
    _add_config_args(p)
    p.add_argument("--until", default=None, help="stop after this stage")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage (repeatable)")
    p.add_argument("--serve", action="store_true", help="keep the Serve app running at the end (Ctrl-C stops it)")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-run the rephrase stage, re-sending to the LLM only the records whose cached outcome "
                   "fell back to the template (errors, refusals, disagreements); cached rewrites are reused")
    p.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local cluster")
    return p


def _load(args, pretrained: bool = True):
    """The config of ``args``; ``pretrained``: with the model's sizes, image processing and tokenizer
    read from ``model.blip2_path`` / ``model.llm_path`` (what runs use; plan-memory keeps the preset's)."""
    from ying.config import load_config
    from ying.model.pretrained import resolve_pretrained

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run.run_dir={args.run_dir}")
    if getattr(args, "serve", False):
        overrides.append("serve.keep_running=true")
    if getattr(args, "retry_failed", False):
        overrides.append("rephrase.retry_failed=true")
    cfg = load_config(args.preset, args.config, overrides)
    if not pretrained:
        return cfg
    try:
        return resolve_pretrained(cfg)
    except (OSError, ValueError) as e:  # a missing folder or file, an unreadable checkpoint: one message
        from ying.config import ConfigError

        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e


def _worker_env(cfg) -> dict[str, str]:
    """Environment for every Ray worker of the run, less what the user's job runtime_env already sets
    (Ray refuses to merge two runtime_envs that set the same variable)."""
    from ying.console import worker_env
    from ying.preflight import in_ray_job
    from ying.train import controller_env

    env = {"DS_ACCELERATOR": "cuda" if cfg.train.use_gpu else "cpu", **worker_env(), **controller_env(cfg.train)}
    if in_ray_job():
        job_env = (json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in job_env}
    return env


def _init_ray(cfg, address: str | None) -> None:
    import ray

    from ying.console import filter_forwarded_logs

    # Workers inherit these on a local cluster; on a real cluster the runtime_env carries them.
    env = _worker_env(cfg)
    os.environ.update(env)
    filter_forwarded_logs()  # before ray.init, which binds the printing function it filters
    if not sys.stdout.isatty():
        # Ray colours each forwarded line's "(pid=...)" prefix even in a file (a job's log, CI):
        # escape codes nobody sees as colours. A terminal keeps them.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)


def _fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)


def _start(cfg, address: str | None, stages: list, until: str | None = None):
    """Preflight (everything checkable without Ray), then Ray, then the checks that need the cluster.

    Returns ``cfg`` with the model's sizes, image processing and tokenizer read from its pretrained
    checkpoints (``resolve_pretrained``), the config every stage then runs with."""
    from ying.config import ConfigError
    from ying.model.pretrained import pretrained_problems, resolve_pretrained
    from ying.preflight import config_problems, format_problems, in_ray_job, installed_package_problem, run_dir_problem

    problems = config_problems(cfg, stages, until=until) + pretrained_problems(cfg)
    problems += [p for p in [run_dir_problem(cfg, in_job=in_ray_job(), nodes=None),
                             installed_package_problem() if in_ray_job() else None] if p]
    if not problems:
        try:
            cfg = resolve_pretrained(cfg)
        except (ConfigError, OSError, ValueError) as e:  # a size the user set that the checkpoint contradicts
            problems.append(str(e))
    if problems:
        _fail(format_problems(problems))
    _init_ray(cfg, address)
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    problem = run_dir_problem(cfg, in_job=in_ray_job(), nodes=nodes)
    if problem:
        ray.shutdown()
        _fail(format_problems([problem]))
    print(f"[ying] run dir {cfg.run.run_dir} (preset {cfg.preset}, seed {cfg.run.seed}, {nodes} node(s))", flush=True)
    return cfg


def _run(stages: list, cfg, **kwargs) -> dict:
    import ray

    from ying.workflow import run_pipeline

    try:
        return run_pipeline(stages, cfg, **kwargs)
    except ray.exceptions.RayTaskError as e:
        # The stage's own traceback (inside the message) is what matters; the driver's frames are not.
        print(f"\n[ying] a stage failed; finished stages keep their outputs and a re-run resumes after them.\n{e}",
              file=sys.stderr, flush=True)
        raise SystemExit(1)


def run_pipeline_from_args(argv: list[str] | None = None) -> dict:
    from ying.config import ConfigError
    from ying.pipeline import STAGES, stage_names

    args = run_parser().parse_args(argv)
    try:
        cfg = _load(args, pretrained=False)  # _start reads the checkpoints, after the checks that need none
    except ConfigError as e:
        _fail(f"ying: {e}")
    unknown = [s for s in args.force + ([args.until] if args.until else []) if s not in stage_names()]
    if unknown:
        _fail(f"ying: unknown stage(s) {unknown}; stages are {stage_names()}")
    force = set(args.force) | ({"serve"} if args.serve else set()) | ({"rephrase"} if args.retry_failed else set())

    started = time.time()
    cfg = _start(cfg, args.address, STAGES, until=args.until)
    manifests = _run(STAGES, cfg, force=force, until=args.until)

    print("\n[ying] summary", flush=True)
    for name, m in manifests.items():
        state = "skipped (up to date)" if m.get("skipped") else f"ran in {m['seconds']:.1f}s"
        print(f"  {name:9s} {state}", flush=True)
    if "eval" in manifests:
        metrics = manifests["eval"]["outputs"]["metrics"]
        for model, tasks in metrics.items():
            line = ", ".join(f"{t} EM {100 * s['exact_match']:.1f}" for t, s in tasks.items())
            print(f"  {model:16s} {line}", flush=True)
    if "report" in manifests:
        for row in manifests["report"]["outputs"]["reproduction"]:
            print(f"  {row['verdict']:14s} {row['claim']} ({row['paper']})", flush=True)
        print(f"  report: {manifests['report']['outputs']['report']}", flush=True)
    print(f"[ying] finished in {time.time() - started:.0f}s", flush=True)

    if args.serve and "serve" in manifests:
        from ying.serve.runner import serve_until_stopped

        out = manifests["serve"]["outputs"]
        serve_until_stopped(out.get("app_name", cfg.serve.app_name),
                            f"[ying] serving {', '.join(out.get('models', []))} on {out['url']} "
                            "(POST /v1/chat/completions, GET /v1/models); Ctrl-C to stop")
    return manifests


def ablations_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workflows/ablations.py",
        description="The paper's ablations alone on an existing run: Figure 9 (instructions per task), Figure 10 "
        "(number of training tasks) and Table 5's raw vs rephrased answers, each a Ray Tune experiment of Stage II "
        "runs from the run's Stage I checkpoint at its Stage II learning rate, on its data. Needs the run's qc, "
        "stage1 and tune stages (python workflows/full.py --run-dir DIR --until tune). Writes DIR/ablations/"
        "results.json and the plots; when the run's eval is done, report.md gains the Ablations and Reproduction "
        "sections. An interrupted run resumes its unfinished trials and never re-runs a finished one.",
    )
    _add_config_args(p)
    p.add_argument("--grid", choices=["full", "reduced"], default="full",
                   help="full: ablations.full_grid (the paper's values); reduced: ablations.grid (what the DAG runs)")
    p.add_argument("--force", action="store_true", help="start the experiments over (finished trials too)")
    p.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local cluster")
    return p


def run_ablations_from_args(argv: list[str] | None = None) -> dict:
    from ying.config import ConfigError
    from ying.pipeline import STAGES
    from ying.workflow import pipeline_status

    args = ablations_parser().parse_args(argv)
    # Ablations on, beside nothing else (the stages they need are done): no waiting for Stage II.
    args.overrides += ["ablations.enabled=true", "ablations.parallel=true"]
    try:
        cfg = _load(args)
    except ConfigError as e:
        _fail(f"ying: {e}")
    if args.grid == "full":
        cfg = cfg.model_copy(update={"ablations": cfg.ablations.model_copy(update={"grid": cfg.ablations.full_grid})})
    state = {row["stage"]: row for row in pipeline_status(STAGES, cfg)}
    missing = [f"{s} ({state[s]['state']}{': ' + '; '.join(state[s]['reasons']) if state[s]['reasons'] else ''})"
               for s in ("qc", "stage1", "tune") if state[s]["state"] != "done"]
    if missing:
        _fail(f"ying: the ablations reuse the run's data, Stage I and Stage II learning rate, but in "
              f"{cfg.run.run_dir} these are not done with this config: {', '.join(missing)}. Run "
              f"`python workflows/full.py --run-dir {cfg.run.run_dir} --until tune` (with the same --preset, "
              "--config and --set) first.")
    targets = {"ablations"}
    if state["eval"]["state"] == "done" and state["stage2"]["state"] == "done":
        targets.add("report")
    else:
        print("[ying] the run's eval is not done: results.json and the plots only; the report's Ablations and "
              "Reproduction sections come with the DAG's report stage", flush=True)
    started = time.time()
    cfg = _start(cfg, args.address, STAGES, until="ablations")
    manifests = _run(STAGES, cfg, force={"ablations"} if args.force else set(), targets=targets)
    out = manifests["ablations"]["outputs"]
    print(f"[ying] ablations: {out['results']} ({', '.join(f'{e}: {n} trials' for e, n in out['trials'].items())})"
          f" in {time.time() - started:.0f}s", flush=True)
    if "report" in manifests:
        print(f"[ying] report: {manifests['report']['outputs']['report']}", flush=True)
    return manifests


def _add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a run's models over HTTP (OpenAI-compatible) until Ctrl-C or SIGTERM",
        description="Deploy the run's Stage I and Stage II checkpoints (and serve.models) as one Ray Serve app: "
        "POST /v1/chat/completions, GET /v1/models, POST /v1/evaluations. Stage II is the default model. "
        "Blocks until Ctrl-C or SIGTERM, then deletes this app only. A host other than loopback needs a "
        "bearer token (YING_SERVE_TOKEN or serve.token_file).")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="serve this checkpoint too (or only it, without --run-dir)")
    p.add_argument("--model-name", default="ying-vlm", help="the served name of --checkpoint (default ying-vlm)")
    p.add_argument("--host", default=None, help="default serve.host (127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default serve.port (8000)")
    p.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local cluster")


def _run_serve_command(args) -> None:
    from ying.config import ConfigError
    from ying.serve.runner import serve_until_stopped, start_from_run

    if args.host:
        args.overrides.append(f"serve.host={args.host}")
    if args.port is not None:
        args.overrides.append(f"serve.port={args.port}")
    try:
        cfg = _load(args)
        if not args.run_dir and not args.checkpoint:
            raise ValueError("give --run-dir (a finished run) or --checkpoint")
        from ying.serve.auth import read_token, require_token_off_loopback

        require_token_off_loopback(cfg.serve.host, read_token(cfg.serve.token_file) is not None)
    except (ConfigError, ValueError) as e:
        print(f"ying serve: {e}", file=sys.stderr)
        raise SystemExit(2)
    _init_ray(cfg, args.address)
    try:
        url, _ = start_from_run(cfg, run_dir=cfg.run.run_dir if args.run_dir else None,
                                checkpoint=args.checkpoint, model_name=args.model_name)
    except (ValueError, FileNotFoundError) as e:
        print(f"ying serve: {e}", file=sys.stderr)
        raise SystemExit(2)
    serve_until_stopped(cfg.serve.app_name, f"[ying] serving on {url} (POST /v1/chat/completions, GET /v1/models, "
                        "POST /v1/evaluations); Ctrl-C or SIGTERM to stop")


def print_status(cfg) -> None:
    """``ying status``: each stage done, stale (and why) or missing, from the run dir's manifests."""
    from ying.pipeline import STAGES
    from ying.workflow import pipeline_status

    print(f"run dir {cfg.run.run_dir} (preset {cfg.preset})")
    for row in pipeline_status(STAGES, cfg):
        line = f"  {row['stage']:9s} {row['state']}"
        if row["state"] == "done" and row.get("always_run"):
            line += " (re-runs on every run: nothing to reuse)"
        if row["reasons"]:
            line += ": " + "; ".join(row["reasons"])
        print(line)


def _add_data_commands(sub) -> None:
    stats = sub.add_parser(
        "stats", help="dataset statistics (paper Tables 2, 3 and 9) of a built data dir",
        description="Table 2 from the 40 instruction pools (instructions per category; tokens per instruction, "
        "English on whitespace, Chinese by jieba; character-level Levenshtein edit distance within and across "
        "tasks) and Tables 3/9 (records by category/task and split) from DIR/records/<split>/*.parquet. "
        "Prints the tables and writes stats.json and stats.md.")
    stats.add_argument("--data-dir", required=True, help="a built dataset dir (e.g. <run_dir>/qc), local or s3://")
    stats.add_argument("--out", default=None, help="where to write stats.json and stats.md (default: --data-dir)")
    review = sub.add_parser(
        "review", help="write the quality-check review page (HTML, images inline)",
        description="Draw N random records (seeded) per task and split and write them, images inline, with "
        "instruction, inputs, outputs and meta beside them, as one self-contained HTML file.")
    review.add_argument("--data-dir", required=True, help="a built dataset dir, local or s3://")
    review.add_argument("--out", default=None, help="the HTML file (default: DATA_DIR/review.html)")
    review.add_argument("--per-split", type=int, default=20, help="records per task and split (default 20)")
    review.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    m3it = sub.add_parser("m3it", help="import/export the released M3IT layout (see `ying m3it -h`)")
    m3it_sub = m3it.add_subparsers(dest="m3it_command", required=True)
    imp = m3it_sub.add_parser(
        "import", help="M3IT folders -> our Parquet records",
        description="Read data/<group>/<task>/{instructions.json, *train/val/validation/test.jsonl} under SRC "
        "into OUT/records/<split>/*.parquet; bad lines go to OUT/rejects/rejects.jsonl with their reason.")
    imp.add_argument("src", help="the M3IT checkout (or its data/ folder, or one task folder)")
    imp.add_argument("--out", required=True, help="output data dir")
    imp.add_argument("--tasks", default=None, help="comma-separated task keys to import (default: all found)")
    exp = m3it_sub.add_parser(
        "export", help="our Parquet records -> the M3IT layout",
        description="Write DST/data/<category>/<task>/{instructions.json, train.jsonl, val.jsonl, test.jsonl} "
        "with images as base64 strings.")
    exp.add_argument("--data-dir", required=True, help="a built dataset dir (records/<split>/*.parquet)")
    exp.add_argument("--out", required=True, help="output root of the M3IT layout")
    exp.add_argument("--tasks", default=None, help="comma-separated task keys to export (default: all)")


def _run_data_command(args) -> None:
    from ying import storage

    try:
        if args.command == "stats":
            from ying.data.stats import write_stats

            result = write_stats(args.data_dir, args.out or args.data_dir)
            print(result["markdown"])
            print(f"wrote {result['stats_json']} and {result['stats_md']}")
        elif args.command == "review":
            from ying.data.review import write_review_page

            out = args.out or storage.join(args.data_dir, "review.html")
            result = write_review_page(args.data_dir, out, per_split=args.per_split, seed=args.seed)
            print(f"wrote {result['records']} records in {result['sections']} task/split sections to {out}")
        elif args.command == "m3it":
            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
            if args.m3it_command == "import":
                from ying.data.m3it import import_m3it

                stats = import_m3it(args.src, args.out, tasks=tasks)
                read = sum(c["read"] for s in stats.values() for c in s.values())
                written = sum(c["written"] for s in stats.values() for c in s.values())
                print(f"read {read} lines: {written} records written, {read - written} rejected "
                      f"(reasons in {storage.join(args.out, 'rejects', 'rejects.jsonl')})")
            else:
                from ying.data.m3it import export_m3it

                counts = export_m3it(args.data_dir, args.out, tasks=tasks)
                print(f"exported {sum(sum(c.values()) for c in counts.values())} records of {len(counts)} tasks "
                      f"to {args.out}")
    except (FileNotFoundError, ValueError) as e:
        print(f"ying {args.command}: {e}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ying", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the DAG (see `ying run --help`)", add_help=False)
    show = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(show)
    show.add_argument("--from-checkpoints", action="store_true",
                      help="with the model's sizes, image size and normalisation and tokenizer read from "
                      "model.blip2_path / model.llm_path, as a run uses them (reads their config files)")
    sub.add_parser("stages", help="list the DAG's stages in order")
    memory = sub.add_parser(
        "plan-memory", help="per-GPU and per-node memory of both training stages (ZeRO-2/3, 40/80 GB GPUs), "
        "eval and serve",
        description="Counts the preset's parameters on the meta device (nothing is allocated or downloaded) and "
        "estimates, per stage, the peak memory per GPU for ZeRO-2 and ZeRO-3 on 40 GB and 80 GB GPUs, and the "
        "host memory per 8-GPU node; then the memory per GPU of an eval model actor (eval.batch_size) and of a "
        "Serve model replica (serve.max_batch_size). The estimate's terms are in ying/train/memory.py.")
    _add_config_args(memory)
    status = sub.add_parser("status", help="each stage of a run dir: done, stale (and why) or missing",
                            description="Reads the run dir's manifests and says, for each stage, whether a run "
                            "with this config would skip it (done), re-run it (stale: which config key, code module "
                            "or input changed) or run it for the first time (missing). Starts nothing.")
    _add_config_args(status)
    _add_data_commands(sub)
    _add_serve_command(sub)

    if argv and argv[0] == "run":
        run_pipeline_from_args(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "config":
        from ying.config import ConfigError

        try:
            cfg = _load(args, pretrained=args.from_checkpoints)
        except ConfigError as e:
            _fail(f"ying: {e}")
        print(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False))
    elif args.command == "plan-memory":
        from ying.train.memory import format_plan, plan_inference_memory, plan_memory

        cfg = _load(args, pretrained=False)
        print(format_plan(plan_memory(cfg), args.preset, plan_inference_memory(cfg)))
    elif args.command == "status":
        from ying.config import ConfigError

        try:
            cfg = _load(args)
        except ConfigError as e:
            _fail(f"ying: {e}")
        print_status(cfg)
    elif args.command == "stages":
        from ying.pipeline import STAGES

        for s in STAGES:
            print(f"{s.name:9s} <- {', '.join(s.deps) or '(none)'}")
    elif args.command == "serve":
        _run_serve_command(args)
    else:
        _run_data_command(args)


if __name__ == "__main__":
    main()
