"""The LLM judge: pairwise response quality (paper §4 Figure 4, Appendix G) and video QA accuracy (Table 8).

Pairwise: each (question, reference, ours, baseline) goes into the Table 13 template in both orders,
each order sampled ``samples`` times at ``temperature`` (the paper: 3 at temperature 1); each
response's six scores are averaged and the higher average wins. A request that fails (HTTP error,
timeout, unparseable output) is *missing*: it is never scored. An instance is judged only when
both orders have at least one parsed sample, and the report states the coverage.

Responses are cached under ``<cache_dir>/judge/<sha256>.json`` keyed by (model, prompt,
temperature, sample index): a re-run sends nothing it already has. Failures are not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from urllib.parse import urlsplit, urlunsplit
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ying import storage

__all__ = [
    "PAIRWISE_TEMPLATE",
    "VIDEO_QA_TEMPLATE",
    "prompt_hash",
    "parse_pair_scores",
    "parse_yes_no",
    "JudgeClient",
    "judge_pairwise",
    "judge_video_accuracy",
]

# Table 13, verbatim (the paper's line breaks restored: one blank line around each block).
PAIRWISE_TEMPLATE = """[Question]
{Q}

[The Start of Reference Answer]
{R}
[The End of Reference Answer]

[The Start of Assistant 1's Answer]
{R1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{R2}
[The End of Assistant 2's Answer]

[System]
We would like to request your feedback on the performance of two AI assistants in response to the user's multimodal question displayed above. We provided no multimodal inputs other than question text, but we provided a reference answer for this question. You need to evaluate the quality of the two responses based on the question and the reference answer.
Please rate the on the follow aspects:
1. Accuracy: whether the candidate's response is consistent with the original answer, this is important as we do not want a misleading result;
2. Relevance: whether the candidate's response is highly relevant to the question and image content;
3. Naturalness: whether the candidate's response is engaging, providing a great communication experience for the user when interacting with the AI visual assistant.
of the two Assistants' responses.
Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.
Please first provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the responses were presented does not affect your judgment. Then, output two lines indicating the scores for Assistant 1 and 2, respectively.
Output with the following format:
Evaluation evidence: <evaluation explanation here>
The score of Assistant 1: <score>
The score of Assistant 2: <score>"""

# Table 8 follows Yu et al. 2023's practice of LLM-judged QA correctness; the paper prints no
# template, so this one asks for the decision the table reports (correct or not) and nothing else.
VIDEO_QA_TEMPLATE = """You are evaluating answers to questions about a video.
[Question]
{Q}
[Correct Answer]
{R}
[Predicted Answer]
{P}
Is the predicted answer correct, i.e. does it match the meaning of the correct answer? Reply with "yes" or "no" on the first line, then a short reason."""


def prompt_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


_SCORE = re.compile(r"score\s+of\s+assistant\s*([12])\s*(?:is|:)?\s*:?\s*\**\s*(\d+(?:\.\d+)?)", re.I)


def parse_pair_scores(text: str) -> tuple[float, float] | None:
    """(Assistant 1, Assistant 2) from a judge's output; the last stated score of each wins; None if absent.

    Accepts the template's lines and common variants ("The score of Assistant 1: 8/10",
    "**The score of Assistant 2:** 7.5"). Scores outside 1-10 are rejected.
    """
    found: dict[str, float] = {}
    for m in _SCORE.finditer((text or "").replace("*", "")):
        found[m.group(1)] = float(m.group(2))
    if set(found) != {"1", "2"} or not all(0 <= v <= 10 for v in found.values()):
        return None
    return found["1"], found["2"]


def parse_yes_no(text: str) -> bool | None:
    first = re.findall(r"[a-z]+", (text or "").strip().lower())
    if not first:
        return None
    if first[0] in ("yes", "correct"):
        return True
    if first[0] in ("no", "incorrect", "wrong"):
        return False
    return None


@dataclass
class JudgeClient:
    """Chat completions against an OpenAI-compatible endpoint, one sample per request, with a response cache."""

    base_url: str
    model: str
    api_key: str = field(repr=False)  # never printed
    cache_dir: str = ""
    temperature: float = 1.0
    timeout_s: float = 60.0
    max_retries: int = 2
    concurrency: int = 4

    @classmethod
    def from_config(cls, judge_cfg, cache_dir: str) -> "JudgeClient":
        api_key = os.environ.get(judge_cfg.api_key_env, "")
        if not api_key:
            # Local OpenAI-compatible servers often take any key; the real API will answer 401 and
            # every request then counts as missing.
            api_key = "none"
        return cls(judge_cfg.base_url, judge_cfg.model, api_key, cache_dir, judge_cfg.temperature,
                   judge_cfg.timeout_s, judge_cfg.max_retries, judge_cfg.concurrency)

    def _cache_path(self, prompt: str, sample: int) -> str:
        key = hashlib.sha256(json.dumps([self.model, prompt, self.temperature, sample]).encode("utf-8")).hexdigest()
        return storage.join(self.cache_dir, "judge", f"{key}.json")

    def complete_many(self, requests: list[tuple[str, int]]) -> tuple[list[str | None], dict[str, int]]:
        """Texts for (prompt, sample index) pairs, None where the request failed; counts of cached/sent/failed."""
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                               max_retries=self.max_retries)
        counts = {"cached": 0, "sent": 0, "failed": 0}
        lock = threading.Lock()

        def count(kind: str) -> None:
            with lock:
                counts[kind] += 1

        def one(req: tuple[str, int]) -> str | None:
            prompt, sample = req
            path = self._cache_path(prompt, sample)
            if storage.exists(path):
                count("cached")
                return storage.read_json(path)["text"]
            count("sent")
            try:
                resp = client.chat.completions.create(
                    model=self.model, temperature=self.temperature,
                    messages=[{"role": "user", "content": prompt}])
                text = resp.choices[0].message.content
            except openai.OpenAIError as e:
                count("failed")
                print(f"[judge] request failed ({type(e).__name__}); counted as missing", flush=True)
                return None
            if not isinstance(text, str):
                count("failed")
                return None
            storage.write_json_atomic(path, {"model": self.model, "temperature": self.temperature,
                                             "sample": sample, "text": text})
            return text

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            texts = list(pool.map(one, requests))
        return texts, counts


def judge_pairwise(client: JudgeClient, items: list[dict], samples: int = 3) -> dict:
    """Win/tie/lose of "ours" against a baseline over ``items`` ({question, reference, ours, baseline}).

    Order A puts ours as Assistant 1, order B as Assistant 2; ``samples`` samples per order.
    """
    requests, slots = [], []
    for i, it in enumerate(items):
        for order in ("ours_first", "baseline_first"):
            r1, r2 = (it["ours"], it["baseline"]) if order == "ours_first" else (it["baseline"], it["ours"])
            prompt = PAIRWISE_TEMPLATE.format(Q=it["question"], R=it["reference"], R1=r1, R2=r2)
            for s in range(samples):
                requests.append((prompt, s))
                slots.append((i, order))
    texts, counts = client.complete_many(requests)
    per_item: list[dict[str, list[tuple[float, float]]]] = [{"ours_first": [], "baseline_first": []} for _ in items]
    unparsed = 0
    for (i, order), text in zip(slots, texts):
        if text is None:
            continue
        pair = parse_pair_scores(text)
        if pair is None:
            unparsed += 1
            continue
        ours, base = pair if order == "ours_first" else (pair[1], pair[0])
        per_item[i][order].append((ours, base))
    win = tie = lose = 0
    details = []
    for it, orders in zip(items, per_item):
        if not orders["ours_first"] or not orders["baseline_first"]:
            details.append({"id": it.get("id"), "judged": False})
            continue
        all_pairs = orders["ours_first"] + orders["baseline_first"]
        ours = sum(p[0] for p in all_pairs) / len(all_pairs)
        base = sum(p[1] for p in all_pairs) / len(all_pairs)
        win += ours > base
        tie += ours == base
        lose += ours < base
        details.append({"id": it.get("id"), "judged": True, "ours": ours, "baseline": base,
                        "n_scores": len(all_pairs)})
    judged = win + tie + lose
    return {"win": win, "tie": tie, "lose": lose, "judged": judged, "total": len(items),
            "coverage": judged / len(items) if items else 0.0,
            "requests": len(requests), "unparsed": unparsed, **counts, "items": details}


def judge_video_accuracy(client: JudgeClient, items: list[dict]) -> dict:
    """Accuracy of one model's answers ({question, reference, prediction}) judged yes/no; failures are missing."""
    requests = [(VIDEO_QA_TEMPLATE.format(Q=it["question"], R=it["reference"], P=it["prediction"]), 0) for it in items]
    texts, counts = client.complete_many(requests)
    verdicts = [parse_yes_no(t) if t is not None else None for t in texts]
    judged = [v for v in verdicts if v is not None]
    return {"accuracy": sum(judged) / len(judged) if judged else None, "judged": len(judged), "total": len(items),
            "coverage": len(judged) / len(items) if items else 0.0, **counts}


def judge_settings(judge_cfg) -> dict:
    """What the report states about the judge (never the key)."""
    parts = urlsplit(judge_cfg.base_url or "")
    # A key in the URL's user-info (https://user:key@host) must not reach the report.
    base_url = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) \
        if parts.hostname else judge_cfg.base_url
    return {"model": judge_cfg.model, "base_url": base_url, "temperature": judge_cfg.temperature,
            "samples_per_order": judge_cfg.samples, "pairwise_prompt_sha256": prompt_hash(PAIRWISE_TEMPLATE),
            "video_prompt_sha256": prompt_hash(VIDEO_QA_TEMPLATE)}
