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
from contextlib import nullcontext

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
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0, device: str | None = None
) -> Blip2ForConditionalGeneration:
    """A fresh Ying-VLM: random init from the sizes, or BLIP-2 + LLM weights from their paths.

    ``device="meta"`` builds the shapes only (no memory), e.g. to check the paper preset on a laptop.
    """
    config = blip2_config(cfg, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device) if device else nullcontext():
        model = Blip2ForConditionalGeneration(config)
    if device == "meta":
        return model
    if cfg.blip2_path:
        # Vision encoder, Q-Former and query tokens from BLIP-2; its OPT language model is dropped.
        pretrained = Blip2ForConditionalGeneration.from_pretrained(cfg.blip2_path, torch_dtype=torch.float32)
        for part in ("vision_model", "qformer"):
            getattr(model, part).load_state_dict(getattr(pretrained, part).state_dict())
        model.query_tokens.data.copy_(pretrained.query_tokens.data)
        del pretrained
    if cfg.llm_path:
        from transformers import LlamaForCausalLM

        llm = LlamaForCausalLM.from_pretrained(cfg.llm_path, torch_dtype=torch.float32)
        llm.resize_token_embeddings(len(tokenizer))  # room for <image> and <pad>
        model.language_model.load_state_dict(llm.state_dict())
        del llm
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
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
