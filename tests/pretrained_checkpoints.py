"""Small pretrained checkpoints in the real releases' layouts, written locally (nothing is downloaded).

    python tests/pretrained_checkpoints.py --out /tmp/ckpts
    python workflows/full.py --preset paper-cpu --run-dir runs/paper-cpu \
        --set model.blip2_path=/tmp/ckpts/blip2-opt --set model.llm_path=/tmp/ckpts/llama

Two folders, each as its release ships it:
- ``blip2-opt/``: ``Blip2ForConditionalGeneration.save_pretrained`` of a BLIP-2 whose language model
  is an OPT (``config.json`` with vision, Q-Former and OPT text configs, ``model.safetensors``) and
  the image processor's ``preprocessor_config.json``, as in ``Salesforce/blip2-opt-2.7b``;
- ``llama/``: ``LlamaForCausalLM.save_pretrained`` and its own tokenizer (``tokenizer.json``, a
  byte-level BPE fitted on English and Chinese text, with ``<s>``, ``</s>``, ``<unk>`` and
  ``<pad>``), as a LLaMA-family release (Ziya-13B after its delta merge) ships.

Small widths and seeded random weights: the same seed writes the same bytes. The widths deliberately
differ from the tiny preset's (and BLIP-2's image size and normalisation from CLIP's), so a run that
took a size from its preset instead of from the checkpoint fails loudly.
"""

from __future__ import annotations

import argparse
import os
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PretrainedDirs", "write_pretrained_checkpoints", "BLIP2_IMAGE_SIZE", "BLIP2_IMAGE_MEAN",
           "BLIP2_IMAGE_STD"]

BLIP2_IMAGE_SIZE = 48
# Not CLIP's: proves the processor reads them from preprocessor_config.json.
BLIP2_IMAGE_MEAN = [0.5, 0.45, 0.4]
BLIP2_IMAGE_STD = [0.25, 0.27, 0.29]

# Text the LLM's tokenizer is fitted on: both languages, so neither falls back to bytes wholesale.
_CORPUS = [
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "A man is riding a bicycle down the street on a sunny day.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "a red circle and a blue square on a white background",
    "What colour is the triangle? The triangle is green.",
    "How many shapes are in the picture? There are three shapes.",
    "中国的首都是北京。", "今天天气很好，我们去公园散步吧。",
    "图片里有一个红色的圆形和一个蓝色的正方形。", "请根据我的指示,以及所给的图片,做出相应的回答。", "好的。",
]


@dataclass(frozen=True)
class PretrainedDirs:
    blip2: Path
    llm: Path


def _llama_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ying.model.tokenizer import tokenizer_corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Sorted and de-duplicated: the same text always gives the same vocabulary.
    tok.train_from_iterator(sorted(set(_CORPUS + tokenizer_corpus())), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", add_bos_token=False)


def write_pretrained_checkpoints(out: str | Path, seed: int = 0) -> PretrainedDirs:
    """Write ``<out>/blip2-opt`` and ``<out>/llama``; returns their paths."""
    import torch
    import transformers
    from transformers import Blip2Config, Blip2ForConditionalGeneration, LlamaConfig, LlamaForCausalLM, OPTConfig

    transformers.utils.logging.disable_progress_bar()

    out = Path(out)
    dirs = PretrainedDirs(blip2=out / "blip2-opt", llm=out / "llama")

    torch.manual_seed(seed)
    blip2 = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=dict(image_size=BLIP2_IMAGE_SIZE, patch_size=12, hidden_size=48, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=96),
        # BLIP-2's Q-Former cross-attends to the image every second layer, as here.
        qformer_config=dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                            cross_attention_frequency=2, encoder_hidden_size=48),
        text_config=OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                              vocab_size=64, word_embed_proj_dim=32).to_dict(),
        num_query_tokens=6))
    blip2.save_pretrained(dirs.blip2, safe_serialization=True)
    # The image processor's file as the release ships it (BlipImageProcessor's fields); written as JSON
    # because the processor class itself wants torchvision, which Ying does not need.
    (dirs.blip2 / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": BLIP2_IMAGE_MEAN, "image_std": BLIP2_IMAGE_STD, "image_processor_type": "BlipImageProcessor",
        "processor_class": "Blip2Processor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"height": BLIP2_IMAGE_SIZE, "width": BLIP2_IMAGE_SIZE}}, indent=2) + "\n")

    tokenizer = _llama_tokenizer(vocab_size=900)
    torch.manual_seed(seed + 1)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=56, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=112, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    llm.save_pretrained(dirs.llm, safe_serialization=True)
    tokenizer.save_pretrained(dirs.llm)
    return dirs


def main() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # nothing here runs on an accelerator; DeepSpeed need not look
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write blip2-opt/ and llama/ into")
    parser.add_argument("--seed", type=int, default=0, help="weights' seed (the same seed writes the same bytes)")
    args = parser.parse_args()
    dirs = write_pretrained_checkpoints(args.out, args.seed)
    print(json.dumps({"blip2_path": str(dirs.blip2), "llm_path": str(dirs.llm)}))


if __name__ == "__main__":
    main()
