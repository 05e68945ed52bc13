"""The tokenizer: the LLM's own (paper preset) or a byte-level BPE trained on Ying's own text.

The trained BPE needs no download: it is fitted in well under a second on the instruction pools,
the prompt templates, the mini-world's lexicon and a sample of its bilingual pretraining text
(``ying.data.miniworld.text``), and it is byte-level, so any text (Chinese
included) still encodes; characters it never saw fall back to bytes. It is saved inside every
checkpoint, so inference never re-fits it.
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ying.config import TokenizerConfig

__all__ = ["build_tokenizer", "tokenizer_corpus", "IMAGE_TOKEN", "SPECIAL_TOKENS"]

IMAGE_TOKEN = "<image>"
_PRETRAIN_SAMPLE = 200  # documents of the pretrain text in the BPE's training corpus
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def tokenizer_corpus() -> list[str]:
    """Every kind of text the tiny model reads or writes, from the repository itself."""
    from ying.data import instructions, miniworld
    from ying.data.miniworld.text import generate_text
    from ying.data.tasks import TASKS
    from ying.model.prompt import PROMPT_TEMPLATE, ZH_DIALOGUE_PROMPT

    texts: list[str] = [PROMPT_TEMPLATE, ZH_DIALOGUE_PROMPT, "The answer is .", "答案是。"]
    for task in TASKS:
        texts.extend(instructions.load_pool(task))
    texts.extend(miniworld.lexicon_corpus())
    # The pretrain stage's bilingual text (a fixed sample: the vocabulary never depends on run.seed),
    # so its Chinese words ("背景是", "画面中", ...) are tokens rather than bytes.
    texts.extend(doc["text"] for doc in generate_text(0, _PRETRAIN_SAMPLE, split="tokenizer"))
    return texts


def _train_bpe(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"],
                SPECIAL_TOKENS["unk_token"], IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is out of vocabulary
        show_progress=False,
    )
    # Sorted, de-duplicated input: the same repository always gives the same vocabulary.
    tok.train_from_iterator(sorted(set(corpus)), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return fast


def build_tokenizer(cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    if cfg.kind == "pretrained":
        if not cfg.path:
            raise ValueError("model.tokenizer.kind=pretrained needs model.tokenizer.path (a local dir or Hub id)")
        tok = AutoTokenizer.from_pretrained(cfg.path)
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token or tok.eos_token
        if IMAGE_TOKEN not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        return tok
    return _train_bpe(tokenizer_corpus(), cfg.vocab_size)
