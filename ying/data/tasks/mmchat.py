"""MMChat (Zheng et al., 2022), the paper's "MMChat" version: three line-aligned files per split,
``dialog_<split>.jsonl`` (each line a JSON list of utterances), ``weibo_<split>.jsonl`` (each line
the JSON string of the Weibo post) and ``img_url_<split>.jsonl`` (each line the post's image URLs,
``;``-separated), for splits ``train``, ``dev`` and ``test``. Images are the files the release's
crawler saves: ``image/<sha256(url)>.<url extension, default jpg>``.

Raw lines: ``["这是哪里呀", "杭州西湖，好看吧"]`` / ``"分享图片"`` /
``https://wx1.sinaimg.cn/large/abc.jpg;https://wx2.sinaimg.cn/large/def.jpg``

One instance per dialogue: the inputs are the earlier turns (``A: ...`` / ``B: ...``, one per
line), the output is the last turn, and all the post's images come in order.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator
from urllib.parse import urlparse

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes

SPEC = TaskSpec(key="mmchat", category="chinese", lang="zh", splits=("train", "validation", "test"), rephrase=False)

_SPLIT = {"train": "train", "validation": "dev", "test": "test"}
IMAGE_DIR = "image"
SPEAKERS = ("A", "B")


def image_filename(url: str) -> str:
    """The crawler's file name for an image URL: its SHA-256 plus the URL path's extension."""
    parts = urlparse(url).path.split(".")
    ext = parts[-1] if len(parts) > 1 else "jpg"
    return hashlib.sha256(url.encode("utf-8")).hexdigest() + "." + ext


def format_history(turns: list[str]) -> str:
    return "\n".join(f"{SPEAKERS[i % 2]}: {t}" for i, t in enumerate(turns))


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SPLIT:
        raise ValueError(f"mmchat has splits {SPEC.splits}; got {split!r}")
    s = _SPLIT[split]
    paths = {k: storage.join(root, f"{k}_{s}.jsonl") for k in ("dialog", "weibo", "img_url")}
    try:
        lines = {k: read_bytes(p).splitlines() for k, p in paths.items()}
    except SourceFileError as e:
        yield Reject(SPEC.key, split, " + ".join(paths.values()), str(e))
        return
    if not (len(lines["dialog"]) == len(lines["weibo"]) == len(lines["img_url"])):
        yield Reject(SPEC.key, split, " + ".join(paths.values()),
                     f"files are not line-aligned: {len(lines['dialog'])} dialogues, {len(lines['weibo'])} posts, "
                     f"{len(lines['img_url'])} image lines")
        return
    present = list_names(storage.join(root, IMAGE_DIR))
    for i, (d_raw, w_raw, u_raw) in enumerate(zip(lines["dialog"], lines["weibo"], lines["img_url"]), start=1):
        where = f"{paths['dialog']}:{i}"
        try:
            dialog = json.loads(d_raw.decode("utf-8"))
            weibo = json.loads(w_raw.decode("utf-8"))
            urls = [u.strip() for u in u_raw.decode("utf-8").strip().split(";") if u.strip()]
        except UnicodeDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line {i} is not UTF-8: {e}")
            continue
        except json.JSONDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line {i} is not JSON: {e}")
            continue
        if not isinstance(dialog, list) or not dialog or not all(isinstance(t, str) and t.strip() for t in dialog):
            yield Reject(SPEC.key, split, where, "dialogue is not a non-empty list of utterances")
            continue
        if not urls:
            yield Reject(SPEC.key, split, f"{paths['img_url']}:{i}", "dialogue has no image URLs")
            continue
        names = [image_filename(u) for u in urls]
        missing = [(u, n) for u, n in zip(urls, names) if n not in present]
        if missing:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{missing[0][1]} (for {missing[0][0]})")
            continue
        turns = [t.strip() for t in dialog]
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{s}-{i}",
            source=where,
            inputs=format_history(turns[:-1]),
            outputs=turns[-1],
            image_paths=[storage.join(root, IMAGE_DIR, n) for n in names],
            meta={"line": i, "dialog": dialog, "weibo_content": weibo, "image_urls": urls},
        )
