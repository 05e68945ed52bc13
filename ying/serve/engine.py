"""Batched generation for Serve: per-request token limits, sampling, stop strings and streaming.

``ying.model.inference.YingPredictor`` answers a batch with one ``max_new_tokens`` and greedy
decoding, which is what evaluation needs. A server batches requests that each ask for their own
``max_tokens``, ``temperature``, ``top_p`` and ``stop``, some streaming; this module runs such a
batch in one ``model.generate`` call:

- the prompt is built by the model's own processor (paper Figure 3; Table 12's Chinese dialogue
  prompt when a request asks for it) and the batch runs through ``ying.model.inference.generate_tokens``
  (collation, device and dtype moves, greedy defaults), so served answers match the eval stage's;
- a per-row stopping criterion ends each row at its own limit, at EOS or at one of its stop strings,
  and streams each row's new text as it is produced;
- a per-row logits processor applies each row's temperature and top-p (temperature 0 is greedy);
- one request whose input can't be prepared, or that makes the batch fail, gets an error of its
  own: the rest of the batch is answered (a failing batch is retried one request at a time).

Checkpoints load through ``ying.model.checkpoint.load_checkpoint``: the checkpoint's ``model.dtype``
(bfloat16 for the paper preset) on a GPU, float32 on the CPU (``inference_dtype``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "GenerationEngine",
    "load_engine",
    "read_model_limits",
    "ModelLimits",
]

logger = logging.getLogger(__name__)

# (row index, event) where event is {"delta": str} while a row streams, then {"finish": GenerationResult}.
EventCallback = Callable[[int, dict], None]


@dataclass
class GenerationRequest:
    """One request, validated: images are encoded bytes that decode (the ingress checked them)."""

    images: list[bytes]
    instruction: str
    inputs: str = ""
    chinese_dialogue: bool = False
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy (paper §3.1.2)
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    text: str = ""
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length" (max_new_tokens reached)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when this request failed; the other requests of its batch are unaffected


@dataclass(frozen=True)
class ModelLimits:
    """What bounds a request to one checkpoint (read from ``ying_model.json``, no weights loaded)."""

    num_query_tokens: int
    max_text_tokens: int
    max_positions: int

    def max_new_tokens(self, n_images: int) -> int:
        """Tokens left for the answer after the images' query tokens, BOS and the longest prompt."""
        return self.max_positions - n_images * self.num_query_tokens - 1 - self.max_text_tokens


def read_model_limits(checkpoint: str) -> ModelLimits:
    from ying import storage
    from ying.config import ModelConfig
    from ying.model.checkpoint import YING_MODEL_FILE

    meta = storage.read_json(storage.join(checkpoint, YING_MODEL_FILE))
    cfg = ModelConfig.model_validate(meta["model"])
    max_positions = cfg.llm.max_position_embeddings
    if cfg.llm_path:  # the LLM's own config decides (the paper preset's Ziya-13B)
        text_config = storage.read_json(storage.join(checkpoint, "config.json")).get("text_config", {})
        max_positions = text_config.get("max_position_embeddings", max_positions)
    return ModelLimits(cfg.num_query_tokens, cfg.max_text_tokens, max_positions)


def load_engine(checkpoint: str, name: str, device: str | None = None,
                dtype: str | torch.dtype | None = None) -> "GenerationEngine":
    """A Ying checkpoint (local or ``s3://``) through ``ying.model.checkpoint.load_checkpoint``:
    on ``device`` (default: a GPU when there is one) in ``dtype`` (default ``inference_dtype``: the
    checkpoint's ``model.dtype`` on a GPU, float32 on the CPU)."""
    from ying.model.checkpoint import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, processor, _ = load_checkpoint(checkpoint, dtype=dtype, device=device)
    engine = GenerationEngine(model, tokenizer, processor, name)
    logger.info("loaded %s from %s on %s as %s", name, checkpoint, engine.device, engine.dtype)
    return engine


class _PerRowSampling(LogitsProcessor):
    """Each row's own temperature and top-p; a row with temperature 0 keeps only its argmax (greedy)."""

    def __init__(self, temperatures: list[float], top_ps: list[float], device):
        self.temps = torch.tensor(temperatures, dtype=torch.float32, device=device).unsqueeze(1)  # (B, 1)
        self.top_ps = torch.tensor(top_ps, dtype=torch.float32, device=device).unsqueeze(1)  # (B, 1)
        self.greedy = self.temps == 0  # (B, 1)

    def __call__(self, input_ids, scores):  # scores: (B, V) float32
        argmax = scores.argmax(dim=-1, keepdim=True)  # (B, 1)
        scaled = scores / torch.where(self.greedy, torch.ones_like(self.temps), self.temps)
        # Top-p: drop the tail of each row's sorted distribution past its own mass (always keep the best).
        sorted_scores, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        drop_sorted = (probs.cumsum(dim=-1) - probs) > self.top_ps
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
        only_argmax = torch.full_like(scores, float("-inf")).scatter(-1, argmax, 0.0)
        return torch.where(self.greedy, only_argmax, scaled)


class _Rows(StoppingCriteria):
    """Per-row bookkeeping inside ``generate``: each row's tokens, limit, stop strings and stream."""

    def __init__(self, tokenizer, requests: list[GenerationRequest], prompt_tokens: list[int],
                 eos_id: int, on_event: EventCallback | None, row_ids: list[int]):
        self.tokenizer = tokenizer
        self.requests = requests
        self.eos_id = eos_id
        self.on_event = on_event
        self.row_ids = row_ids  # each row's index in the caller's request list
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.done = [False] * len(requests)
        self.reason = ["length"] * len(requests)
        self.emitted = [""] * len(requests)
        self.cut = [None] * len(requests)  # text up to a stop string, once one appears
        self.prompt_tokens = prompt_tokens
        self.hold = [max((len(s) for s in r.stop), default=1) - 1 for r in requests]

    def _text(self, i: int) -> str:
        return self.tokenizer.decode(self.tokens[i], skip_special_tokens=True).lstrip()

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1].tolist()
        for i, req in enumerate(self.requests):
            if self.done[i]:
                continue
            if last[i] == self.eos_id:
                self.done[i], self.reason[i] = True, "stop"
            else:
                self.tokens[i].append(last[i])
                if len(self.tokens[i]) >= req.max_new_tokens:
                    self.done[i], self.reason[i] = True, "length"
            if req.stop or self.on_event is not None:
                text = self._text(i)
                hits = [text.find(s) for s in req.stop if s in text]
                if hits:
                    self.cut[i] = text[: min(hits)]
                    self.done[i], self.reason[i] = True, "stop"
                elif self.on_event is not None and not self.done[i]:
                    # Hold back what may still turn into a stop string, an unfinished UTF-8 character,
                    # or trailing whitespace the final answer strips.
                    safe = text[: len(text) - self.hold[i]] if self.hold[i] else text
                    safe = safe.rstrip("\ufffd").rstrip()
                    if len(safe) > len(self.emitted[i]) and safe.startswith(self.emitted[i]):
                        self.on_event(self.row_ids[i], {"delta": safe[len(self.emitted[i]):]})
                        self.emitted[i] = safe
            if self.done[i] and self.on_event is not None:
                self.on_event(self.row_ids[i], {"finish": self.result(i)})
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def result(self, i: int) -> GenerationResult:
        text = self.cut[i] if self.cut[i] is not None else self._text(i)
        text = text.strip()
        if self.on_event is not None and self.done[i] and text.startswith(self.emitted[i]) and len(text) > len(self.emitted[i]):
            self.on_event(self.row_ids[i], {"delta": text[len(self.emitted[i]):]})
            self.emitted[i] = text
        return GenerationResult(text=text, finish_reason=self.reason[i], prompt_tokens=self.prompt_tokens[i],
                                completion_tokens=len(self.tokens[i]))


class GenerationEngine:
    """One loaded checkpoint. ``generate`` is thread-safe (one batch at a time per engine)."""

    def __init__(self, model, tokenizer, processor, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def generate(self, requests: list[GenerationRequest],
                 on_event: EventCallback | None = None) -> list[GenerationResult]:
        """One result per request, in order. A request that fails gets ``error`` set; the rest still answer.

        ``on_event(i, {"delta": text})`` streams request ``i``'s new text; ``on_event(i, {"finish": result})``
        ends it (also for a failed request). Concatenated deltas equal the final text.
        """
        results: list[GenerationResult | None] = [None] * len(requests)
        encoded = {}
        for i, req in enumerate(requests):
            try:
                encoded[i] = self.processor.encode_prompt(
                    {"images": req.images, "instruction": req.instruction, "inputs": req.inputs},
                    req.chinese_dialogue)
            except Exception as e:  # a bad input is this request's problem only
                results[i] = GenerationResult(error=f"could not prepare the input: {type(e).__name__}: {e}")
        rows = sorted(encoded)
        if rows:
            try:
                for i, r in zip(rows, self._run([requests[i] for i in rows], [encoded[i] for i in rows], on_event, rows)):
                    results[i] = r
            except Exception as e:
                if len(rows) == 1:
                    results[rows[0]] = GenerationResult(error=f"generation failed: {type(e).__name__}: {e}")
                else:
                    # Find the request that breaks the batch: answer each alone.
                    logger.warning("a batch of %d failed (%s: %s); answering its requests one by one",
                                   len(rows), type(e).__name__, e)
                    for i in rows:
                        try:
                            results[i] = self._run([requests[i]], [encoded[i]], on_event, [i])[0]
                        except Exception as e1:
                            results[i] = GenerationResult(error=f"generation failed: {type(e1).__name__}: {e1}")
        for i, r in enumerate(results):
            if r.error is not None and on_event is not None:
                on_event(i, {"finish": r})
        return results  # type: ignore[return-value]

    def _run(self, requests: list[GenerationRequest], encoded: list, on_event: EventCallback | None,
             row_ids: list[int]) -> list[GenerationResult]:
        from ying.model.inference import generate_tokens

        rows = _Rows(self.tokenizer, requests, [len(e.input_ids) for e in encoded], self.tokenizer.eos_token_id,
                     on_event, row_ids)
        sampling = any(r.temperature > 0 for r in requests)
        extra = {}
        if sampling:
            extra["logits_processor"] = LogitsProcessorList(
                [_PerRowSampling([r.temperature for r in requests], [r.top_p for r in requests], self.device)])
        with self._lock:
            # The answers are read from `rows` (each row's own limit and stop strings), not decoded
            # from the returned ids. Sampling happens only through _PerRowSampling: the generation
            # config's own temperature/top-p/top-k are neutralised.
            generate_tokens(self.model, self.tokenizer, self.processor, encoded,
                            max_new_tokens=max(r.max_new_tokens for r in requests),
                            do_sample=sampling, temperature=1.0, top_p=1.0, top_k=None,
                            stopping_criteria=StoppingCriteriaList([rows]), **extra)
        for i in range(len(requests)):
            if not rows.done[i]:  # generate stopped it (its own EOS or length check) before we did
                rows.done[i] = True
                if on_event is not None:
                    on_event(row_ids[i], {"finish": rows.result(i)})
        return [rows.result(i) for i in range(len(requests))]
