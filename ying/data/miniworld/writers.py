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
- ``flickr8k-cn``: ``data/flickr8kzhc.caption.txt`` (lines ``<image>.jpg#zhc#<n> <caption>``, every
  image's caption 0 first, then every caption 1, as the release orders them),
  split lists ``data/flickr8k{train,val,test}.txt`` (one image id per line) and images under
  ``Flicker8k_Dataset/`` (the release's own spelling).
- ``msrvtt-qa``: ``{train,val,test}_qa.json`` (lists of {answer, category_id, id, question, video_id})
  and MSR-VTT's clip folders ``TrainValVideo/video<N>.mp4`` (train, val) and ``TestVideo/video<N>.mp4``
  (test), video ids numbered on across splits as in MSR-VTT.

- ``okvqa``: OK-VQA v1.1's ``OpenEnded_mscoco_{train,val}2014_questions.json`` and
  ``mscoco_{train,val}2014_annotations.json`` (ten answers each, no ``multiple_choice_answer``: the
  majority answer is the output) with images ``{train,val}2014/COCO_*2014_%012d.jpg``; questions need
  a little outside knowledge about the shapes (fruit colours, a polygon's sides).
- ``clevr``: CLEVR v1.0's ``questions/CLEVR_{train,val}_questions.json`` and PNG images
  ``images/{train,val}/CLEVR_{train,val}_%06d.png``; spatial relation and counting questions.
- ``visual-dialog``: VisDial v1.0's ``visdial_1.0_{train,val,test}.json`` (shared question and
  answer lists, dialogs of index pairs; the last test round has no answer), with train images in
  ``train2014/`` and ``val2014/`` (COCO names), val in ``VisualDialog_val2018/`` and test in
  ``VisualDialog_test2018/``.
- ``llava``: LLaVA-Instruct-150K's ``llava_instruct_150k.json`` and ``images/`` (``llava.py``).

Shared COCO val2014 pictures: as in the real releases, a COCO val2014 image can appear in several
datasets. OK-VQA validation and one in ten Visual Dialog training dialogs draw on the same pool of
val2014 images (same id, same bytes), just as VisDial v1.0 trains on COCO val2014 images that
VQA v2 and OK-VQA evaluate on; the QC stage's contamination guard must take those training
records out. (The first five writers keep their own id ranges, as they always had.)

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
    dialog_rounds,
    knowledge_question,
    spatial_questions,
    captions_en,
    captions_zh,
    draw_scene,
    encode_jpeg,
    random_scene,
    vqa_questions,
)
from .laion import write_laion
from .llava import write_llava
from .video import clip_frames, clip_questions, encode_mp4, random_clip

__all__ = ["WRITERS", "SEEDED_WRITERS", "COCO_VAL_POOL_FIRST_ID", "coco_val_pool_scene"]

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
            {"info": info, "license": lic, "data_subtype": folder, "annotations": annotations, "data_type": "mscoco"},
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
        sink.put_json(  # the release's key order: the categories come last
            f"annotations/instances_{folder}.json",
            {"info": {"description": "Ying mini-world in the COCO instances format"},
             "images": images, "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
             "annotations": annotations, "categories": GOI_CATEGORIES},
        )


_FLICKR_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def write_flickr8k_cn(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    lines: list[tuple[int, str]] = []  # (caption number, line): the release lists every #0, then every #1, ...
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
                lines.append((k, f"{image_id}.jpg#zhc#{k} {caption}"))
        sink.put(f"data/flickr8k{_FLICKR_SPLITS[split]}.txt", ("\n".join(ids) + "\n").encode("utf-8"))
    ordered = [line for _, line in sorted(lines, key=lambda kl: kl[0])]  # stable: image order within a number
    sink.put("data/flickr8kzhc.caption.txt", ("\n".join(ordered) + "\n").encode("utf-8"))


_MSRVTT_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def write_msrvtt_qa(
    sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random], n_frames: int = 16
) -> None:
    video_id = 0
    for split in ("train", "validation", "test"):  # MSR-VTT numbers videos train, then val, then test
        if split not in sizes:
            continue
        rng, qa, qa_id = rngs[split], [], 0
        folder = "TestVideo" if split == "test" else "TrainValVideo"
        for _ in range(sizes[split]):
            clip = random_clip(rng, size)
            rel = f"{folder}/video{video_id}.mp4"
            sink.put(rel, encode_mp4(clip_frames(clip, n_frames)))
            sink.scenes[rel] = {"background": clip.background, "kind": clip.kind, "color": clip.color,
                                "direction": clip.direction, "side": clip.side, "cross": clip.cross,
                                "frames": n_frames}
            for question, answer in clip_questions(clip):
                # category_id: one of MSR-VTT's 20 video categories (0-19); the mini-world files every clip under one.
                qa.append({"answer": answer, "category_id": 9, "id": qa_id, "question": question, "video_id": video_id})
                qa_id += 1
            video_id += 1
        sink.put_json(f"{_MSRVTT_SPLITS[split]}_qa.json", qa)


# The shared "COCO val2014" pool: image id -> scene depends on (seed, id) only, so every dataset
# that uses a pool id writes the same picture under it.
COCO_VAL_POOL_FIRST_ID = 900_001


def coco_val_pool_scene(seed: int, image_id: int, size: int) -> Scene:
    return random_scene(random.Random(f"miniworld/{seed}/coco-val2014-pool/{image_id}"), size)


_OKVQA_SPLITS = {"train": "train2014", "validation": "val2014"}
_OKVQA_TRAIN_FIRST_ID = 800_001


def write_okvqa(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random], seed: int = 0) -> None:
    for split, n in sizes.items():
        if split not in _OKVQA_SPLITS:
            raise ValueError(f"okvqa has splits {sorted(_OKVQA_SPLITS)}; got {split!r}")
        folder, rng = _OKVQA_SPLITS[split], rngs[split]
        questions, annotations = [], []
        for i in range(n):
            if split == "validation":  # OK-VQA val images are COCO val2014 images others use too
                image_id = COCO_VAL_POOL_FIRST_ID + i
                scene = coco_val_pool_scene(seed, image_id, size)
            else:
                image_id = _OKVQA_TRAIN_FIRST_ID + i
                scene = random_scene(rng, size)
            sink.put_scene_image(f"{folder}/{_coco_name(folder, image_id)}", scene)
            question, answers, question_type = knowledge_question(scene, rng)
            qid = image_id * 10 + 5  # OK-VQA's ids are the image id with one digit appended
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            annotations.append(
                {
                    "image_id": image_id,
                    "answer_type": "other",
                    "question_type": question_type,
                    "question_id": qid,
                    "confidence": 3,
                    "answers": [{"answer_id": j + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a}
                                for j, a in enumerate(answers)],
                }
            )
        sink.put_json(f"OpenEnded_mscoco_{folder}_questions.json",
                      {"license": {}, "data_subtype": folder, "task_type": "Open-Ended", "data_type": "mscoco",
                       "info": {"description": "Ying mini-world in the OK-VQA v1.1 format"}, "questions": questions})
        sink.put_json(f"mscoco_{folder}_annotations.json",
                      {"license": {}, "data_subtype": folder, "data_type": "mscoco",
                       "info": {"description": "Ying mini-world in the OK-VQA v1.1 format"}, "annotations": annotations})


_CLEVR_SPLITS = {"train": "train", "validation": "val"}


def write_clevr(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    import io

    for split, n in sizes.items():
        if split not in _CLEVR_SPLITS:
            raise ValueError(f"clevr has splits {sorted(_CLEVR_SPLITS)} (test has no answers); got {split!r}")
        sub, rng = _CLEVR_SPLITS[split], rngs[split]
        questions = []
        for i in range(n):
            scene = random_scene(rng, size, n_shapes=rng.choice([2, 3]))
            filename = f"CLEVR_{sub}_{i:06d}.png"
            buf = io.BytesIO()
            draw_scene(scene).save(buf, format="PNG")  # CLEVR ships PNG renders
            sink.put(f"images/{sub}/{filename}", buf.getvalue())
            sink.scenes[f"images/{sub}/{filename}"] = {
                "background": scene.background,
                "shapes": [{"kind": s.kind, "color": s.color, "box": list(s.box)} for s in scene.shapes],
            }
            for question, answer, family in spatial_questions(scene, rng):
                questions.append({"image_index": i, "split": sub, "image_filename": filename,
                                  "question_index": len(questions), "question": question, "answer": answer,
                                  "question_family_index": family})
        sink.put_json(f"questions/CLEVR_{sub}_questions.json",
                      {"info": {"split": sub, "version": "1.0", "license": "Creative Commons Attribution (CC BY 4.0)"},
                       "questions": questions})


_VISDIAL_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_VISDIAL_TRAIN_FIRST_ID = 850_001
_VISDIAL_SHARED_EVERY = 10  # one training dialog in ten is about a COCO val2014 pool image


def write_visual_dialog(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random],
                        seed: int = 0) -> None:
    for split, n in sizes.items():
        rng = rngs[split]
        questions: list[str] = []
        answers: list[str] = []
        q_index: dict[str, int] = {}
        a_index: dict[str, int] = {}

        def index_of(text: str, table: dict[str, int], texts: list[str]) -> int:
            if text not in table:
                table[text] = len(texts)
                texts.append(text)
            return table[text]

        dialogs = []
        for i in range(n):
            if split == "train" and i % _VISDIAL_SHARED_EVERY == _VISDIAL_SHARED_EVERY - 1:
                image_id = COCO_VAL_POOL_FIRST_ID + i // _VISDIAL_SHARED_EVERY
                rel = f"val2014/{_coco_name('val2014', image_id)}"
                scene = coco_val_pool_scene(seed, image_id, size)
            elif split == "train":
                image_id = _VISDIAL_TRAIN_FIRST_ID + i
                rel = f"train2014/{_coco_name('train2014', image_id)}"
                scene = random_scene(rng, size)
            else:
                image_id = i + 1
                folder = "VisualDialog_val2018" if split == "validation" else "VisualDialog_test2018"
                rel = f"{folder}/{folder}_{image_id:012d}.jpg"
                scene = random_scene(rng, size)
            sink.put_scene_image(rel, scene)
            caption, rounds = dialog_rounds(scene, rng)
            turns = []
            for r, (question, answer) in enumerate(rounds):
                qi, ai = index_of(question, q_index, questions), index_of(answer, a_index, answers)
                # VisDial offers 100 candidate answers a round; four keep the mini-world small.
                options = sorted({ai} | set(rng.sample(range(len(answers)), min(3, len(answers)))))
                turn = {"question": qi, "answer": ai, "answer_options": options, "gt_index": options.index(ai)}
                if split == "test" and r == len(rounds) - 1:
                    turn = {"question": qi, "answer_options": options}  # the hidden round the challenge scores
                turns.append(turn)
            dialog = {"image_id": image_id, "caption": caption, "dialog": turns}
            if split == "test":
                dialog["round_id"] = len(turns)
            dialogs.append(dialog)
        sub = _VISDIAL_SPLITS[split]
        sink.put_json(f"visdial_1.0_{sub}.json",
                      {"version": "1.0", "split": sub if split == "train" else f"{sub}2018",
                       "data": {"questions": questions, "answers": answers, "dialogs": dialogs}})


WRITERS = {
    "coco": write_coco,
    "vqa-v2": write_vqa_v2,
    "coco-goi": write_coco_goi,
    "flickr8k-cn": write_flickr8k_cn,
    "msrvtt-qa": write_msrvtt_qa,
    "okvqa": write_okvqa,
    "clevr": write_clevr,
    "visual-dialog": write_visual_dialog,
    "llava": write_llava,  # LLaVA-Instruct-150K's conversations: see llava.py
    "laion": write_laion,  # img2dataset webdataset shards: see laion.py
}
# Writers that need the run seed itself (for the shared COCO val2014 pool), not only their own rngs.
SEEDED_WRITERS = {"okvqa", "visual-dialog"}
