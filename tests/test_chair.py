"""CHAIR (Rohrbach et al. 2018) on hand-written captions whose hallucinations are known."""

import json

import pytest

from ying.eval.chair import chair_scores, load_vocabulary, mentioned_objects, vocabulary_from_dict


@pytest.fixture(scope="module")
def coco():
    return load_vocabulary("coco")


def test_shipped_coco_vocabulary_has_the_80_objects_and_lu_synonyms(coco):
    assert len(coco.objects) == 80
    for obj in ("person", "hot dog", "teddy bear", "dining table", "cell phone", "hair drier", "tv"):
        assert obj in coco.objects
    assert mentioned_objects("a kitten on a sofa next to a fridge", coco) == ["cat", "couch", "refrigerator"]


@pytest.mark.parametrize("caption,expected", [
    ("Two dogs eat a hot dog beside a teddy bear.", ["dog", "hot dog", "teddy bear"]),  # multi-word beats single
    ("A man and two women near the buses", ["person", "person", "bus"]),  # synonyms, irregular and -es plurals
    ("knives, scissors and skis on the tables", ["knife", "scissors", "skis", "dining table"]),
    ("a baby elephant under a passenger jet", ["elephant", "airplane"]),  # "baby"/"passenger" are not people here
    ("a woman sits on the toilet seat", ["person", "toilet"]),  # "seat" of a toilet is not a chair
    # Rohrbach et al.'s rule: a caption that names a toilet drops every "seat" ...
    ("the seat of the toilet is up", ["toilet"]),
    ("a chair and two seats beside the toilets", ["chair", "toilet"]),
    ("a toilet seat and a seat", ["toilet"]),
    # ... and only then: without "toilet" a seat is a chair (a urinal does not trigger it, as in the reference)
    ("a seat on the bus", ["chair", "bus"]),
    ("a seat next to a urinal", ["chair", "toilet"]),
    ("mice and geese and oxen", ["mouse", "bird", "cow"]),
    ("a baby animal with two adult giraffes", ["giraffe"]),  # "baby animal" names no COCO object, nor a person
    ("a motor bike by a stop sign and a cell phone", ["motorcycle", "stop sign", "cell phone"]),
    ("The sky is blue and empty.", []),
])
def test_mentions_with_synonyms_plurals_and_multi_word_objects(coco, caption, expected):
    assert mentioned_objects(caption, coco) == expected


def test_chair_counts_each_mention_and_each_bad_caption(coco):
    captions = [
        # truth: dog, person. "cat" is hallucinated, mentioned twice: 2 of 4 mentions.
        ("A man walks his dog past a cat; the cat stares.", ["dog", "person"]),
        # truth given as synonyms: "puppy" is a dog, "sofa" a couch. Nothing hallucinated.
        ("A puppy naps on the couch.", ["puppy", "sofa"]),
        # the hot dog is real; a "dog" would not be.
        ("A hot dog on a plate.", ["hot dog"]),
        # a teddy bear is in the image, the bear (animal) is not.
        ("A bear next to a teddy bear.", ["teddy bear"]),
    ]
    s = chair_scores(captions, coco)
    assert s["n_captions"] == 4
    assert s["n_mentions"] == 4 + 2 + 1 + 2
    assert s["n_hallucinated"] == 2 + 0 + 0 + 1
    assert s["chair_i"] == pytest.approx(3 / 9)
    assert s["chair_s"] == pytest.approx(2 / 4)
    assert s["avg_len"] == pytest.approx((11 + 6 + 6 + 7) / 4)  # words per caption: Table 5 "Len"


def test_miniworld_vocabulary_reads_shapes():
    mw = load_vocabulary("miniworld")
    assert mw.objects == ["circle", "square", "star", "triangle"]
    s = chair_scores([("a red circle and two blue squares", ["circle"])], mw)
    assert (s["n_mentions"], s["n_hallucinated"], s["chair_s"]) == (2, 1, 1.0)


def test_vocabulary_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps({"objects": {"dog": ["puppy"], "cat": ["puppy"]}}))
    with pytest.raises(ValueError, match=r"v\.json.*'puppy' names both"):
        load_vocabulary(str(bad))
    with pytest.raises(FileNotFoundError, match="shipped ones"):
        load_vocabulary("no-such-vocabulary")
    with pytest.raises(ValueError, match="unknown object"):
        vocabulary_from_dict({"objects": {"dog": []}, "compounds": {"hot dog": "food"}})


def test_toilet_rule_is_part_of_the_vocabulary_file():
    with pytest.raises(ValueError, match="drop_when_present names phrases the vocabulary lacks"):
        vocabulary_from_dict({"objects": {"chair": ["seat"]}, "drop_when_present": {"seat": ["toilet"]}})


def _instances(path, annotations):
    path.write_text(json.dumps({
        "images": [{"id": i} for i in sorted({a[0] for a in annotations})],
        "annotations": [{"id": k, "image_id": img, "category_id": cat} for k, (img, cat) in enumerate(annotations)],
        "categories": [{"id": 62, "name": "chair"}, {"id": 67, "name": "dining table"}, {"id": 18, "name": "dog"}],
    }))
    return str(path)


def test_real_coco_ground_truth_joins_instances_and_captions(tmp_path):
    from ying.eval.chair import chair_ground_truth

    captions = [("7", "A dog sleeps under a table."), ("7", "A puppy on the floor."), ("8", "A cat.")]
    with pytest.raises(ValueError, match="eval.chair_instances"):
        chair_ground_truth(captions)  # real COCO without its segmentation annotations
    val = _instances(tmp_path / "instances_val2014.json", [(7, 62), (7, 18), (99, 67)])
    train = _instances(tmp_path / "instances_train2014.json", [(8, 67)])
    gt = chair_ground_truth(captions, "auto", None, [val, train])
    assert gt.vocabulary.name == "coco-80"
    # image 7: dog and dining table from captions, chair from the annotations; image 99 was not asked about
    assert gt.objects == {"7": {"dog", "dining table", "chair"}, "8": {"cat", "dining table"}}
    assert gt.sources == ["reference captions", f"COCO instances {val}", f"COCO instances {train}"]
    with pytest.raises(FileNotFoundError, match="no-such.json"):
        chair_ground_truth(captions, "auto", None, str(tmp_path / "no-such.json"))


def test_real_coco_without_instances_is_a_config_error():
    from ying.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.chair_instances=<coco>/annotations/instances_val2014.json"):
        load_config("tiny", overrides=["data.sources.coco=/data/coco"])
    cfg = load_config("tiny", overrides=["data.sources.coco=/data/coco", "eval.chair_instances=/data/i.json"])
    assert cfg.eval.chair_instances == "/data/i.json"
    assert load_config("tiny", overrides=["data.sources.coco=/data/coco", "eval.suites=[kvqa]"]).eval.suites == ["kvqa"]
