"""One writer per source dataset, each producing that release's own file layout.

Every writer takes a ``_Sink`` (where to put files), the split sizes, an image side and a
``random.Random`` per split, and writes:

- ``coco``: Karpathy's ``dataset_coco.json`` (images[{filepath, filename, imgid, cocoid, split,
  sentids, sentences[{tokens, raw, imgid, sentid}]}], dataset) with images under
  ``train2014/COCO_train2014_%012d.jpg`` and ``val2014/COCO_val2014_%012d.jpg``; Karpathy splits
  ``train``/``restval`` (both training), ``val`` and ``test``.
- ``vqa-v2``: ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` and
  ``v2_mscoco_{train,val}2014_annotations.json`` with images ``{train,val}2014/COCO_*2014_%012d.jpg``.
- ``coco-goi``: COCO instances ``annotations/instances_{train,val}2014.json`` (images, annotations
  with bbox [x, y, w, h] and category_id, categories) and the images as above.
- ``flickr8k-cn``: ``data/flickr8kzhc.caption.txt`` (lines ``<image>.jpg#zhc#<n> <caption>``),
  split lists ``data/flickr8k{train,val,test}.txt`` (one image id per line) and images under
  ``Flicker8k_Dataset/`` (the release's own spelling).
- ``msrvtt-qa``: ``{train,val,test}_qa.json`` (lists of {question, answer, video_id, id}) and
  ``videos/video<N>.mp4``, video ids numbered on across splits as in MSR-VTT.

Each root also gets ``_miniworld/scenes.json`` (the drawn ground truth, per file), which no adapter
reads: it is there for tests and debugging.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ... import storage
from .scenes import (
    Scene,
    captions_en,
    captions_zh,
    draw_scene,
    encode_jpeg,
    random_scene,
    vqa_questions,
)
from .video import clip_frames, clip_questions, encode_mp4, random_clip

__all__ = ["WRITERS"]

# Record split -> (COCO image folder, Karpathy split name, id offset keeping ids unique per task).
_COCO_SPLITS = {"train": ("train2014", "train", 1), "validation": ("val2014", "val", 400_001), "test": ("val2014", "test", 700_001)}


class _Sink:
    """Files under one source root (local or any fsspec URL)."""

    def __init__(self, root: str):
        self.root = root
        self.fs, self.base = storage.filesystem(root)
        self.fs.makedirs(self.base, exist_ok=True)
        self.scenes: dict[str, Any] = {}

    def put(self, rel: str, data: bytes) -> None:
        path = f"{self.base.rstrip('/')}/{rel}"
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def put_json(self, rel: str, obj: Any) -> None:
        self.put(rel, json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8"))

    def put_scene_image(self, rel: str, scene: Scene) -> None:
        self.put(rel, encode_jpeg(draw_scene(scene)))
        self.scenes[rel] = {
            "background": scene.background,
            "shapes": [{"kind": s.kind, "color": s.color, "box": list(s.box)} for s in scene.shapes],
        }

    def finish(self) -> None:
        self.put_json("_miniworld/scenes.json", self.scenes)


def _coco_name(folder: str, image_id: int) -> str:
    return f"COCO_{folder}_{image_id:012d}.jpg"


def write_coco(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    images, sent_id, img_idx = [], 0, 0
    for split, n in sizes.items():
        folder, kp_split, offset = _COCO_SPLITS[split]
        rng = rngs[split]
        for i in range(n):
            cocoid = offset + i
            # Karpathy's "restval" images live in val2014 but are training data.
            img_folder, img_split = folder, kp_split
            if split == "train" and i % 10 == 9:
                img_folder, img_split = "val2014", "restval"
            scene = random_scene(rng, size)
            filename = _coco_name(img_folder, cocoid)
            sink.put_scene_image(f"{img_folder}/{filename}", scene)
            sentences = []
            for raw in captions_en(scene):
                tokens = raw.replace(",", "").replace(":", "").split()
                sentences.append({"tokens": tokens, "raw": raw, "imgid": img_idx, "sentid": sent_id})
                sent_id += 1
            images.append(
                {
                    "filepath": img_folder,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": filename,
                    "imgid": img_idx,
                    "split": img_split,
                    "sentences": sentences,
                    "cocoid": cocoid,
                }
            )
            img_idx += 1
    sink.put_json("dataset_coco.json", {"images": images, "dataset": "coco"})


_VQA_SPLITS = {"train": ("train2014", 1), "validation": ("val2014", 400_001)}


def write_vqa_v2(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    for split, n in sizes.items():
        if split not in _VQA_SPLITS:
            raise ValueError(f"vqa-v2 has splits {sorted(_VQA_SPLITS)} (no public test answers); got {split!r}")
        folder, offset = _VQA_SPLITS[split]
        rng = rngs[split]
        questions, annotations = [], []
        for i in range(n):
            image_id = offset + i
            scene = random_scene(rng, size)
            sink.put_scene_image(f"{folder}/{_coco_name(folder, image_id)}", scene)
            for k, (question, answer, answer_type, question_type) in enumerate(vqa_questions(scene, rng)):
                qid = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": question, "question_id": qid})
                annotations.append(
                    {
                        "question_type": question_type,
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)
                        ],
                        "image_id": image_id,
                        "answer_type": answer_type,
                        "question_id": qid,
                    }
                )
        info = {"description": "Ying mini-world in the VQA v2 format", "version": "2.0", "year": 2026}
        lic = {"name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}
        sink.put_json(
            f"v2_OpenEnded_mscoco_{folder}_questions.json",
            {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": lic,
             "data_subtype": folder, "questions": questions},
        )
        sink.put_json(
            f"v2_mscoco_{folder}_annotations.json",
            {"info": info, "license": lic, "data_subtype": folder, "annotations": annotations},
        )


_GOI_SPLITS = {"train": ("train2014", 1), "validation": ("val2014", 400_001)}
GOI_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]


def write_coco_goi(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    cat_id = {c["name"]: c["id"] for c in GOI_CATEGORIES}
    for split, n in sizes.items():
        if split not in _GOI_SPLITS:
            raise ValueError(f"coco-goi has splits {sorted(_GOI_SPLITS)}; got {split!r}")
        folder, offset = _GOI_SPLITS[split]
        rng = rngs[split]
        images, annotations = [], []
        for i in range(n):
            image_id = offset + i
            scene = random_scene(rng, size)
            filename = _coco_name(folder, image_id)
            sink.put_scene_image(f"{folder}/{filename}", scene)
            images.append({"id": image_id, "file_name": filename, "width": size, "height": size,
                           "license": 1, "coco_url": "", "date_captured": "2026-01-01 00:00:00"})
            for k, s in enumerate(scene.shapes):
                x, y, w, h = s.box
                annotations.append(
                    {
                        "id": image_id * 10 + k,
                        "image_id": image_id,
                        "category_id": cat_id[s.kind],
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "area": float(w * h),
                        "iscrowd": 0,
                        "segmentation": [[float(x), float(y), float(x + w), float(y), float(x + w),
                                          float(y + h), float(x), float(y + h)]],
                    }
                )
        sink.put_json(
            f"annotations/instances_{folder}.json",
            {"info": {"description": "Ying mini-world in the COCO instances format"},
             "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
             "images": images, "annotations": annotations, "categories": GOI_CATEGORIES},
        )


_FLICKR_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def write_flickr8k_cn(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    lines: list[str] = []
    seen: set[str] = set()
    for split, n in sizes.items():
        rng = rngs[split]
        ids = []
        for _ in range(n):
            while True:  # Flickr ids look like 1000268201_693b08cb0e
                image_id = f"{rng.randrange(10**9, 10**10)}_{rng.getrandbits(40):010x}"
                if image_id not in seen:
                    seen.add(image_id)
                    break
            scene = random_scene(rng, size)
            sink.put_scene_image(f"Flicker8k_Dataset/{image_id}.jpg", scene)
            ids.append(image_id)
            for k, caption in enumerate(captions_zh(scene)):
                lines.append(f"{image_id}.jpg#zhc#{k} {caption}")
        sink.put(f"data/flickr8k{_FLICKR_SPLITS[split]}.txt", ("\n".join(ids) + "\n").encode("utf-8"))
    sink.put("data/flickr8kzhc.caption.txt", ("\n".join(lines) + "\n").encode("utf-8"))


_MSRVTT_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def write_msrvtt_qa(
    sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random], n_frames: int = 16
) -> None:
    video_id = 0
    for split in ("train", "validation", "test"):  # MSR-VTT numbers videos train, then val, then test
        if split not in sizes:
            continue
        rng, qa, qa_id = rngs[split], [], 0
        for _ in range(sizes[split]):
            clip = random_clip(rng, size)
            rel = f"videos/video{video_id}.mp4"
            sink.put(rel, encode_mp4(clip_frames(clip, n_frames)))
            sink.scenes[rel] = {"background": clip.background, "kind": clip.kind, "color": clip.color,
                                "direction": clip.direction, "side": clip.side, "cross": clip.cross,
                                "frames": n_frames}
            for question, answer in clip_questions(clip):
                qa.append({"answer": answer, "id": qa_id, "question": question, "video_id": video_id})
                qa_id += 1
            video_id += 1
        sink.put_json(f"{_MSRVTT_SPLITS[split]}_qa.json", qa)


WRITERS = {
    "coco": write_coco,
    "vqa-v2": write_vqa_v2,
    "coco-goi": write_coco_goi,
    "flickr8k-cn": write_flickr8k_cn,
    "msrvtt-qa": write_msrvtt_qa,
}
