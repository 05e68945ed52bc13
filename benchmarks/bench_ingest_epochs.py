"""What an epoch boundary costs the training ingest: Ray Data tasks (what stages use) against an
actor pool (what they used before), side by side on the same files.

    python benchmarks/bench_ingest_epochs.py --workdir /tmp/bench_train   # ~2 minutes on 2 cores

Each epoch of a stage is a new execution of its dataset (Ray Train iterates the shard once per
epoch). An actor pool is started again for every execution: new processes import torch and
transformers before the first record is encoded. Tasks land on the worker processes the last
epoch left warm. Both variants read and encode Stage I's records (coco captions of the default
mini-world, built once into WORKDIR/data, shared with bench_train.py) with the same
``EncodeRecords``, one CPU, for ``--epochs`` epochs. The last line is JSON: seconds per epoch after
the first for each, their difference (the actors' start-up, paid every epoch) and
``actors_over_tasks`` (how many times longer an epoch takes with actors).
Run it alone on the machine: other load skews the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_train import build_data  # noqa: E402


def epoch_seconds(ds, epochs: int, label: str) -> list[float]:
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        rows = sum(len(batch["id"]) for batch in ds.iter_batches(batch_size=32, batch_format="numpy"))
        times.append(time.perf_counter() - start)
        print(f"{label}: epoch {epoch}: {rows} records in {times[-1]:.1f}s", flush=True)
    return times


class _EncodeActor:
    """The former actor-pool form: ``EncodeRecords`` built once per actor."""

    def __init__(self, **kwargs):
        from ying.train.ingest import EncodeRecords

        self.encoder = EncodeRecords(**kwargs)

    def __call__(self, batch):
        yield from self.encoder(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench_train")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    import ray
    import ray.data

    from ying.config import load_config
    from ying.console import quiet_stage_process
    from ying.model.processor import YingProcessor
    from ying.model.tokenizer import build_tokenizer
    from ying.train.ingest import RecordPolicy, encode_segments
    from ying.train.sampler import rank_segments, record_index

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = build_data(workdir)
    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    processor = YingProcessor.from_model_config(tok, cfg.model)
    policy = RecordPolicy()
    tasks = ["coco"]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    quiet_stage_process()  # no progress bars or execution notices between the epoch lines

    # One rank's epoch of Stage I, as the training workers read it (``ying.train.ingest.encoded_rows``).
    index = record_index(data_dir, "train", tasks)
    items = [{"file": s.file, "start": s.start, "count": s.count}
             for s in rank_segments(index, cfg.run.seed, 0, 0, 1)]
    kwargs = {"processor": processor, "policy": policy, "seed": cfg.run.seed, "index": index}

    def source():
        return ray.data.from_items(items, override_num_blocks=len(items))

    with_tasks = source().map_batches(encode_segments, fn_kwargs=kwargs, batch_size=1,
                                      compute=ray.data.TaskPoolStrategy(size=1), num_cpus=1)
    with_actors = source().map_batches(_EncodeActor, fn_constructor_kwargs=kwargs, batch_size=1,
                                       compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=1)

    actors = epoch_seconds(with_actors, args.epochs, "actors")
    tasks_ = epoch_seconds(with_tasks, args.epochs, "tasks")
    later_actors, later_tasks = statistics.mean(actors[1:]), statistics.mean(tasks_[1:])
    print(json.dumps({"epochs": args.epochs, "actor_epoch_s": round(later_actors, 2),
                      "task_epoch_s": round(later_tasks, 2), "first_epoch_s": [round(actors[0], 2), round(tasks_[0], 2)],
                      "start_up_s_per_epoch": round(later_actors - later_tasks, 2),
                      "actors_over_tasks": round(later_actors / later_tasks, 2)}))


if __name__ == "__main__":
    main()
