"""Ying-VLM: BLIP-2's vision encoder and Q-Former, a linear projection, and a LLaMA-family LLM.

The whole model is one ``transformers.Blip2ForConditionalGeneration`` with a LLaMA ``text_config``:
each image becomes ``num_query_tokens`` Q-Former outputs, projected into the LLM's embedding space
and placed, as a prefix, where the prompt holds ``<image>`` placeholder tokens. A video is its
sampled frames, each a separate image, so its Q-Former tokens are concatenated (paper §3.2,
following InstructBLIP).

Which parameters train in a stage is data (``train.stageN.trainable``: glob patterns over parameter
names), applied by ``apply_freeze_policy``.
"""

from __future__ import annotations

import fnmatch
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    LlamaConfig,
    PreTrainedTokenizerBase,
)

from ying.config import ModelConfig
from ying.model.tokenizer import IMAGE_TOKEN
from ying.model.weights import default_dtype, resolve_attn_implementation, torch_dtype

__all__ = ["blip2_config", "build_model", "apply_freeze_policy", "count_parameters"]


def blip2_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> Blip2Config:
    vision = Blip2VisionConfig(
        image_size=cfg.vision.image_size,
        patch_size=cfg.vision.patch_size,
        hidden_size=cfg.vision.hidden_size,
        num_hidden_layers=cfg.vision.num_layers,
        num_attention_heads=cfg.vision.num_heads,
        intermediate_size=cfg.vision.intermediate_size,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=cfg.qformer.hidden_size,
        num_hidden_layers=cfg.qformer.num_layers,
        num_attention_heads=cfg.qformer.num_heads,
        intermediate_size=cfg.qformer.intermediate_size,
        cross_attention_frequency=cfg.qformer.cross_attention_frequency,
        encoder_hidden_size=cfg.vision.hidden_size,
    )
    if cfg.llm_path:
        from ying.model.pretrained import checkpoint_file

        # The LLM's own config whole (key/value heads, rope, norms), not just the sizes we keep.
        text = LlamaConfig.from_json_file(checkpoint_file(cfg.llm_path, "config.json", "model.llm_path"))
        # Rows for the tokens Ying adds (<image>, a pad); never fewer than the checkpoint's own rows.
        text.vocab_size = max(len(tokenizer), text.vocab_size)
        # The LLM is built in model.dtype, not in the dtype its release was saved in (transformers
        # builds a sub-model in its config's dtype when it names one).
        text.dtype = cfg.dtype
    else:
        text = LlamaConfig(
            hidden_size=cfg.llm.hidden_size,
            num_hidden_layers=cfg.llm.num_layers,
            num_attention_heads=cfg.llm.num_heads,
            intermediate_size=cfg.llm.intermediate_size,
            max_position_embeddings=cfg.llm.max_position_embeddings,
        )
        text.vocab_size = len(tokenizer)
    text.pad_token_id = tokenizer.pad_token_id
    text.bos_token_id = tokenizer.bos_token_id
    text.eos_token_id = tokenizer.eos_token_id
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=cfg.num_query_tokens,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )


def build_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    on_gpu: bool = False,
    partition: dict | None = None,
) -> Blip2ForConditionalGeneration:
    """A fresh Ying-VLM in ``cfg.dtype``: random init from the sizes, or BLIP-2 + LLM weights from their paths.

    ``device="meta"`` builds the shapes only (no memory), e.g. to check the paper preset on a laptop.
    ``partition``: a DeepSpeed config with ZeRO-3; the model is then built already partitioned across
    the ranks (``deepspeed.zero.Init``) and filled module by module (every rank must call this).
    Pretrained parts come from ``cfg.blip2_path`` / ``cfg.llm_path`` (``ying.model.pretrained``), with
    the sizes resolved from them (``resolve_pretrained``); whatever no checkpoint holds (always the
    language projection) is initialised by the model's own rules, seeded.
    """
    from transformers.initialization import no_init_weights

    config = blip2_config(cfg, tokenizer)
    attn = resolve_attn_implementation(cfg.attn_implementation, on_gpu=on_gpu)
    config.text_config._attn_implementation = attn
    if device == "meta" or str(device) == "meta":
        with torch.device("meta"):
            return Blip2ForConditionalGeneration(config)
    dtype = torch_dtype(cfg.dtype)
    target = torch.device(device) if device is not None else torch.device("cpu")
    pretrained = bool(cfg.blip2_path or cfg.llm_path)
    torch.manual_seed(seed)
    if partition is None and not pretrained:
        with default_dtype(dtype), target:
            return Blip2ForConditionalGeneration(config)

    # Every tensor allocated (whole, or this rank's partition) but not initialised: it is filled next.
    if partition is not None:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=partition), no_init_weights(), default_dtype(dtype):
            model = Blip2ForConditionalGeneration(config)
    else:
        with no_init_weights(), default_dtype(dtype), target:
            model = Blip2ForConditionalGeneration(config)
    torch.manual_seed(seed)
    if pretrained:
        from ying.model.pretrained import load_pretrained_parts

        load_pretrained_parts(model, cfg.blip2_path, cfg.llm_path, partitioned=partition is not None)
    else:  # random init under ZeRO-3: each tensor initialised whole on rank 0, then scattered back
        import deepspeed
        import torch.distributed as dist

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if dist.get_rank() == 0:
                model.init_weights()
    return model


def apply_freeze_policy(model: torch.nn.Module, trainable_patterns: list[str]) -> list[str]:
    """Freeze every parameter except those whose name matches a pattern; return the trainable names.

    A pattern that matches nothing is a config mistake, so it raises with the nearest names.
    """
    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in trainable_patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        raise ValueError(
            f"trainable patterns match no parameter: {unused}; parameter names look like {names[:3]} ... {names[-3:]}"
        )
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad = any(fnmatch.fnmatchcase(name, p) for p in trainable_patterns)
        if param.requires_grad:
            trainable.append(name)
    return trainable


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    # A ZeRO-3 partitioned parameter holds a placeholder; ds_numel is its whole size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable_only)


def answer_loss(model: Blip2ForConditionalGeneration, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over answer tokens (labels != -100), and how many there were.

    Computed here rather than by the model so the shift and the mask are explicit and tested.
    The LM head runs only where a position predicts an answer token (``logits_to_keep`` as a
    boolean mask): the prompt's and the padding's logits would be thrown away, and over the whole
    vocabulary they were the largest matmul and the log-softmax of a step.
    A batch with no images (the ``pretrain`` stage's plain text) runs the LLM alone: input
    embeddings, decoder and LM head; the vision tower, Q-Former and projection take no part.
    ``model`` may be a DeepSpeed engine (whose own ``config`` is DeepSpeed's; ``module`` is the model).
    """
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    predicts_answer = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_answer[:, :-1] = targets != -100
    idle = None
    if batch["pixel_values"].shape[0] == 0:
        module = getattr(model, "module", model)
        if (batch["input_ids"] == module.config.image_token_id).any():
            raise ValueError("answer_loss: the batch has <image> placeholders but no images")
        out = model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   use_cache=False, logits_to_keep=predicts_answer)
        # Trainable parts outside the LLM get a zero gradient rather than none: under ZeRO every rank
        # must reduce the same gradients, and another rank's micro-batch may hold images.
        idle = [p for n, p in module.named_parameters() if p.requires_grad and not n.startswith("language_model.")]
    else:
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=False,  # one forward per batch: a KV cache is never reused (and gradient checkpointing refuses it)
            logits_to_keep=predicts_answer,
        )
    # out.logits is (N, V): the kept positions row by row, the order in which a boolean mask lists targets
    answer_targets = targets[targets != -100]
    n_tokens = int(answer_targets.numel())
    loss = torch.nn.functional.cross_entropy(out.logits.float(), answer_targets)
    if idle:
        loss = loss + 0.0 * sum(p.sum() for p in idle)
    return loss, n_tokens
