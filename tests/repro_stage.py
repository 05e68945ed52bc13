"""One short Stage I plan through ``fit``, as its own driver process (tests kill it for real).

    python tests/repro_stage.py --data DIR --storage DIR --out DIR --address GCS [--steps N]

Two workers, ZeRO-2, a resume checkpoint every 5 steps; prints ``SUMMARY <json>`` at the end.
"""

import argparse
import json
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--init", default=None, help="start from this checkpoint (as Stage II and trials do)")
    args = p.parse_args()

    import ray

    from ying.config import load_config
    from ying.train.stages import fit, stage_plan

    ray.init(address=args.address, log_to_driver=True)
    cfg = load_config("tiny", overrides=["train.num_workers=2", "train.zero_stage=2"])
    plan = stage_plan(cfg, "stage1", args.data, args.out, init_checkpoint=args.init, tasks=["coco", "vqa-v2"],
                      max_steps=args.steps,
                      warmup_steps=2, batch_size=8, log_every=5, checkpoint_every=5, val_examples=8, lr=5e-4)
    summary = fit(cfg, plan, args.storage)
    print("SUMMARY " + json.dumps({k: summary[k] for k in ("step", "epoch", "resumed_from_step", "val_loss")}),
          flush=True)


if __name__ == "__main__":
    main()
