"""Any transformers VLM behind the eval model interface: tiny random BLIP-2, InstructBLIP, LLaVA (with
and without a chat template) and InstructBLIP-video built from configs and saved to a temp dir (no
downloads), answered directly, on Ray Data actors and in a Ray task, each with its own prompt format."""

import io
import time

import pytest
from PIL import Image

from ying.eval.predictors import (
    HFVisionPredictor,
    ModelSpec,
    cached_predictions,
    describe_hf_model,
    example_key,
    hf_frame_mode,
    instructblip_video_inputs,
    model_fingerprint,
)

WORDS = ("<pad> <unk> <s> </s> <image> human bot a red green circle blue square what color is the shape "
         "describe image provide brief description of given").split()
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=16)
QFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               encoder_hidden_size=32)


def _tokenizer(image_token: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", **extra)


def _opt(vocab: int) -> dict:
    from transformers import OPTConfig

    return OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                     max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=2,
                     eos_token_id=3).to_dict()


def _blip_images():
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": 32, "width": 32})


def build_blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    tok = _tokenizer()
    proc = Blip2Processor(image_processor=_blip_images(), tokenizer=tok, num_query_tokens=4)
    cfg = Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=_opt(len(tok)), num_query_tokens=4,
                      image_token_index=tok.convert_tokens_to_ids("<image>"))
    return Blip2ForConditionalGeneration(cfg), proc


def build_instructblip():
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

    tok, qtok = _tokenizer(), _tokenizer()
    proc = InstructBlipProcessor(image_processor=_blip_images(), tokenizer=tok, qformer_tokenizer=qtok,
                                 num_query_tokens=4)
    cfg = InstructBlipConfig(vision_config=VISION, qformer_config=dict(QFORMER, vocab_size=len(qtok)),
                             text_config=_opt(len(tok)), num_query_tokens=4,
                             image_token_index=tok.convert_tokens_to_ids("<image>"))
    return InstructBlipForConditionalGeneration(cfg), proc


# A chat template of the llava-1.5 family's shape ("USER: <image>\n... ASSISTANT:"), written for this test.
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def build_llava(chat_template=None):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _tokenizer(image_token=True)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=chat_template)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION).to_dict(), text_config=text.to_dict(),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    return LlavaForConditionalGeneration(cfg), proc


BUILDERS = {"Blip2ForConditionalGeneration": build_blip2,
            "InstructBlipForConditionalGeneration": build_instructblip,
            "LlavaForConditionalGeneration": build_llava,
            "LlavaForConditionalGeneration-chat": lambda: build_llava(LLAVA_CHAT_TEMPLATE)}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    dirs = {}
    for cls, build in BUILDERS.items():
        model, proc = build()
        d = tmp_path_factory.mktemp(cls)
        model.save_pretrained(d)
        proc.save_pretrained(d)
        dirs[cls] = str(d)
    return dirs


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="JPEG")
    return buf.getvalue()


EXAMPLES = [
    {"images": [_jpeg((200, 0, 0))], "instruction": "describe the image", "inputs": ""},
    {"images": [_jpeg((0, 0, 200)), _jpeg((0, 200, 0))], "instruction": "what color", "inputs": "is the shape"},
]


@pytest.mark.parametrize("cls", list(BUILDERS))
def test_hf_model_answers_through_the_eval_interface(model_dirs, cls):
    p = HFVisionPredictor.from_pretrained(model_dirs[cls], name=cls)
    assert type(p.model).__name__ == cls.split("-")[0]
    answers = p.generate(EXAMPLES, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # Only new tokens come back (the prompt is longer than 3 tokens), and greedy decoding repeats itself.
    tok = p.processor.tokenizer
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) <= 3 for a in answers)
    assert p.generate(EXAMPLES, max_new_tokens=3) == answers


def test_not_a_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a transformers vision-to-text model directory"):
        HFVisionPredictor.from_pretrained(str(tmp_path))


def _two_suites() -> dict[str, list[dict]]:
    """EXAMPLES as eval examples (keyed), the second question in two suites."""
    examples = []
    for e in EXAMPLES:
        e = dict(e, chinese_dialogue=False, max_new_tokens=3)
        examples.append(dict(e, key=example_key(e)))
    return {"kvqa": examples, "video": examples[1:]}  # the same question in two suites


def test_ray_data_actors_and_prediction_cache(ray_cluster, model_dirs, tmp_path):
    spec = ModelSpec("tiny-blip2", "hf", model_dirs["Blip2ForConditionalGeneration"])
    suites = _two_suites()
    examples = suites["kvqa"]
    first, stats = cached_predictions(spec, suites, str(tmp_path), batch_size=1, num_actors=2, max_new_tokens=3)
    assert stats == {"generated": 2, "cached": 0}  # a question shared by two suites is generated once
    direct = HFVisionPredictor.from_pretrained(spec.path).generate(EXAMPLES, max_new_tokens=3)
    assert [first["kvqa"][e["key"]] for e in examples] == direct
    again, stats = cached_predictions(spec, suites, str(tmp_path), batch_size=1, max_new_tokens=3)
    assert stats == {"generated": 0, "cached": 3} and again == first
    # New weights at the same path are a different model: nothing is reused.
    before = model_fingerprint(spec)
    import torch

    torch.manual_seed(1)
    model, _ = build_blip2()
    model.save_pretrained(spec.path)
    assert model_fingerprint(spec) != before
    _, stats = cached_predictions(spec, suites, str(tmp_path), batch_size=2, max_new_tokens=3)
    assert stats == {"generated": 2, "cached": 0}


def test_answers_in_a_task_and_in_process_are_the_same_and_fill_the_same_cache(ray_cluster, model_dirs, tmp_path):
    """One actor's worth (eval.num_actors: 1) answers in a Ray task, in a pooled process; a Tune trial
    that trained in its own process answers there (nothing to start): the same answers either way."""
    from ray.util.state import list_tasks

    spec = ModelSpec("tiny-instructblip", "hf", model_dirs["InstructBlipForConditionalGeneration"])
    suites = _two_suites()
    in_task, stats = cached_predictions(spec, suites, str(tmp_path / "task"), batch_size=1, max_new_tokens=3)
    deadline = time.time() + 60  # the State API hears of a task a little after it ran
    while not (tasks := list_tasks(address=ray_cluster.dashboard_url,
                                   filters=[("name", "=", "ying:eval-tiny-instructblip")])) and time.time() < deadline:
        time.sleep(0.5)
    assert len(tasks) == 1  # one task answered, not an actor pool
    here, here_stats = cached_predictions(spec, suites, str(tmp_path / "here"), batch_size=2, max_new_tokens=3,
                                          in_process=True)
    assert here == in_task and here_stats == stats == {"generated": 2, "cached": 0}
    again, stats = cached_predictions(spec, suites, str(tmp_path / "here"), batch_size=2, max_new_tokens=3,
                                      in_process=True)
    assert again == here and stats == {"generated": 0, "cached": 3}


QUESTION = {"images": [_jpeg((1, 2, 3))], "instruction": "What color is the shape?", "inputs": "Options: red, blue"}


@pytest.mark.parametrize("cls,fmt,english,chinese", [
    # BLIP-2's model card: "Question: {} Answer:"; the processor puts the query tokens in front itself.
    ("Blip2ForConditionalGeneration", "blip2", "Question: What color is the shape? Options: red, blue Answer:",
     "请根据我的指示,以及所给的图片,做出相应的回答。\n好的。\nQuestion: What color is the shape? Options: red, blue Answer:"),
    # InstructBLIP's model card: the instruction as written.
    ("InstructBlipForConditionalGeneration", "instructblip", "What color is the shape? Options: red, blue",
     "请根据我的指示,以及所给的图片,做出相应的回答。\n好的。\nWhat color is the shape? Options: red, blue"),
    # A processor with a chat template: the template decides, with the Table 12 exchange as chat turns.
    ("LlavaForConditionalGeneration-chat", "chat_template",
     "USER: <image>\nWhat color is the shape? Options: red, blue ASSISTANT:",
     "USER: <image>\n请根据我的指示,以及所给的图片,做出相应的回答。 ASSISTANT: 好的。 "
     "USER: What color is the shape? Options: red, blue ASSISTANT:"),
    # Neither: Ying's prompt, with the image token where the processor wants one.
    ("LlavaForConditionalGeneration", "ying", "<image>\n<human>:\nWhat color is the shape?\nOptions: red, blue\n<bot>:\n",
     None),
])
def test_each_model_gets_its_own_prompt_format(model_dirs, cls, fmt, english, chinese):
    p = HFVisionPredictor.from_pretrained(model_dirs[cls])
    assert p.prompt_format == fmt and describe_hf_model(model_dirs[cls])["prompt_format"] == fmt
    assert p.prompt(QUESTION) == english
    if chinese is not None:
        assert p.prompt(QUESTION, chinese_dialogue=True) == chinese
    assert len(p.generate([QUESTION], chinese_dialogue=True, max_new_tokens=2)) == 1


def test_weights_load_in_float32_on_cpu_and_answer_in_bfloat16_too(model_dirs):
    import torch

    path = model_dirs["LlavaForConditionalGeneration-chat"]
    assert HFVisionPredictor.from_pretrained(path).model.dtype == torch.float32  # the default off a GPU
    bf16 = HFVisionPredictor.from_pretrained(path, dtype="bfloat16")  # what cuda gets by default
    assert bf16.model.dtype == torch.bfloat16
    answers = bf16.generate(EXAMPLES, max_new_tokens=3)
    assert len(answers) == 2 and bf16.generate(EXAMPLES, max_new_tokens=3) == answers


def test_single_image_models_see_a_videos_middle_frame(model_dirs):
    p = HFVisionPredictor.from_pretrained(model_dirs["Blip2ForConditionalGeneration"])
    assert p.frame_mode == "middle_frame" and describe_hf_model(p.model.name_or_path)["frames"] == "middle_frame"
    frames = [_jpeg((30 * i, 0, 0)) for i in range(8)]
    video = {"images": frames, "instruction": "what color", "inputs": "", "video": True}
    middle = {"images": [frames[4]], "instruction": "what color", "inputs": ""}
    assert p.generate([video], max_new_tokens=3) == p.generate([middle], max_new_tokens=3)


def test_instructblip_video_sees_all_eight_frames():
    """InstructBLIP-video runs the Q-Former on every frame and concatenates the frames' query outputs;
    its processor writes placeholders for 4 frames. ``instructblip_video_inputs`` writes one set per
    frame, so 8 frames line up with 8 x num_query_tokens placeholders and every frame reaches the LLM.
    (The processor's video path needs torchvision, which this CPU setup lacks: the pixels here come
    from the image processor, frame by frame, with the same resize and normalisation.)"""
    import torch
    from transformers import InstructBlipVideoConfig, InstructBlipVideoForConditionalGeneration

    torch.manual_seed(0)
    tok, qtok = _tokenizer(), _tokenizer()
    tok.add_tokens(["<video>"], special_tokens=True)
    video_id = tok.convert_tokens_to_ids("<video>")
    # A wide initialisation, so that a random tiny model's answer depends visibly on its pixels.
    cfg = InstructBlipVideoConfig(vision_config=dict(VISION, initializer_range=1.0),
                                  qformer_config=dict(QFORMER, vocab_size=len(qtok), initializer_range=1.0),
                                  text_config=_opt(len(tok)), num_query_tokens=4, video_token_index=video_id,
                                  initializer_range=1.0)
    model = InstructBlipVideoForConditionalGeneration(cfg).eval()
    assert hf_frame_mode(None, model.config.model_type) == "instructblip_video"
    images = _blip_images()
    from PIL import Image

    def pixels(colors):
        frames = [Image.new("RGB", (40, 40), c) for c in colors]
        return images(images=frames, return_tensors="pt")["pixel_values"].unsqueeze(0)  # (1, T, C, H, W)

    colors = [(30 * i, 200 - 20 * i, 0) for i in range(8)]
    texts = ["what color is the shape", "describe"]
    batch = instructblip_video_inputs(tok, qtok, 4, video_id, torch.cat([pixels(colors)] * 2), texts)
    assert batch["pixel_values"].shape[:2] == (2, 8)
    assert (batch["input_ids"] == video_id).sum(dim=1).tolist() == [4 * 8, 4 * 8]
    assert batch["attention_mask"][1, 0] == 0 and batch["input_ids"][1, -1] != tok.pad_token_id  # left padded
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert out.shape[0] == 2
        changed = dict(batch, pixel_values=torch.cat([pixels([(0, 0, 255)] + colors[1:])] * 2))
        qformer = {k: batch[k] for k in ("qformer_input_ids", "qformer_attention_mask")}
        before = model.get_video_features(batch["pixel_values"], **qformer).pooler_output  # (B, 8 x 4, D)
        after = model.get_video_features(changed["pixel_values"], **qformer).pooler_output
        per_frame = (before - after).abs().reshape(2, 8, 4, -1).amax(dim=(0, 2, 3))
        assert per_frame[0] > 0 and per_frame[1:].eq(0).all()  # frame k fills placeholders k*4 .. k*4+3
        # Changing only the first frame changes the answer's logits: not only the middle frame counts.
        assert not torch.allclose(model(**changed).logits[:, -1], model(**batch).logits[:, -1])
