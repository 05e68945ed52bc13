"""One model interface for evaluation: our checkpoints and any transformers vision-to-text model.

A predictor is anything with ``name`` and ``generate(examples, chinese_dialogue, max_new_tokens)
-> [answer]`` where an example is ``{images: [bytes], instruction, inputs}`` (``YingPredictor``'s
contract). ``ModelSpec`` names one: ``kind="ying"`` is a Ying checkpoint, ``kind="hf"`` a local
transformers model directory (BLIP-2, InstructBLIP, LLaVA, or any class ``AutoModelForImageTextToText``
loads). Greedy decoding throughout (paper §3.1.2); a Ying checkpoint answers through
``ying.model.inference.YingPredictor`` (the one checkpoint loader and greedy generator) on any device.

Each HF model gets its own prompt format (``hf_prompt_format``): the processor's chat template where
it has one, else its family's documented prompt (BLIP-2: ``Question: ... Answer:``; InstructBLIP:
the instruction as written), else Ying's. Weights load in ``ying.model.checkpoint.inference_dtype``:
a Ying checkpoint's ``model.dtype`` (bfloat16 for the paper preset) or bfloat16 for other models on
a GPU, float32 on the CPU.
Models that take video (a processor with a video processor, or InstructBLIP-video) get every
sampled frame; single-image models get a video's middle frame (``hf_frame_mode``).

``predict_examples`` runs a model over examples with Ray Data: model actors (``map_batches`` with
``ActorPoolStrategy``) load the model once each and answer batches. With one actor's worth
(``eval.num_actors: 1``) the model answers in one Ray task instead, holding the same resources, in
one of the job's pooled worker processes: no actor process to start and import torch in for each
model. An example carries its image bytes, or an ``image_ref`` (``ying.eval.records``) that the
actor (or task) reads itself, so evaluation images go from storage to the process that answers
them and never through the driver. Answers are cached per
(model, suite, example) in run storage, so a re-run, or a second suite asking the same question,
pays nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Protocol

import ray

from ying import storage

__all__ = [
    "Predictor",
    "ModelSpec",
    "HFVisionPredictor",
    "hf_prompt_format",
    "hf_frame_mode",
    "describe_hf_model",
    "instructblip_video_inputs",
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
# Paper Table 12: the Chinese exchange before the question (the user's request, the bot's "OK").
_ZH_CONTEXT = ("请根据我的指示,以及所给的图片,做出相应的回答。", "好的。")


def _middle(images: list[bytes]) -> bytes:
    # A video is its sampled frames; a single-image HF model sees the middle one.
    return images[len(images) // 2]


def hf_prompt_format(processor, model_type: str) -> str:
    """``chat_template`` (the processor has one), ``blip2`` ("Question: {q} Answer:", the BLIP-2
    model card's VQA prompt), ``instructblip`` (the instruction as written, InstructBLIP's model
    card) or ``ying`` (Ying's <human>/<bot> prompt, for a model that documents none of these)."""
    if getattr(processor, "chat_template", None):
        return "chat_template"
    if model_type == "blip-2":
        return "blip2"
    if model_type in ("instructblip", "instructblipvideo"):
        return "instructblip"
    return "ying"


def hf_frame_mode(processor, model_type: str) -> str:
    """How a video reaches the model: ``instructblip_video`` (every frame through the Q-Former, the
    frames' query outputs concatenated, as InstructBLIP does), ``videos`` (the processor's own video
    input) or ``middle_frame`` (a single-image model)."""
    if model_type == "instructblipvideo":
        return "instructblip_video"
    if getattr(processor, "video_processor", None) is not None:
        return "videos"
    return "middle_frame"


def describe_hf_model(path: str) -> dict[str, str]:
    """The prompt format and frame mode a transformers model directory gets, without loading weights."""
    from transformers import AutoConfig, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ValueError(f"{path}: not a transformers vision-to-text model directory with a processor ({e})") from e
    return {"prompt_format": hf_prompt_format(processor, model_type),
            "frames": hf_frame_mode(processor, model_type), "model_type": model_type}


def _question(example: dict) -> str:
    return " ".join(p for p in (example["instruction"].strip(), example.get("inputs", "").strip()) if p)


def instructblip_video_inputs(tokenizer, qformer_tokenizer, num_query_tokens: int, video_token_id: int,
                              pixel_values, texts: list[str]) -> dict:
    """Inputs of ``InstructBlipVideoForConditionalGeneration.generate`` for any number of frames.

    ``pixel_values`` is (B, T, C, H, W). The model runs the Q-Former on each frame and concatenates
    the T x ``num_query_tokens`` outputs; its processor writes placeholders for 4 frames only, so
    with 8 the features would not line up with the text. Here each sample gets T x num_query_tokens
    placeholders, then its text, left-padded as a whole (decoder-only LLMs continue from the end).
    """
    import torch

    n_frames = int(pixel_values.shape[1])
    q = qformer_tokenizer(texts, padding=True, return_tensors="pt")
    ids = [[video_token_id] * (num_query_tokens * n_frames) + t for t in tokenizer(texts)["input_ids"]]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention,
            "qformer_input_ids": q["input_ids"], "qformer_attention_mask": q["attention_mask"]}


class HFVisionPredictor:
    """Any transformers image-text-to-text model in a local directory, behind ``YingPredictor``'s contract.

    Each model gets its own prompt format (``hf_prompt_format``) and, for video examples, every
    frame when it takes video (``hf_frame_mode``). Chinese examples get the paper's Table 12
    exchange before the question: as chat turns with a chat template, as two lines otherwise.
    """

    def __init__(self, model, processor, name: str, max_new_tokens: int = 32):
        self.model = model
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens
        model_type = getattr(model.config, "model_type", "")
        self.prompt_format = hf_prompt_format(processor, model_type)
        self.frame_mode = hf_frame_mode(processor, model_type)

    @classmethod
    def from_pretrained(cls, path: str, name: str | None = None, max_new_tokens: int = 32,
                        device: str = "cpu", dtype: str | None = None) -> "HFVisionPredictor":
        """``dtype`` ("bfloat16", "float32", ...): default bfloat16 on cuda, float32 on the CPU."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ying.model.checkpoint import inference_dtype

        torch_dtype = getattr(torch, dtype or inference_dtype(device, "bfloat16"))
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"{path}: not a transformers vision-to-text model directory with a processor ({e}); "
                "save one with model.save_pretrained(dir) and processor.save_pretrained(dir)"
            ) from e
        except ImportError as e:  # e.g. video processors need torchvision
            raise ValueError(f"{path}: its processor needs a package that is not installed ({e})") from e
        return cls(model.to(device).eval(), processor, name or path, max_new_tokens)

    def prompt(self, example: dict, chinese_dialogue: bool = False, as_video: bool = False) -> str:
        """The text this model is given for ``example`` (its images go beside it, through the processor)."""
        from ying.model.prompt import format_prompt

        fmt = self.prompt_format
        if fmt == "chat_template":
            visual = [{"type": "video"}] if as_video else [{"type": "image"}]
            question = [{"type": "text", "text": _question(example)}]
            if chinese_dialogue:
                turns = [{"role": "user", "content": visual + [{"type": "text", "text": _ZH_CONTEXT[0]}]},
                         {"role": "assistant", "content": [{"type": "text", "text": _ZH_CONTEXT[1]}]},
                         {"role": "user", "content": question}]
            else:
                turns = [{"role": "user", "content": visual + question}]
            return self.processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        context = "\n".join(_ZH_CONTEXT) + "\n" if chinese_dialogue else ""
        if fmt == "blip2":
            return f"{context}Question: {_question(example)} Answer:"
        if fmt == "instructblip":
            return context + _question(example)
        text = format_prompt(example["instruction"], example.get("inputs", ""), chinese_dialogue)
        image_token = getattr(self.processor, "image_token", None)
        if type(self.processor).__name__ in _PROCESSORS_PLACING_IMAGE_TOKENS or not image_token:
            return text
        return f"{getattr(image_token, 'content', image_token)}\n{text}"

    def _inputs(self, examples: list[dict], chinese_dialogue: bool, as_video: bool):
        from PIL import Image

        def pil(data: bytes):
            return Image.open(io.BytesIO(data)).convert("RGB")

        texts = [self.prompt(e, chinese_dialogue, as_video) for e in examples]
        if not as_video:
            return self.processor(images=[pil(_middle(e["images"])) for e in examples], text=texts,
                                  return_tensors="pt", padding=True)
        videos = [[pil(frame) for frame in e["images"]] for e in examples]
        if self.frame_mode == "instructblip_video":
            pixel_values = self.processor.video_processor(videos, return_tensors="pt")["pixel_values"]
            return instructblip_video_inputs(self.processor.tokenizer, self.processor.qformer_tokenizer,
                                             self.model.config.num_query_tokens, self.model.config.video_token_index,
                                             pixel_values, texts)
        return self.processor(videos=videos, text=texts, return_tensors="pt", padding=True)

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        """Answers in order. A video example (``video`` set, several frames) goes to a video-taking
        model as all its frames; everything else as one image."""
        if not examples:
            return []
        takes_video = self.frame_mode != "middle_frame"
        answers: dict[int, str] = {}
        for as_video in (False, True):
            idx = [i for i, e in enumerate(examples)
                   if (takes_video and bool(e.get("video")) and len(e["images"]) > 1) == as_video]
            if idx:
                for i, a in zip(idx, self._generate([examples[i] for i in idx], chinese_dialogue, as_video,
                                                    max_new_tokens or self.max_new_tokens)):
                    answers[i] = a
        return [answers[i] for i in range(len(examples))]

    def _generate(self, examples: list[dict], chinese_dialogue: bool, as_video: bool, max_new_tokens: int) -> list[str]:
        import torch

        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only models continue from the last real token
        batch = self._inputs(examples, chinese_dialogue, as_video)
        device, dtype = self.model.device, self.model.dtype
        # Pixels in the weights' dtype (bfloat16 on a GPU); token ids stay integers.
        batch = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
                 for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        input_ids = batch["input_ids"]
        # Decoder-only models return the prompt too; encoder-decoder ones (Flan-T5) only the answer.
        if out.shape[1] >= input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids):
            out = out[:, input_ids.shape[1]:]
        decode = tokenizer.batch_decode if tokenizer is not None else self.processor.batch_decode
        return [t.strip() for t in decode(out, skip_special_tokens=True)]


def load_predictor(spec: ModelSpec, max_new_tokens: int = 32, device: str = "cpu", dtype: str | None = None) -> Predictor:
    """``spec``'s model on ``device``. ``dtype`` None: ``inference_dtype`` (a Ying checkpoint's own
    ``model.dtype`` on a GPU, bfloat16 for other models there; float32 on the CPU)."""
    if spec.kind == "ying":
        from ying.model.inference import YingPredictor

        return YingPredictor.from_checkpoint(spec.path, name=spec.name, max_new_tokens=max_new_tokens,
                                             device=device, dtype=dtype)
    if spec.kind == "hf":
        return HFVisionPredictor.from_pretrained(spec.path, name=spec.name, max_new_tokens=max_new_tokens,
                                                 device=device, dtype=dtype)
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
    """What decides an answer: the images, the prompt text and the decoding settings.

    The images enter as their sha256 digests: ``image_digests`` where the example carries them
    (read from storage by ``ying.eval.records``), else computed from ``images``; both give one key.
    """
    h = hashlib.sha256()
    digests = example.get("image_digests")
    if digests is None:
        digests = [hashlib.sha256(img).hexdigest() for img in example["images"]]
    for digest in digests:
        h.update(bytes.fromhex(digest))
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
    """A Ray Data actor (or, called in a task or in-process, a plain object): loads one model and answers
    batches of examples, reading their images itself."""

    def __init__(self, spec: ModelSpec, max_new_tokens: int, use_gpu: bool = False):
        import torch

        torch.set_num_threads(1)  # several actors on a small machine must not oversubscribe its cores
        self.predictor = load_predictor(spec, max_new_tokens, "cuda" if use_gpu else "cpu")

    def __call__(self, batch):
        import pyarrow as pa

        from ying.eval.records import read_images

        rows = batch.to_pylist()
        by_ref = [r for r in rows if r["ref_file"] and not r["images"]]
        for row, images in zip(by_ref, read_images([{"file": r["ref_file"], "row_group": r["ref_row_group"],
                                                      "row": r["ref_row"]} for r in by_ref])):
            row["images"] = images
        answers: dict[str, str] = {}
        groups: dict[tuple[bool, int], list[dict]] = {}
        for row in rows:
            groups.setdefault((bool(row["chinese_dialogue"]), int(row["max_new_tokens"])), []).append(row)
        for (zh, n_tokens), group in groups.items():
            for row, answer in zip(group, self.predictor.generate(group, chinese_dialogue=zh, max_new_tokens=n_tokens)):
                answers[row["key"]] = answer
        return pa.table({"key": [r["key"] for r in rows], "answer": [answers[r["key"]] for r in rows]})


def _prediction_row(key: str, e: dict) -> dict:
    ref = e.get("image_ref") or {}
    if "images" not in e and not ref:
        raise ValueError(f"example {key}: neither images nor an image_ref to read them from")
    return {"key": key, "images": list(e["images"]) if "images" in e else [],
            "ref_file": ref.get("file", ""), "ref_row_group": int(ref.get("row_group", -1)),
            "ref_row": int(ref.get("row", -1)), "instruction": e["instruction"], "inputs": e.get("inputs", ""),
            "chinese_dialogue": bool(e.get("chinese_dialogue")), "max_new_tokens": int(e["max_new_tokens"]),
            "video": bool(e.get("video"))}


def _answer_batches(spec: ModelSpec, rows: list[dict], batch_size: int, max_new_tokens: int, use_gpu: bool):
    """The model loaded here, answering ``rows`` batch after batch: yields ``[(key, answer)]`` per batch."""
    import pyarrow as pa

    predictor = _PredictorActor(spec, max_new_tokens, use_gpu)
    for start in range(0, len(rows), batch_size):
        table = predictor(pa.Table.from_pylist(rows[start:start + batch_size]))
        yield list(zip(table["key"].to_pylist(), table["answer"].to_pylist()))


def _answer_here(spec: ModelSpec, rows: list[dict], batch_size: int, max_new_tokens: int, use_gpu: bool):
    from ying.console import quiet_stage_process

    quiet_stage_process()  # a pooled process of the job: no progress bars from the Parquet image reads
    yield from _answer_batches(spec, rows, batch_size, max_new_tokens, use_gpu)


# A CPU task's process stays for the job's next tasks (its imports with it); a GPU task's must exit,
# releasing the GPU's memory: max_calls=1, which Ray sets only for GPUs asked for in @ray.remote.
@ray.remote(num_cpus=1, num_returns="streaming")
def _answer_in_task(spec: ModelSpec, rows: list[dict], batch_size: int, max_new_tokens: int, use_gpu: bool):
    yield from _answer_here(spec, rows, batch_size, max_new_tokens, use_gpu)


@ray.remote(num_gpus=1, max_calls=1, num_returns="streaming")
def _answer_in_gpu_task(spec: ModelSpec, rows: list[dict], batch_size: int, max_new_tokens: int, use_gpu: bool):
    yield from _answer_here(spec, rows, batch_size, max_new_tokens, use_gpu)


def predict_examples(spec: ModelSpec, examples: Iterable[dict], *, batch_size: int, num_actors: int = 1,
                     max_new_tokens: int = 32, use_gpu: bool = False,
                     on_answer: Callable[[str, str], Any] | None = None, in_process: bool = False) -> dict[str, str]:
    """``{example key: answer}`` for examples carrying ``key``, ``instruction``, ``inputs``,
    ``chinese_dialogue``, ``max_new_tokens`` and either ``images`` or an ``image_ref``; each distinct
    key is generated once. ``on_answer(key, answer)`` is called as each answer arrives.

    ``num_actors`` model actors answer in a Ray Data pool; with 1, one Ray task (a streaming
    generator, a batch of answers at a time) holding an actor's resources answers instead, in a
    pooled worker process that has often imported torch and transformers for an earlier model or
    stage. The answers are the same (``tests/test_hf_vlm.py``).
    ``in_process``: the model answers here, batch after batch: for a caller that already holds the
    resources, such as a Tune trial that has just trained in its own process (``ying.tune.runner``),
    where starting a task or an actor cost more than its answers."""
    unique: dict[str, dict] = {}
    for e in examples:
        unique.setdefault(e["key"], e)
    if not unique:
        return {}
    # Rows in storage order, so that a batch's images come from few row groups.
    rows = sorted((_prediction_row(k, e) for k, e in unique.items()),
                  key=lambda r: (r["ref_file"], r["ref_row_group"], r["ref_row"], r["key"]))
    answers: dict[str, str] = {}
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    if in_process or num_actors <= 1:
        if in_process:
            batches = _answer_batches(spec, rows, batch_size, max_new_tokens, use_gpu)
        else:
            task = (_answer_in_gpu_task if use_gpu else _answer_in_task).options(name=f"ying:eval-{spec.name}")
            batches = (ray.get(ref) for ref in task.remote(spec, rows, batch_size, max_new_tokens, use_gpu))
        for batch in batches:
            for key, answer in batch:
                answers[key] = answer
                if on_answer is not None:
                    on_answer(key, answer)
        return answers
    ds = ray.data.from_items(rows).map_batches(
        _PredictorActor,
        fn_constructor_kwargs={"spec": spec, "max_new_tokens": max_new_tokens, "use_gpu": use_gpu},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, num_actors)),
        batch_size=batch_size,
        batch_format="pyarrow",
        **resources,
    )
    for row in ds.iter_rows():
        answers[row["key"]] = row["answer"]
        if on_answer is not None:
            on_answer(row["key"], row["answer"])
    return answers


def _count_examples(model: str, suite: str, source: str, n: int) -> None:
    from ying import telemetry

    if n and ray.is_initialized():  # metrics live in a Ray process; a plain process has nowhere to send them
        telemetry.eval_examples_counter().inc(n, tags={"model": model, "suite": suite, "source": source})


def cached_predictions(spec: ModelSpec, suite_examples: dict[str, list[dict]], cache_dir: str, *,
                       batch_size: int, num_actors: int = 1, max_new_tokens: int = 32,
                       fingerprint: str | None = None, use_gpu: bool = False,
                       progress_interval_s: float = 10.0,
                       in_process: bool = False) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Answers per suite ``{suite: {example key: answer}}`` and counts ``{cached, generated}``.

    Only examples missing from the (model, suite) caches go to the model, in one Ray Data pass (or
    in this process: ``predict_examples``), with one progress line (examples answered of those to generate, rate, ETA) and the
    ``ying_eval_examples`` metric per model and suite.
    """
    from ying.progress import ProgressLine

    model_key = f"{spec.name}-{fingerprint or model_fingerprint(spec)}"
    caches = {suite: PredictionCache(cache_dir, model_key, suite) for suite in suite_examples}
    todo = [e for suite, exs in suite_examples.items() for e in exs if caches[suite].get(e["key"]) is None]
    suites_of: dict[str, set[str]] = {}
    for suite, exs in suite_examples.items():
        for e in exs:
            if caches[suite].get(e["key"]) is None:
                suites_of.setdefault(e["key"], set()).add(suite)
        _count_examples(spec.name, suite, "cached", sum(caches[suite].get(e["key"]) is not None for e in exs))
    fresh: dict[str, str] = {}
    if todo:
        progress = ProgressLine(f"eval {spec.name}", total=len(suites_of), unit="examples",
                                interval_s=progress_interval_s)

        def on_answer(key: str, _answer: str) -> None:
            progress.update(1)
            for suite in suites_of[key]:
                _count_examples(spec.name, suite, "generated", 1)

        fresh = predict_examples(spec, todo, batch_size=batch_size, num_actors=num_actors,
                                 max_new_tokens=max_new_tokens, use_gpu=use_gpu, on_answer=on_answer,
                                 in_process=in_process)
        progress.finish()
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
