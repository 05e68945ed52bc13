"""Ying-VLM's prompt format (paper Figure 3) and the zero-shot Chinese dialogue prompt (Table 12)."""

from __future__ import annotations

__all__ = ["PROMPT_TEMPLATE", "ZH_DIALOGUE_PROMPT", "format_prompt"]

PROMPT_TEMPLATE = "<human>:\n{instruction}\n{input}\n<bot>:\n"

# Appendix F: a short Chinese exchange before the question nudges an English-tuned model to answer
# in Chinese. The paper's table ends the bot turn with "好的。"; we stop the prompt at "<bot>:\n" so
# that the model writes the answer itself.
ZH_DIALOGUE_PROMPT = (
    "<human>:\n请根据我的指示,以及所给的图片,做出相应的回答。\n<bot>:\n好的。\n"
    "<human>:\n{instruction}\n{input}\n<bot>:\n"
)


def format_prompt(instruction: str, inputs: str, chinese_dialogue: bool = False) -> str:
    template = ZH_DIALOGUE_PROMPT if chinese_dialogue else PROMPT_TEMPLATE
    return template.format(instruction=instruction.strip(), input=inputs.strip())
