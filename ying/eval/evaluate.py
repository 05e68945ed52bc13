"""The eval stage: score the majority-answer baseline, the Stage I model and the Stage II model.

Every built task is scored on its evaluation split (``test`` where the source has one, else
``validation``): the trained tasks on instances never trained on, and the held-out ones (Chinese,
video) zero-shot. Chinese tasks get the paper's Chinese dialogue prompt (Appendix F). Greedy
decoding throughout. Predictions are kept beside the scores so a reader can see what was said.
"""

from __future__ import annotations

import json
from typing import Any

from ying import storage
from ying.config import YingConfig
from ying.data.build import read_records
from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.report import score_predictions, write_metrics

__all__ = ["evaluation_records", "evaluate_models"]


def evaluation_records(cfg: YingConfig, data_dir: str) -> list[dict[str, Any]]:
    """Up to ``eval.max_per_task`` records per task from its evaluation split, in id order.

    The evaluation split is ``test`` where the source has one with answers, else ``validation``
    (VQA v2, for one, publishes no test answers).
    """
    by_split = {split: read_records(data_dir, split) for split in ("test", "validation")}
    records = []
    for task in cfg.data.tasks:
        for split in ("test", "validation"):
            rows = sorted((r for r in by_split[split] if r["task"] == task), key=lambda r: r["id"])
            if rows:
                records.extend(rows[: cfg.eval.max_per_task])
                break
        else:
            print(f"[eval] {task}: no validation or test records; not scored", flush=True)
    return records


def _predict(predictor, records: list[dict], batch_size: int, max_new_tokens: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        # Zero-shot Chinese gets the Chinese dialogue context (paper Table 12); English does not.
        for zh in (False, True):
            part = [r for r in chunk if (r["lang"] == "zh") == zh]
            if part:
                answers = predictor.generate(part, chinese_dialogue=zh, max_new_tokens=max_new_tokens)
                out.update({r["id"]: a for r, a in zip(part, answers)})
    return out


def evaluate_models(cfg: YingConfig, data_dir: str, checkpoints: dict[str, str], out_dir: str) -> dict:
    """Score the baseline and each checkpoint; write metrics.json and predictions.jsonl under out_dir."""
    import torch

    from ying.model.inference import YingPredictor

    torch.manual_seed(cfg.run.seed)
    records = evaluation_records(cfg, data_dir)
    train_records = read_records(data_dir, "train")
    predictions: dict[str, dict[str, str]] = {
        MajorityAnswerBaseline.name: MajorityAnswerBaseline().fit(train_records).predict_many(records)
    }
    for name, path in checkpoints.items():
        predictor = YingPredictor.from_checkpoint(path, name=name)
        predictions[name] = _predict(predictor, records, cfg.eval.batch_size, cfg.eval.max_new_tokens)
        print(f"[eval] {name}: {len(predictions[name])} predictions", flush=True)

    metrics = {name: score_predictions(records, preds) for name, preds in predictions.items()}
    write_metrics(out_dir, metrics)
    lines = []
    for rec in records:
        row = {"id": rec["id"], "task": rec["task"], "split": rec["split"], "inputs": rec["inputs"],
               "reference": rec["outputs"]}
        row.update({name: preds.get(rec["id"], "") for name, preds in predictions.items()})
        lines.append(json.dumps(row, ensure_ascii=False))
    storage.write_bytes_atomic(storage.join(out_dir, "predictions.jsonl"), ("\n".join(lines) + "\n").encode())
    return {"metrics": metrics, "n_records": len(records), "models": list(predictions)}
