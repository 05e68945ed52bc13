import json

import pytest

from ying.data import instructions
from ying.data.build import materialize_record
from ying.data.instructions import load_pool, pick_instruction
from ying.data.miniworld import generate_miniworld
from ying.data.tasks import TASKS, get_task

from test_miniworld import TASKS as ALL, small_cfg


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pool_has_ten_distinct(task):
    pool = load_pool(task)
    assert len(pool) == 10 and len(set(pool)) == 10
    assert all(len(s) > 15 for s in pool)
    if get_task(task).SPEC.lang == "zh":
        assert all(any("\u4e00" <= ch <= "\u9fff" for ch in s) for s in pool)


def test_pick_is_deterministic_and_spreads():
    picks = [pick_instruction("vqa-v2", f"vqa-v2-train-{i}", 0) for i in range(200)]
    assert picks == [pick_instruction("vqa-v2", f"vqa-v2-train-{i}", 0) for i in range(200)]
    assert len(set(picks)) == 10
    assert picks != [pick_instruction("vqa-v2", f"vqa-v2-train-{i}", 1) for i in range(200)]


def test_missing_or_short_pool_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(instructions, "POOL_DIR", tmp_path)
    instructions._load.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="no instruction pool"):
            load_pool("coco")
        (tmp_path / "coco.json").write_text(json.dumps(["a"] * 10))
        with pytest.raises(ValueError, match="10 distinct"):
            load_pool("coco")
    finally:
        instructions._load.cache_clear()


def test_built_record_uses_its_task_pool(tmp_path):
    roots = generate_miniworld(str(tmp_path), small_cfg(3), seed=0, tasks=ALL)
    for task in ALL:
        inst = next(i for i in get_task(task).read_instances(roots[task], "train"))
        rec = materialize_record(inst.__dict__, seed=7, frames_per_video=8, max_image_pixels=10**7)
        assert rec["instruction"] in load_pool(task)
        assert rec["instruction"] == pick_instruction(task, rec["id"], 7)
        again = materialize_record(inst.__dict__, seed=7, frames_per_video=8, max_image_pixels=10**7)
        assert again == rec


def test_train_instructions_limit_training_records_only(tmp_path):
    from ying.data.instructions import training_instructions

    roots = generate_miniworld(str(tmp_path), small_cfg(6), seed=0, tasks=["vqa-v2"])
    allowed = set(training_instructions("vqa-v2", 7, 4))
    assert len(allowed) == 4
    seen = {"train": set(), "validation": set()}
    for split in seen:
        for inst in get_task("vqa-v2").read_instances(roots["vqa-v2"], split):
            rec = materialize_record(inst.__dict__, seed=7, frames_per_video=8, max_image_pixels=10**7,
                                     train_instructions=4)
            seen[split].add(rec["instruction"])
    assert seen["train"] <= allowed  # training never sees the other 6 (paper Figure 5)
    assert seen["validation"] - allowed  # evaluation draws from the whole pool
