"""Continuous batching for Serve: per-request token limits, sampling, stop strings and streaming.

``ying.model.inference.YingPredictor`` answers a batch with one ``max_new_tokens`` and greedy
decoding, which is what evaluation needs. A server batches requests that each ask for their own
``max_tokens``, ``temperature``, ``top_p`` and ``stop``, some streaming, and that arrive one by one.
This module decodes them token by token in one shared batch (its own loop over the language model
with a KV cache, not ``model.generate``):

- a request joins the running batch at the next token step (its prompt is prefilled, its cache
  rows are appended), and leaves it as soon as it ends (its own limit, EOS or a stop string): its
  answer is delivered then, and its rows stop costing. A batch therefore stays full under load
  instead of forming, running to the longest request's end, and forming again;
- the prompt is built by the model's own processor (paper Figure 3; Table 12's Chinese dialogue
  prompt when a request asks for it), which the Serve ingress runs (``prepare``) so that image
  decoding and tokenisation stay out of the model's loop; images are embedded the way
  ``Blip2ForConditionalGeneration.generate`` does, so greedy answers match the eval stage's;
- each row has its own temperature and top-p (temperature 0 is greedy), and streams its new text
  as it is produced;
- one request whose input can't be prepared, or that makes its prefill fail, gets an error of its
  own: the rest are answered (a group that fails to prefill is retried one request at a time).

``GenerationEngine.generate`` answers a fixed list of requests (tests, the health check);
``ContinuousBatcher`` is the Serve replica's: requests are submitted from any thread and one
decoding thread runs while there is work. ``batch_sizes`` counts the rows of every decoding step.

Checkpoints load through ``ying.model.checkpoint.load_checkpoint``: the checkpoint's ``model.dtype``
(bfloat16 for the paper preset) on a GPU, float32 on the CPU (``inference_dtype``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "GenerationEngine",
    "ContinuousBatcher",
    "load_engine",
    "load_preparer",
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
    # The processor's encoding of the above (``Preparer.prepare``), made where the request was
    # validated; None: the engine encodes it.
    prompt: Any = None


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




class Preparer:
    """A checkpoint's processor without its weights: what the Serve ingress runs before the model.

    Pixels stay uint8 (resized, not normalised): a quarter of float32's bytes on the way to the
    model replica, which normalises them (``GenerationEngine.admit``) to the same values."""

    def __init__(self, processor):
        from ying.model.processor import YingProcessor

        class _Uint8Pixels(YingProcessor):
            def pixel_values(self, images: list[bytes]) -> torch.Tensor:
                return torch.from_numpy(self.pixels_uint8(images))

        self.processor = copy.copy(processor)
        self.processor.__class__ = _Uint8Pixels

    def prepare(self, request: GenerationRequest):
        """The model's input for ``request`` (prompt token ids, uint8 pixels); raises on a bad input."""
        return self.processor.encode_prompt(
            {"images": request.images, "instruction": request.instruction, "inputs": request.inputs},
            request.chinese_dialogue)


def load_preparer(checkpoint: str) -> Preparer:
    """The ``Preparer`` of a checkpoint (local or ``s3://``): its tokenizer and model config, no weights."""
    from ying import storage
    from ying.config import ModelConfig
    from ying.model.checkpoint import YING_MODEL_FILE, load_checkpoint_tokenizer
    from ying.model.processor import YingProcessor

    meta = storage.read_json(storage.join(checkpoint, YING_MODEL_FILE))
    cfg = ModelConfig.model_validate(meta["model"])
    return Preparer(YingProcessor.from_model_config(load_checkpoint_tokenizer(checkpoint), cfg))


def _per_row_sampling(scores: torch.Tensor, temperatures: list[float], top_ps: list[float]) -> torch.Tensor:
    """Each row's own temperature and top-p; a row with temperature 0 keeps only its argmax (greedy)."""
    temps = torch.tensor(temperatures, dtype=torch.float32, device=scores.device).unsqueeze(1)  # (B, 1)
    top_p = torch.tensor(top_ps, dtype=torch.float32, device=scores.device).unsqueeze(1)  # (B, 1)
    greedy = temps == 0
    argmax = scores.argmax(dim=-1, keepdim=True)
    scaled = scores / torch.where(greedy, torch.ones_like(temps), temps)
    # Top-p: drop the tail of each row's sorted distribution past its own mass (always keep the best).
    sorted_scores, order = scaled.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    drop_sorted = (probs.cumsum(dim=-1) - probs) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    scaled = scaled.masked_fill(drop, float("-inf"))
    only_argmax = torch.full_like(scores, float("-inf")).scatter(-1, argmax, 0.0)
    return torch.where(greedy, only_argmax, scaled)


class _Row:
    """One request inside the decoding loop: its tokens, limit, stop strings and stream.

    ``emit(event)`` receives ``{"delta": text}`` while the row streams (``stream``), then exactly one
    ``{"finish": GenerationResult}``."""

    def __init__(self, request: GenerationRequest, tokenizer, emit: Callable[[dict], None], stream: bool):
        self.request = request
        self.tokenizer = tokenizer
        self.emit = emit
        self.stream = stream
        self.prompt = None  # the processor's Example
        self.tokens: list[int] = []
        self.done = False
        self.reason = "length"
        self.emitted = ""
        self.cut: str | None = None  # text up to a stop string, once one appears
        self.hold = max((len(s) for s in request.stop), default=1) - 1
        self.cancelled = False  # its caller went away: it leaves the batch at the next step, unanswered

    def cancel(self) -> None:
        self.cancelled = True

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()

    def push(self, token: int, eos_id: int) -> bool:
        """Take the row's next token; True once the row has ended."""
        req = self.request
        if token == eos_id:
            self.done, self.reason = True, "stop"
        else:
            self.tokens.append(token)
            if len(self.tokens) >= req.max_new_tokens:
                self.done, self.reason = True, "length"
        if req.stop or self.stream:  # only these rows pay for decoding text at every step
            text = self._text()
            hits = [text.find(s) for s in req.stop if s in text]
            if hits:
                self.cut = text[: min(hits)]
                self.done, self.reason = True, "stop"
            elif self.stream and not self.done:
                # Hold back what may still turn into a stop string, an unfinished UTF-8 character,
                # or trailing whitespace the final answer strips.
                safe = text[: len(text) - self.hold] if self.hold else text
                safe = safe.rstrip("\ufffd").rstrip()
                if len(safe) > len(self.emitted) and safe.startswith(self.emitted):
                    self.emit({"delta": safe[len(self.emitted):]})
                    self.emitted = safe
        return self.done

    def finish(self) -> None:
        text = (self.cut if self.cut is not None else self._text()).strip()
        if self.stream and text.startswith(self.emitted) and len(text) > len(self.emitted):
            self.emit({"delta": text[len(self.emitted):]})
            self.emitted = text
        self.done = True
        self.emit({"finish": GenerationResult(text=text, finish_reason=self.reason,
                                              prompt_tokens=len(self.prompt.input_ids), completion_tokens=len(self.tokens))})

    def fail(self, error: str) -> None:
        self.done = True
        self.emit({"finish": GenerationResult(error=error)})


class _Batch:
    """The rows being decoded together and their state: the language model's KV cache (B rows,
    left-padded to the longest), its attention mask (B, L), each row's next position id and last
    token (what the next step feeds)."""

    def __init__(self, rows: list[_Row], cache, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor):
        self.rows, self.cache, self.mask, self.positions, self.last = rows, cache, mask, positions, last

    def select(self, keep: list[int]) -> "_Batch | None":
        """The batch with only the rows ``keep``; columns no remaining row attends to are dropped."""
        if not keep:
            return None
        if len(keep) < len(self.rows):
            idx = torch.tensor(keep, device=self.mask.device)
            self.rows = [self.rows[i] for i in keep]
            self.mask, self.positions, self.last = (t.index_select(0, idx) for t in (self.mask, self.positions, self.last))
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)
        first = int((self.mask.sum(dim=0) > 0).nonzero()[0])  # left padding every remaining row has
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        return self

    def join(self, other: "_Batch | None") -> "_Batch":
        """Append ``other``'s rows: both caches left-padded to the longer one (masked out)."""
        if other is None:
            return self
        width = max(self.mask.shape[1], other.mask.shape[1])
        pad = lambda t, dim_from_end: torch.nn.functional.pad(  # noqa: E731  (left padding of one dim)
            t, (0, 0) * (dim_from_end - 1) + (width - t.shape[-dim_from_end], 0))
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.rows = self.rows + other.rows
        return self


class GenerationEngine:
    """One loaded checkpoint. Model calls are serialised per engine (thread-safe)."""

    def __init__(self, model, tokenizer, processor, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.preparer = Preparer(processor)
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

        def emitter(i: int) -> Callable[[dict], None]:
            def emit(event: dict) -> None:
                if "finish" in event:
                    results[i] = event["finish"]
                if on_event is not None:
                    on_event(i, event)
            return emit

        rows = [_Row(r, self.tokenizer, emitter(i), on_event is not None) for i, r in enumerate(requests)]
        batch = self.admit(None, rows)
        while batch is not None:
            batch = self.step(batch)
        return results  # type: ignore[return-value]

    # ---- the decoding loop's pieces (ContinuousBatcher drives them) ----------------------------

    def admit(self, batch: _Batch | None, rows: list[_Row]) -> _Batch | None:
        """Prefill ``rows`` (their first token is chosen) and append those still going to ``batch``."""
        ready = []
        for row in rows:
            if row.cancelled:
                continue
            try:
                prompt = row.request.prompt if row.request.prompt is not None else self.preparer.prepare(row.request)
                if prompt.pixel_values.dtype == torch.uint8:  # as Preparer sends them
                    prompt = dataclasses.replace(prompt, pixel_values=self.processor.normalize(prompt.pixel_values))
                row.prompt = prompt
                ready.append(row)
            except Exception as e:  # a bad input is this request's problem only
                row.fail(f"could not prepare the input: {type(e).__name__}: {e}")
        if not ready:
            return batch
        try:
            new = self._prefill(ready)
        except Exception as e:
            if len(ready) == 1:
                ready[0].fail(f"generation failed: {type(e).__name__}: {e}")
                return batch
            # Find the request that breaks the group: prefill each alone.
            logger.warning("a prefill of %d requests failed (%s: %s); admitting them one by one",
                           len(ready), type(e).__name__, e)
            for row in ready:
                batch = self.admit(batch, [row])
            return batch
        if new is None or batch is None:  # every new row ended on its first token, or nothing ran yet
            return new or batch
        return batch.join(new)

    def step(self, batch: _Batch) -> _Batch | None:
        """One token for every row of ``batch``; rows that end leave it (None: none left)."""
        try:
            with self._lock, torch.inference_mode():
                mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
                out = self.model.language_model(input_ids=batch.last.unsqueeze(1), attention_mask=mask,
                                                position_ids=batch.positions.unsqueeze(1),
                                                cache=batch.cache, use_cache=True, logits_to_keep=1)
                batch.mask, batch.positions = mask, batch.positions + 1
                return self._advance(batch, out.logits[:, -1, :])
        except Exception as e:
            logger.error("a decoding step of %d rows failed: %s: %s", len(batch.rows), type(e).__name__, e)
            for row in batch.rows:
                if not row.done:
                    row.fail(f"generation failed: {type(e).__name__}: {e}")
            return None

    def _prefill(self, rows: list[_Row]) -> _Batch | None:
        from transformers import DynamicCache

        from ying.model.inference import model_inputs

        with self._lock, torch.inference_mode():
            inputs = model_inputs(self.processor.collate([r.prompt for r in rows], pad_left=True), self.model)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            embeds = self._embed(ids, inputs["pixel_values"])
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate does for left padding
            cache = DynamicCache()  # filled in place by the forward pass
            out = self.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                            cache=cache, use_cache=True, logits_to_keep=1)
            batch = _Batch(rows, cache, mask, positions[:, -1] + 1, ids[:, -1])
            return self._advance(batch, out.logits[:, -1, :])

    def _embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """The language model's input embeddings with each image's query outputs in its <image> slots,
        computed as ``Blip2ForConditionalGeneration.generate`` does."""
        m = self.model
        embeds = m.get_input_embeddings()(input_ids)
        if pixel_values.shape[0] == 0:
            return embeds
        image_embeds = m.vision_model(pixel_values, return_dict=True).last_hidden_state
        image_mask = torch.ones(image_embeds.size()[:-1], dtype=torch.long, device=image_embeds.device)
        query = m.qformer(query_embeds=m.query_tokens.expand(image_embeds.shape[0], -1, -1),
                          encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                          return_dict=True).last_hidden_state
        if query.dtype != image_embeds.dtype:
            query = query.to(image_embeds.dtype)
        projected = m.language_projection(query).to(embeds.device, embeds.dtype)
        slots = (input_ids == m.config.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(slots, projected)

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Choose each row's next token from ``logits`` (B, V), hand it to the row, drop ended rows."""
        scores = logits.float()
        requests = [r.request for r in batch.rows]
        if any(r.temperature > 0 for r in requests):
            scores = _per_row_sampling(scores, [r.temperature for r in requests], [r.top_p for r in requests])
            tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        batch.last = tokens
        keep = []
        eos = self.tokenizer.eos_token_id
        for i, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
            if row.cancelled:
                row.done = True
            elif row.push(token, eos):
                row.finish()
            else:
                keep.append(i)
        return batch.select(keep)


class BatchStats:
    """What a replica's batchers did: requests, and the rows of each decoding step (a histogram)."""

    def __init__(self):
        self.requests = 0
        self.rows_per_step: collections.Counter = collections.Counter()  # rows -> decoding steps
        self.prefills: collections.Counter = collections.Counter()  # requests joining at once -> prefills
        self._lock = threading.Lock()

    def as_dict(self) -> dict:
        with self._lock:
            steps = sum(self.rows_per_step.values())
            return {"requests": self.requests, "steps": steps,
                    "mean_rows_per_step": round(sum(k * v for k, v in self.rows_per_step.items()) / max(1, steps), 2),
                    "rows_per_step": dict(sorted(self.rows_per_step.items())),
                    "prefills": dict(sorted(self.prefills.items()))}


class ContinuousBatcher:
    """Requests from any thread, decoded together by one thread that runs while there is work.

    ``submit`` queues a request; it joins the running batch at the next step, up to
    ``max_batch_size`` rows (the rest wait their turn). An idle batcher waits up to
    ``batch_wait_timeout_s`` for a burst to gather before its first prefill. ``max_batch_size=1``
    answers one request at a time.
    """

    def __init__(self, engine: GenerationEngine, max_batch_size: int, batch_wait_timeout_s: float,
                 stats: BatchStats | None = None):
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = batch_wait_timeout_s
        self.stats = stats or BatchStats()
        self._pending: collections.deque[_Row] = collections.deque()
        self._cv = threading.Condition()
        self._running = False

    def submit(self, request: GenerationRequest, emit: Callable[[dict], None], stream: bool = False) -> _Row:
        """Queue ``request``; ``emit`` gets its events (deltas only when ``stream``, then one finish),
        called from the decoding thread. The returned row's ``cancel()`` drops it unanswered."""
        row = _Row(request, self.engine.tokenizer, emit, stream)
        with self._cv:
            self._pending.append(row)
            with self.stats._lock:
                self.stats.requests += 1
            if self._running:
                self._cv.notify()
            else:
                self._running = True
                threading.Thread(target=self._loop, daemon=True, name=f"decode-{self.engine.name}").start()
        return row

    def _take(self, batch: _Batch | None) -> list[_Row] | None:
        """Rows to admit now; None when there is nothing left to do (the thread then ends)."""
        with self._cv:
            if batch is None:
                if not self._pending:
                    self._running = False
                    return None
                deadline = time.monotonic() + self.wait_s
                while len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
            room = self.max_batch_size - (len(batch.rows) if batch is not None else 0)
            return [self._pending.popleft() for _ in range(min(room, len(self._pending)))]

    def _loop(self) -> None:
        batch: _Batch | None = None
        try:
            while (rows := self._take(batch)) is not None:
                if rows:
                    with self.stats._lock:
                        self.stats.prefills[len(rows)] += 1
                    batch = self.engine.admit(batch, rows)
                if batch is not None:
                    with self.stats._lock:
                        self.stats.rows_per_step[len(batch.rows)] += 1
                    batch = self.engine.step(batch)
        except BaseException as e:  # never leave a caller waiting for a finish that won't come
            logger.exception("the decoding loop of %s failed", self.engine.name)
            with self._cv:
                stranded = (batch.rows if batch is not None else []) + list(self._pending)
                self._pending.clear()
                self._running = False
            for row in stranded:
                if not row.done:
                    row.fail(f"generation failed: {type(e).__name__}: {e}")
