"""Any transformers VLM behind the eval model interface: tiny random BLIP-2, InstructBLIP and LLaVA
built from configs and saved to a temp dir (no downloads), answered directly and on Ray Data actors."""

import io

import pytest
from PIL import Image

from ying.eval.predictors import HFVisionPredictor, ModelSpec, cached_predictions, example_key, model_fingerprint

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


def build_llava():
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _tokenizer(image_token=True)
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION).to_dict(), text_config=text.to_dict(),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    return LlavaForConditionalGeneration(cfg), proc


BUILDERS = {"Blip2ForConditionalGeneration": build_blip2,
            "InstructBlipForConditionalGeneration": build_instructblip,
            "LlavaForConditionalGeneration": build_llava}


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
    assert type(p.model).__name__ == cls
    answers = p.generate(EXAMPLES, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # Only new tokens come back (the prompt is longer than 3 tokens), and greedy decoding repeats itself.
    tok = p.processor.tokenizer
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) <= 3 for a in answers)
    assert p.generate(EXAMPLES, max_new_tokens=3) == answers


def test_not_a_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a transformers vision-to-text model directory"):
        HFVisionPredictor.from_pretrained(str(tmp_path))


def test_ray_data_actors_and_prediction_cache(ray_cluster, model_dirs, tmp_path):
    spec = ModelSpec("tiny-blip2", "hf", model_dirs["Blip2ForConditionalGeneration"])
    examples = []
    for e in EXAMPLES:
        e = dict(e, chinese_dialogue=False, max_new_tokens=3)
        examples.append(dict(e, key=example_key(e)))
    suites = {"kvqa": examples, "video": examples[1:]}  # the same question in two suites
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
