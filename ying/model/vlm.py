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
        text = LlamaConfig.from_pretrained(cfg.llm_path)
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
) -> Blip2ForConditionalGeneration:
    """A fresh Ying-VLM in ``cfg.dtype``: random init from the sizes, or BLIP-2 + LLM weights from their paths.

    ``device="meta"`` builds the shapes only (no memory), e.g. to check the paper preset on a laptop.
    Pretrained parts are loaded straight into the dtype and onto ``device`` (see ``ying.model.weights``);
    under an active ``deepspeed.zero.Init`` (ZeRO-3) every module is built partitioned.
    """
    config = blip2_config(cfg, tokenizer)
    attn = resolve_attn_implementation(cfg.attn_implementation, on_gpu=on_gpu)
    config.text_config._attn_implementation = attn
    if device == "meta" or str(device) == "meta":
        with torch.device("meta"):
            return Blip2ForConditionalGeneration(config)
    dtype = torch_dtype(cfg.dtype)
    target = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)
    if not cfg.blip2_path and not cfg.llm_path:
        with default_dtype(dtype), target:
            return Blip2ForConditionalGeneration(config)

    # Shapes only, then each part comes from its checkpoint (or is initialised) on the target device.
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    if cfg.blip2_path:
        # Vision encoder, Q-Former and query tokens from BLIP-2; its OPT language model is dropped.
        blip2 = Blip2ForConditionalGeneration.from_pretrained(cfg.blip2_path, dtype=dtype, device_map={"": target})
        for part, ours, theirs in (("vision", config.vision_config, blip2.config.vision_config),
                                   ("qformer", config.qformer_config, blip2.config.qformer_config)):
            if (ours.hidden_size, ours.num_hidden_layers) != (theirs.hidden_size, theirs.num_hidden_layers):
                raise ValueError(f"model.{part} sizes (hidden {ours.hidden_size}, layers {ours.num_hidden_layers}) "
                                 f"do not match {cfg.blip2_path} (hidden {theirs.hidden_size}, layers "
                                 f"{theirs.num_hidden_layers}); set model.{part} to the checkpoint's sizes")
        model.vision_model, model.qformer, model.query_tokens = blip2.vision_model, blip2.qformer, blip2.query_tokens
        del blip2
    if cfg.llm_path:
        from transformers import LlamaForCausalLM

        llm = LlamaForCausalLM.from_pretrained(cfg.llm_path, dtype=dtype, device_map={"": target},
                                               attn_implementation=attn)
        # Rows for <image> (and <pad>) start at the mean of the trained embeddings, not at random.
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.language_model = llm
    # Whatever no checkpoint provided (always the projection) is initialised by the model's own rules.
    with default_dtype(dtype), target:
        if not cfg.blip2_path:
            from transformers import Blip2QFormerModel, Blip2VisionModel

            model.vision_model = Blip2VisionModel(config.vision_config)
            model.qformer = Blip2QFormerModel(config.qformer_config)
            model.query_tokens = torch.nn.Parameter(
                torch.randn(1, config.num_query_tokens, config.qformer_config.hidden_size) * config.initializer_range)
        model.language_projection = torch.nn.Linear(config.qformer_config.hidden_size,
                                                    config.text_config.hidden_size)
        model._init_weights(model.language_projection)
        if not cfg.llm_path:
            from transformers import LlamaForCausalLM

            model.language_model = LlamaForCausalLM(config.text_config)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"Ying-VLM parts left unloaded after loading pretrained weights: {still_meta[:5]}")
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
    """
    out = model(
        pixel_values=batch["pixel_values"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
    )
    logits = out.logits[:, :-1, :]  # (B, T-1, V): position t predicts token t+1
    targets = batch["labels"][:, 1:]  # (B, T-1)
    n_tokens = int((targets != -100).sum())
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
    )
    return loss, n_tokens
