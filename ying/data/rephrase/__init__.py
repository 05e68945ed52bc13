"""Short answer rephrasing (paper §2.2 (2), Appendix C Table 10).

Terse dataset answers ("Magellan") are rewritten into full responses by an LLM given the question,
the answer and the task's context (COCO captions for VQA v2, the rationale for A-OKVQA, OCR tokens for
scene-text tasks). A rewrite is kept only when it agrees with the original answer and is not a refusal
(rules in ``prompt.py``); otherwise the record falls back to the paper's basic template, and
``meta.rephrase.status`` says why (``fallback:<reason>``). The original short answer always stays in
``meta.original_answer``.

- ``prompt``: Table 10, the template fallback, the acceptance check, context from meta;
- ``providers``: ``TemplateProvider`` (offline), ``OpenAIProvider`` / ``LLMClient`` (async ``openai``
  client against any OpenAI-compatible ``base_url``, retries, backoff, Retry-After in seconds or as
  an HTTP date);
- ``limiter``: the cluster-wide requests/min + tokens/min limiter, Retry-After pauses, budgets in
  tokens and in money (a Ray actor);
- ``cache``: every outcome keyed by what changes an answer (model, prompt version, temperature,
  max_tokens, endpoint, prompt), each key owned and written by one actor;
- ``stage``: ``rephrase_records``, one Ray Data pipeline for every split, prompts routed to their owners.
"""

from ying.data.rephrase.prompt import (
    TABLE10_PROMPT,
    TEMPLATE_PROMPT_VERSION,
    RephraseItem,
    RephraseResult,
    build_prompt,
    check_rephrasing,
    context_from_meta,
    template_sentence,
)
from ying.data.rephrase.providers import OpenAIProvider, RephraseProvider, TemplateProvider, make_provider
from ying.data.rephrase.stage import load_coco_captions, rephrase_records, rephrase_rows

__all__ = [
    "TABLE10_PROMPT",
    "TEMPLATE_PROMPT_VERSION",
    "RephraseItem",
    "RephraseResult",
    "RephraseProvider",
    "TemplateProvider",
    "OpenAIProvider",
    "make_provider",
    "build_prompt",
    "template_sentence",
    "check_rephrasing",
    "context_from_meta",
    "load_coco_captions",
    "rephrase_rows",
    "rephrase_records",
]
