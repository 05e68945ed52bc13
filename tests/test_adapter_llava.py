"""LLaVA-Instruct-150K: one record per gpt turn, the history in ``inputs``, one reject per broken
conversation, and ``read`` counting conversations through the real unify."""

import json
import os

import pytest

from ying.config import load_config
from ying.data.build import build_unified, list_split
from ying.data.instructions import load_pool
from ying.data.miniworld import generate_miniworld
from ying.data.miniworld.scenes import Scene, Shape, draw_scene, encode_jpeg
from ying.data.records import read_records, read_rejects
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import adapter_options, get_task

from test_miniworld import small_cfg, tree_digest

mod = get_task("llava")
FILE = "llava_instruct_150k.json"


def picture(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scene = Scene(64, "grey", (Shape("circle", "red", (8, 8, 24, 24)),))
    open(path, "wb").write(encode_jpeg(draw_scene(scene)))


def turn(who: str, value: str) -> dict:
    return {"from": who, "value": value}


# The release's shape: ids repeat (one picture, several entries), the marker on either side.
CONVERSATIONS = [
    {"id": "000000000001", "image": "000000000001.jpg", "conversations": [  # good, 2 rounds
        turn("human", "<image>\nWhat color is the circle?"), turn("gpt", "The circle is red."),
        turn("human", "Where is it?"), turn("gpt", "It is in the top left corner.")]},
    {"id": "000000000001", "image": "000000000001.jpg", "conversations": [  # good, marker after the question
        turn("human", "Describe the image in detail.\n<image>"), turn("gpt", "A red circle on a grey background.")]},
    {"id": "000000000003", "image": "000000000003.jpg", "conversations": [  # its image is not there
        turn("human", "<image>\nWhat is this?"), turn("gpt", "A circle."),
        turn("human", "What color?"), turn("gpt", "Red.")]},
    {"id": "000000000002", "image": "000000000002.jpg", "conversations": [  # no gpt turn
        turn("human", "<image>\nWhat is this?")]},
]
GOOD_ROUNDS = 3  # 2 + 1


def write_release(root: str, image_dir: str | None = None) -> str:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, FILE), "w") as f:
        json.dump(CONVERSATIONS, f)
    images = image_dir or os.path.join(root, "images")
    for name in ("000000000001.jpg", "000000000002.jpg"):
        picture(os.path.join(images, name))
    return root


def read(root, **options):
    items = list(mod.read_instances(root, "train", **options))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("generation", "en", ("train",))
    assert not mod.SPEC.rephrase and not mod.SPEC.stage2_mix
    pool = load_pool("llava")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_one_instance_per_gpt_turn_with_the_history_and_no_image_marker(tmp_path):
    root = write_release(str(tmp_path / "llava"))
    path = os.path.join(root, FILE)
    good, bad = read(root)
    assert [g.source_id for g in good] == ["000000000001-0-1", "000000000001-0-2", "000000000001-1-1"]
    first, second, third = good
    assert first.inputs == "Question: What color is the circle?" and first.outputs == "The circle is red."
    assert second.inputs == ("Dialog so far:\nQ: What color is the circle?\nA: The circle is red.\n"
                             "Question: Where is it?")
    assert second.outputs == "It is in the top left corner."
    assert third.inputs == "Question: Describe the image in detail."  # the marker after the question, gone too
    assert all("<image>" not in g.inputs for g in good)
    assert first.group == second.group == f"{path}#[0]" and third.group == f"{path}#[1]"
    assert first.source == f"{path}#[0].conversations[1]" and second.source == f"{path}#[0].conversations[3]"
    assert all(g.image_paths == [os.path.join(root, "images", "000000000001.jpg")] for g in good)
    assert (second.meta["round"], second.meta["rounds"], second.meta["image_id"]) == (2, 2, 1)
    # One reject per broken conversation, whatever its number of gpt turns, with its reason.
    assert [(r.source, r.reason) for r in bad] == [
        (f"{path}#[2]", f"missing image file {os.path.join(root, 'images', '000000000003.jpg')}"),
        (f"{path}#[3]", "no gpt turn"),
    ]


@pytest.mark.parametrize("conversation, reason", [
    ([turn("gpt", "Hello."), turn("human", "<image>\nHi?")], "turn 0: a gpt turn with no human question before it"),
    ([turn("human", "<image>\nA?"), turn("human", "B?"), turn("gpt", "C.")], "turn 1: two human turns in a row"),
    ([turn("human", "<image>"), turn("gpt", "C.")], "turn 0: empty human question"),
    ([turn("human", "<image>\nA?"), turn("gpt", "  ")], "turn 1: empty gpt answer"),
    ([turn("human", "<image>\nA?"), {"from": "system", "value": "x"}], "turn 1 is not a {from: human|gpt, value: text} object"),
    ("not a list", "conversations is not a list"),
])
def test_a_malformed_conversation_is_one_reject(tmp_path, conversation, reason):
    root = str(tmp_path)
    picture(os.path.join(root, "images", "a.jpg"))
    json.dump([{"id": "a", "image": "a.jpg", "conversations": conversation}], open(os.path.join(root, FILE), "w"))
    good, bad = read(root)
    assert not good and [r.reason for r in bad] == [reason]


def test_an_unanswered_last_question_is_dropped_and_a_text_only_entry_rejected(tmp_path):
    root = str(tmp_path)
    picture(os.path.join(root, "images", "a.jpg"))
    json.dump([{"id": "a", "image": "a.jpg", "conversations": [turn("human", "<image>\nA?"), turn("gpt", "B."),
                                                                turn("human", "C?")]},
               {"id": "b", "conversations": [turn("human", "Hi?"), turn("gpt", "Hello.")]}],
              open(os.path.join(root, FILE), "w"))
    good, bad = read(root)
    assert [g.outputs for g in good] == ["B."] and good[0].meta["rounds"] == 1
    assert len(bad) == 1 and bad[0].reason.startswith("no image")


def test_a_missing_or_broken_file_is_one_reject(tmp_path):
    good, bad = read(str(tmp_path))
    assert not good and len(bad) == 1 and "missing file" in bad[0].reason
    open(os.path.join(tmp_path, FILE), "w").write('[{"id": "a", "image": "a.jpg", "conver')
    good, bad = read(str(tmp_path))
    assert not good and len(bad) == 1 and "not valid JSON" in bad[0].reason


def test_image_dir_option_comes_from_the_data_config(tmp_path):
    cfg = load_config("tiny", overrides=[f"data.llava_image_dir={tmp_path / 'train2017'}"])
    assert adapter_options("llava", cfg.data) == {"image_dir": str(tmp_path / "train2017")}
    assert adapter_options("coco", cfg.data) == {}  # adapters without settings take none
    assert adapter_options("llava", load_config("tiny").data) == {"image_dir": None}
    root = write_release(str(tmp_path / "llava"), image_dir=str(tmp_path / "train2017"))
    good, bad = read(root, **adapter_options("llava", cfg.data))
    assert len(good) == GOOD_ROUNDS and len(bad) == 2
    assert good[0].image_paths == [str(tmp_path / "train2017" / "000000000001.jpg")]
    good, bad = read(root)  # the default <root>/images/ has no pictures here
    assert not good and all("missing image file" in r.reason for r in bad[:3])


def test_listing_counts_conversations_read_and_rows_listed(tmp_path):
    root = write_release(str(tmp_path / "llava"))
    listing = list_split("llava", root, "train", None, 0, str(tmp_path / "listing"), 2)
    assert (listing["read"], listing["listed"], listing["offered"]) == (4, GOOD_ROUNDS + 2, GOOD_ROUNDS)
    # A sample counts the conversations its rounds come from (and every reject).
    sampled = list_split("llava", root, "train", 1, 0, str(tmp_path / "sampled"), 2)
    assert (sampled["read"], sampled["listed"]) == (3, 3)


def reconciled(stats: dict) -> dict:
    c = stats["llava"]["train"]
    assert c["listed"] == c["written"] + c["rejected"], c  # every row listed ends as a record or a reject
    return c


def test_unify_one_record_per_gpt_turn_and_read_counts_conversations(tmp_path, ray_cluster):
    root = write_release(str(tmp_path / "llava"))
    cfg = load_config("tiny", overrides=["data.tasks=[llava]", "data.held_out=[]"])
    out = str(tmp_path / "unified")
    c = reconciled(build_unified(cfg, {"llava": root}, out))
    assert (c["read"], c["written"], c["rejected"]) == (len(CONVERSATIONS), GOOD_ROUNDS, 2)
    records = sorted(read_records(out, "train"), key=lambda r: r["id"])
    assert [r["id"] for r in records] == ["llava-train-000000000001-0-1", "llava-train-000000000001-0-2",
                                          "llava-train-000000000001-1-1"]
    assert records[1]["inputs"] == ("Dialog so far:\nQ: What color is the circle?\nA: The circle is red.\n"
                                    "Question: Where is it?")
    assert all("<image>" not in r["inputs"] and r["category"] == "generation" and r["images"] for r in records)
    assert all(r["instruction"] in load_pool("llava") for r in records)
    assert json.loads(records[0]["meta"])["source"] == f"{FILE}#[0].conversations[1]"
    rejects = read_rejects(out)
    assert [(r["source"].rsplit("/", 1)[1], r["reason"].split(" ", 2)[:2]) for r in rejects] == [
        (f"{FILE}#[2]", ["missing", "image"]), (f"{FILE}#[3]", ["no", "gpt"])]


def test_unify_reads_images_from_data_llava_image_dir(tmp_path, ray_cluster):
    images = str(tmp_path / "coco" / "train2017")
    root = write_release(str(tmp_path / "llava"), image_dir=images)
    cfg = load_config("tiny", overrides=["data.tasks=[llava]", "data.held_out=[]", f"data.llava_image_dir={images}"])
    out = str(tmp_path / "unified")
    c = reconciled(build_unified(cfg, {"llava": root}, out))
    assert (c["read"], c["written"], c["rejected"]) == (len(CONVERSATIONS), GOOD_ROUNDS, 2)
    assert len(read_records(out, "train")) == GOOD_ROUNDS


def test_miniworld_release_reads_cleanly_deterministically_and_truly(tmp_path):
    cfg = small_cfg()
    root = generate_miniworld(str(tmp_path / "a"), cfg, seed=3, tasks=["llava"])["llava"]
    again = generate_miniworld(str(tmp_path / "b"), cfg, seed=3, tasks=["llava"])["llava"]
    other = generate_miniworld(str(tmp_path / "c"), cfg, seed=4, tasks=["llava"])["llava"]
    assert tree_digest(root) == tree_digest(again) and tree_digest(root) != tree_digest(other)
    entries = json.load(open(os.path.join(root, FILE)))
    n = cfg.n_images["llava/train"]
    assert len(entries) == n and {e["image"] for e in entries} == set(os.listdir(os.path.join(root, "images")))
    firsts = [e["conversations"][0]["value"] for e in entries]
    assert any(v.startswith("<image>\n") for v in firsts) and any(v.endswith("\n<image>") for v in firsts)
    assert {len(e["conversations"]) // 2 for e in entries} <= {1, 2, 3}
    good, bad = read(root)
    assert not bad and len(good) == sum(len(e["conversations"]) // 2 for e in entries)
    assert [g.source_id for g in good] == [g.source_id for g in read(again)[0]]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    for inst in good:  # every answer is true of its picture
        scene = scenes[f"images/{inst.meta['image_file']}"]
        shapes = {(s["color"], s["kind"]) for s in scene["shapes"]}
        question = inst.inputs.splitlines()[-1].removeprefix("Question: ")
        answer = inst.outputs
        if question.startswith("What color is the "):
            kind = question.removeprefix("What color is the ").rstrip("?")
            assert answer == f"The {kind} is {dict((k, c) for c, k in shapes)[kind]}."
        elif question.startswith("How many"):
            assert answer.split()[2] == {1: "one", 2: "two", 3: "three"}[len(shapes)]
        elif question.startswith("Is there a "):
            color, kind = question.removeprefix("Is there a ").rstrip("?").split()
            assert answer.startswith("Yes" if (color, kind) in shapes else "No")
        elif question.startswith("What shape"):
            assert any(answer.endswith(f"{c} {k}.") or answer == f"The {c} object is a {k}." for c, k in shapes)
        else:  # a description: every shape named, and the background
            assert all(f"{c} {k}" in answer for c, k in shapes) and scene["background"] in answer


def test_a_llava_image_is_known_by_its_coco_id_to_the_contamination_guard():
    """LLaVA trains on COCO train2017, which holds most of val2014: the guard must see the COCO id in a
    LLaVA record to keep a VQA v2 evaluation image out of the llava variant's training."""
    from ying.data.contamination import image_identities

    llava = {"task": "llava", "split": "train", "meta": json.dumps({"image_id": 33471})}
    vqa_eval = {"task": "vqa-v2", "split": "validation", "meta": json.dumps({"image_id": 33471})}
    assert "coco:33471" in image_identities(llava, digests=["aa"]) & image_identities(vqa_eval, digests=["bb"])
