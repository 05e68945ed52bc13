"""One model interface for evaluation: our checkpoints and any transformers vision-to-text model.

A predictor is anything with ``name`` and ``generate(examples, chinese_dialogue, max_new_tokens)
-> [answer]`` where an example is ``{images: [bytes], instruction, inputs}`` (``YingPredictor``'s
contract). ``ModelSpec`` names one: ``kind="ying"`` is a Ying checkpoint, ``kind="hf"`` a local
transformers model directory (BLIP-2, InstructBLIP, LLaVA, or any class ``AutoModelForImageTextToText``
loads). Greedy decoding throughout (paper §3.1.2).

``predict_examples`` runs a model over examples with Ray Data: model actors (``map_batches`` with
``ActorPoolStrategy``) load the model once each and answer batches. Answers are cached per
(model, suite, example) in run storage, so a re-run, or a second suite asking the same question,
pays nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

from ying import storage

__all__ = [
    "Predictor",
    "ModelSpec",
    "HFVisionPredictor",
    "YingOnDevice",
    "load_predictor",
    "model_fingerprint",
    "example_key",
    "PredictionCache",
    "predict_examples",
    "cached_predictions",
]


class Predictor(Protocol):
    name: str

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]: ...


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the row label in the report
    kind: Literal["ying", "hf"]
    path: str


# BLIP-style processors put the query-token placeholders in front of the text themselves; the others
# (LLaVA and kin) expect the text to say where the image goes.
_PROCESSORS_PLACING_IMAGE_TOKENS = {"Blip2Processor", "InstructBlipProcessor", "InstructBlipVideoProcessor"}


def _middle(images: list[bytes]) -> bytes:
    # A video is its sampled frames; a single-image HF model sees the middle one.
    return images[len(images) // 2]


class HFVisionPredictor:
    """Any transformers image-text-to-text model in a local directory, behind ``YingPredictor``'s contract.

    The text is Ying's prompt (paper Figure 3, Table 12 for Chinese), so every model gets the same
    words; models whose processor declares an ``image_token`` (LLaVA) get it in front, as their
    chat format expects.
    """

    def __init__(self, model, processor, name: str, max_new_tokens: int = 32):
        self.model = model
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, path: str, name: str | None = None, max_new_tokens: int = 32,
                        device: str = "cpu") -> "HFVisionPredictor":
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"{path}: not a transformers vision-to-text model directory with a processor ({e}); "
                "save one with model.save_pretrained(dir) and processor.save_pretrained(dir)"
            ) from e
        return cls(model.to(device).eval(), processor, name or path, max_new_tokens)

    def _prompt(self, example: dict, chinese_dialogue: bool) -> str:
        from ying.model.prompt import format_prompt

        text = format_prompt(example["instruction"], example.get("inputs", ""), chinese_dialogue)
        image_token = getattr(self.processor, "image_token", None)
        if type(self.processor).__name__ in _PROCESSORS_PLACING_IMAGE_TOKENS or not image_token:
            return text
        return f"{getattr(image_token, 'content', image_token)}\n{text}"

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        import torch
        from PIL import Image

        if not examples:
            return []
        images = [Image.open(io.BytesIO(_middle(e["images"]))).convert("RGB") for e in examples]
        texts = [self._prompt(e, chinese_dialogue) for e in examples]
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only models continue from the last real token
        batch = self.processor(images=images, text=texts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                      do_sample=False, num_beams=1)
        input_ids = batch["input_ids"]
        # Decoder-only models return the prompt too; encoder-decoder ones (Flan-T5) only the answer.
        if out.shape[1] >= input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids):
            out = out[:, input_ids.shape[1]:]
        decode = tokenizer.batch_decode if tokenizer is not None else self.processor.batch_decode
        return [t.strip() for t in decode(out, skip_special_tokens=True)]


class YingOnDevice:
    """A Ying checkpoint on any device (``YingPredictor`` keeps model and batches on the CPU).

    The same prompt, collation and greedy decoding as ``YingPredictor.generate``; only the batch
    moves to the model's device.
    """

    def __init__(self, path: str, name: str, max_new_tokens: int, device: str):
        from ying.model.checkpoint import load_checkpoint

        self.model, self.tokenizer, self.processor, _ = load_checkpoint(path, device=device)
        self.name = name
        self.max_new_tokens = max_new_tokens

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        import torch

        if not examples:
            return []
        batch = self.processor.collate([self.processor.encode_prompt(e, chinese_dialogue) for e in examples],
                                       pad_left=True)
        device = self.model.device
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=batch["pixel_values"].to(device), input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def load_predictor(spec: ModelSpec, max_new_tokens: int = 32, device: str = "cpu") -> Predictor:
    if spec.kind == "ying":
        if device != "cpu":
            return YingOnDevice(spec.path, spec.name, max_new_tokens, device)
        from ying.model.inference import YingPredictor

        return YingPredictor.from_checkpoint(spec.path, name=spec.name, max_new_tokens=max_new_tokens)
    if spec.kind == "hf":
        return HFVisionPredictor.from_pretrained(spec.path, name=spec.name, max_new_tokens=max_new_tokens,
                                                 device=device)
    raise ValueError(f"model {spec.name!r}: unknown kind {spec.kind!r}; expected 'ying' or 'hf'")


def model_fingerprint(spec: ModelSpec) -> str:
    """Identifies the weights: file names and sizes, the JSON files, and the head of each weights file.

    Reading every byte of a 13B checkpoint per run would cost minutes; the head of each shard plus
    its size changes whenever training writes new weights.
    """
    fs, root = storage.filesystem(spec.path)
    if not fs.exists(root):
        raise FileNotFoundError(f"model {spec.name!r}: {spec.path} does not exist")
    h = hashlib.sha256(f"{spec.kind}\x00{spec.path}".encode())
    for info in sorted(fs.find(root, detail=True).values(), key=lambda i: i["name"]):
        rel = info["name"][len(root.rstrip("/")) + 1:]
        h.update(f"{rel}\x00{info.get('size')}\x00".encode())
        if rel.endswith(".json"):
            h.update(fs.cat_file(info["name"]))
        elif rel.endswith((".safetensors", ".bin", ".pt")):
            with fs.open(info["name"], "rb") as f:
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def example_key(example: dict) -> str:
    """What decides an answer: the images, the prompt text and the decoding settings."""
    h = hashlib.sha256()
    for img in example["images"]:
        h.update(hashlib.sha256(img).digest())
    h.update(json.dumps([example["instruction"], example.get("inputs", ""), bool(example.get("chinese_dialogue")),
                         int(example["max_new_tokens"])], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:24]


class PredictionCache:
    """``<cache_dir>/predictions/<model fingerprint>/<suite>.json``: {example key: answer}."""

    def __init__(self, cache_dir: str, model_key: str, suite: str):
        self.path = storage.join(cache_dir, "predictions", model_key, f"{suite}.json")
        self.entries: dict[str, str] = storage.read_json(self.path) if storage.exists(self.path) else {}
        self.dirty = False

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, answer: str) -> None:
        self.entries[key] = answer
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            storage.write_json_atomic(self.path, self.entries)
            self.dirty = False


class _PredictorActor:
    """A Ray Data actor: loads one model and answers batches of examples."""

    def __init__(self, spec: ModelSpec, max_new_tokens: int, use_gpu: bool = False):
        import torch

        torch.set_num_threads(1)  # several actors on a small machine must not oversubscribe its cores
        self.predictor = load_predictor(spec, max_new_tokens, "cuda" if use_gpu else "cpu")

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        answers: dict[str, str] = {}
        groups: dict[tuple[bool, int], list[dict]] = {}
        for row in rows:
            groups.setdefault((bool(row["chinese_dialogue"]), int(row["max_new_tokens"])), []).append(row)
        for (zh, n_tokens), group in groups.items():
            for row, answer in zip(group, self.predictor.generate(group, chinese_dialogue=zh, max_new_tokens=n_tokens)):
                answers[row["key"]] = answer
        return pa.table({"key": [r["key"] for r in rows], "answer": [answers[r["key"]] for r in rows]})


def predict_examples(spec: ModelSpec, examples: Iterable[dict], *, batch_size: int, num_actors: int = 1,
                     max_new_tokens: int = 32, use_gpu: bool = False) -> dict[str, str]:
    """``{example key: answer}`` for examples carrying ``key``, ``images``, ``instruction``, ``inputs``,
    ``chinese_dialogue`` and ``max_new_tokens``; each distinct key is generated once."""
    import ray

    unique: dict[str, dict] = {}
    for e in examples:
        unique.setdefault(e["key"], e)
    if not unique:
        return {}
    rows = [{"key": k, "images": list(e["images"]), "instruction": e["instruction"], "inputs": e.get("inputs", ""),
             "chinese_dialogue": bool(e.get("chinese_dialogue")), "max_new_tokens": int(e["max_new_tokens"])}
            for k, e in sorted(unique.items())]
    ds = ray.data.from_items(rows).map_batches(
        _PredictorActor,
        fn_constructor_kwargs={"spec": spec, "max_new_tokens": max_new_tokens, "use_gpu": use_gpu},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, num_actors)),
        batch_size=batch_size,
        batch_format="pyarrow",
        **({"num_gpus": 1} if use_gpu else {"num_cpus": 1}),
    )
    return {row["key"]: row["answer"] for row in ds.iter_rows()}


def cached_predictions(spec: ModelSpec, suite_examples: dict[str, list[dict]], cache_dir: str, *,
                       batch_size: int, num_actors: int = 1, max_new_tokens: int = 32,
                       fingerprint: str | None = None, use_gpu: bool = False) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Answers per suite ``{suite: {example key: answer}}`` and counts ``{cached, generated}``.

    Only examples missing from the (model, suite) caches go to the model, in one Ray Data pass.
    """
    model_key = f"{spec.name}-{fingerprint or model_fingerprint(spec)}"
    caches = {suite: PredictionCache(cache_dir, model_key, suite) for suite in suite_examples}
    todo = [e for suite, exs in suite_examples.items() for e in exs if caches[suite].get(e["key"]) is None]
    fresh = predict_examples(spec, todo, batch_size=batch_size, num_actors=num_actors,
                             max_new_tokens=max_new_tokens, use_gpu=use_gpu) if todo else {}
    out: dict[str, dict[str, str]] = {}
    for suite, exs in suite_examples.items():
        answers = out.setdefault(suite, {})
        for e in exs:
            cached = caches[suite].get(e["key"])
            if cached is None:
                cached = fresh[e["key"]]
                caches[suite].put(e["key"], cached)
            answers[e["key"]] = cached
        caches[suite].save()
    n_total = sum(len(exs) for exs in suite_examples.values())
    return out, {"generated": len({e["key"] for e in todo}), "cached": n_total - len(todo)}

