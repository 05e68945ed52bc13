"""Which records the paper's variants and Stage II train on, and the data.m3it switch (no Ray here).

The DAG runs of both (the variants' rows in report.md; a run from an exported M3IT release through
Stage II) are in test_full_dag.py.
"""

import pytest

from ying.config import load_config
from ying.train.stages import stage_tasks
from ying.train.variants import variant_tasks

# What a tiny run's qc dir holds: task -> training records.
PRESENT = {"coco": 40, "laion": 16, "vqa-v2": 30, "coco-goi": 10, "flickr8k-cn": 4, "msrvtt-qa": 2, "okvqa": 6,
           "clevr": 4, "visual-dialog": 10, "llava": 9}


def test_stage2_mix_leaves_out_held_out_tasks_and_laion_and_llava():
    cfg = load_config("tiny")
    assert stage_tasks(cfg, "stage2", PRESENT) == ["coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"]
    # A listed task trains whatever its adapter says: that is how the llava variant and Stage I get theirs.
    assert stage_tasks(cfg, "stage1", PRESENT) == list(cfg.train.stage1.tasks)


def test_stage2_mix_takes_the_release_tasks_ying_does_not_know():
    """An M3IT release may hold tasks with no adapter here: they train in Stage II, after data.tasks' order;
    a task of data.tasks with no training records is not in the plan."""
    cfg = load_config("tiny")
    present = {"vqa-v2": 30, "coco": 40, "my-new-task": 7, "another-task": 3}
    assert stage_tasks(cfg, "stage2", present) == ["coco", "vqa-v2", "another-task", "my-new-task"]


def test_variant_task_sets():
    cfg = load_config("tiny")
    assert variant_tasks(cfg, "llava", PRESENT) == ["llava"]
    assert variant_tasks(cfg, "zh", PRESENT) == ["flickr8k-cn"]  # held out of Stage II: new to the model
    # Stage II's mix plus the video tasks, which Stage II holds out.
    assert variant_tasks(cfg, "video", PRESENT) == ["coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog",
                                                    "msrvtt-qa"]
    listed = load_config("tiny", overrides=["variants.zh.tasks=[flickr8k-cn, coco]"])
    assert variant_tasks(listed, "zh", PRESENT) == ["flickr8k-cn", "coco"]
    with pytest.raises(ValueError, match="unknown variant"):
        variant_tasks(cfg, "audio", PRESENT)


def test_variants_enabled_are_checked_against_the_papers_three():
    assert load_config("tiny", overrides=["variants.enabled=[llava, zh, video]"]).variants.enabled == [
        "llava", "zh", "video"]
    with pytest.raises(Exception, match="variants.enabled"):
        load_config("tiny", overrides=["variants.enabled=[llava, audio]"])


def test_m3it_replaces_the_raw_sources(tmp_path):
    cfg = load_config("tiny", overrides=[f"data.m3it={tmp_path}"])
    assert cfg.data.m3it == str(tmp_path)
    with pytest.raises(Exception, match="data.m3it=.* replaces the raw releases, so data.sources"):
        load_config("tiny", overrides=[f"data.m3it={tmp_path}", f"data.sources.coco={tmp_path}"])


def test_m3it_mode_checks_its_folder_before_ray_starts(tmp_path):
    from ying.pipeline import missing_sources

    cfg = load_config("tiny", overrides=[f"data.m3it={tmp_path / 'nowhere'}", "miniworld.enabled=false"])
    assert missing_sources(cfg) == [f"data.m3it={tmp_path / 'nowhere'}: no such directory"]
    # The raw sources are not needed: no complaint about data.tasks without data.sources.
    assert missing_sources(load_config("tiny", overrides=[f"data.m3it={tmp_path}", "miniworld.enabled=false"])) == []


def test_switching_to_an_m3it_release_reruns_the_sources_stage(tmp_path):
    """A run dir first built from the raw releases must not keep its sources (and unify from them) once
    data.m3it names a release: the sources stage's fingerprint covers data.m3it."""
    from ying.pipeline import STAGES
    from ying.workflow import plan_fingerprints

    raw = plan_fingerprints(STAGES, load_config("tiny"))
    m3it = plan_fingerprints(STAGES, load_config("tiny", overrides=[f"data.m3it={tmp_path}"]))
    assert m3it["sources"]["fingerprint"] != raw["sources"]["fingerprint"]
    assert m3it["unify"]["fingerprint"] != raw["unify"]["fingerprint"]
