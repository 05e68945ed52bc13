"""Request validation and auth helpers, without Ray: every bad input is a RequestError naming its field."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from serve_support import data_url, png
from ying.config import ConfigError, load_config
from ying.serve.auth import TOKEN_ENV, is_loopback, read_token, require_token_off_loopback, token_digest
from ying.serve.engine import ModelLimits
from ying.serve.evaluations import paper_suite_names, resolve_suite
from ying.serve.protocol import (
    ChatCompletionRequest,
    RequestError,
    RequestLimits,
    decode_image,
    parse_chat,
    url_allowed,
)

LIMITS = RequestLimits(max_images=3, max_image_pixels=10_000, max_tokens=64, default_max_tokens=16,
                       image_url_allowlist=["https://img.example.com/ok/"])
MODEL = ModelLimits(num_query_tokens=8, max_text_tokens=96, max_positions=512)


def chat(*content, **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": list(content)}], **kw})


def text(t):
    return {"type": "text", "text": t}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def refused(request: ChatCompletionRequest) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_chat(request, LIMITS, MODEL)
    return e.value


def test_parts_become_instruction_inputs_and_images():
    raw = png(4, 4)
    gen, refs = parse_chat(chat(text(" Answer. "), image(data_url(raw)), text("What color?"), text("Be brief."),
                                max_tokens=8, temperature=0.7, top_p=0.5, stop="\n", chinese_dialogue=True),
                           LIMITS, MODEL)
    assert (gen.instruction, gen.inputs) == ("Answer.", "What color?\nBe brief.")
    assert [r.data for r in refs] == [raw] and refs[0].param == "messages.0.content.1.image_url.url"
    assert (gen.max_new_tokens, gen.temperature, gen.top_p, gen.stop, gen.chinese_dialogue) == (8, 0.7, 0.5, ("\n",), True)
    default, _ = parse_chat(chat(text("x"), image(data_url(raw))), LIMITS, MODEL)
    assert (default.max_new_tokens, default.temperature, default.top_p) == (16, 0.0, 1.0)  # greedy by default


@pytest.mark.parametrize("request_body, param, words", [
    ({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "x"}]}, "messages.0.role",
     "not supported"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages", "single-turn"),
    ({"messages": [{"role": "user", "content": "just text"}]}, "messages.0.content", "image_url"),
    ({"messages": [{"role": "user", "content": [image("data:image/png;base64,AAAA")]}]}, "messages.0.content",
     "instruction"),
])
def test_conversations_the_prompt_cannot_express_are_refused(request_body, param, words):
    e = refused(ChatCompletionRequest.model_validate(request_body))
    assert e.param == param and words in e.message and e.status == 400


def test_image_urls_are_checked_before_decoding():
    e = refused(chat(text("x"), image("data:image/png,rawbytes")))
    assert e.param == "messages.0.content.1.image_url.url" and "base64" in e.message
    e = refused(chat(text("x"), image("data:image/png;base64,@@@")))
    assert "not valid base64" in e.message
    e = refused(chat(text("x"), image("https://elsewhere.example.com/a.png")))
    assert "image_url_allowlist" in e.message and e.param.endswith("image_url.url")
    e = refused(chat(text("x"), image("file:///etc/passwd")))
    assert "unsupported URL scheme" in e.message
    _, refs = parse_chat(chat(text("x"), image("https://img.example.com/ok/cat.png")), LIMITS, MODEL)
    assert refs[0].url == "https://img.example.com/ok/cat.png" and refs[0].data is None
    e = refused(chat(text("x"), *[image(data_url(png(2, 2)))] * 4))
    assert e.param == "messages.0.content" and "serve.max_images" in e.message


def test_allowlist_matches_scheme_host_port_and_path_prefix_only():
    allow = ["https://img.example.com/ok/"]
    assert url_allowed("https://img.example.com/ok/a/b.png", allow)
    for url in ["http://img.example.com/ok/a.png", "https://img.example.com.evil.net/ok/a.png",
                "https://img.example.com:8443/ok/a.png", "https://img.example.com/other/a.png",
                "https://user:pw@img.example.com/ok/a.png", "https://img.example.com:bad/ok/"]:
        assert not url_allowed(url, allow), url


def test_token_limits_and_stops_name_their_field():
    img = image(data_url(png(2, 2)))
    assert refused(chat(text("x"), img, max_tokens=65)).param == "max_tokens"
    assert refused(chat(text("x"), img, max_completion_tokens=65)).param == "max_completion_tokens"
    assert refused(chat(text("x"), img, max_tokens=3, max_completion_tokens=4)).param == "max_completion_tokens"
    tight = ModelLimits(num_query_tokens=8, max_text_tokens=96, max_positions=120)  # 120 - 8 - 1 - 96 = 15 left
    with pytest.raises(RequestError, match="do not fit the model's context") as e:
        parse_chat(chat(text("x"), img, max_tokens=16), LIMITS, tight)
    assert e.value.param == "max_tokens"
    assert refused(chat(text("x"), img, stop=["a", "b", "c", "d", "e"])).param == "stop"
    assert refused(chat(text("x"), img, stop=[""])).param == "stop"


def _jpeg(size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 100, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def test_images_are_fully_decoded_under_the_pixel_limit():
    assert decode_image(_jpeg(), "p", 10_000) == (40, 40)
    with pytest.raises(RequestError, match="does not decode") as e:  # the header is fine, the pixels are cut
        decode_image(_jpeg()[:300], "messages.0.content.1.image_url.url", 10_000)
    assert e.value.param == "messages.0.content.1.image_url.url"
    with pytest.raises(RequestError, match="over the limit of 10000"):
        decode_image(png(200, 100), "p", 10_000)
    with pytest.raises(RequestError, match="accepted format"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "p", 10_000)  # EPS: never opened
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")
    with pytest.raises(RequestError, match="accepted format"):
        decode_image(tiff.getvalue(), "p", 10_000)


def test_token_from_env_or_file_and_compared_by_digest(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(None) is None
    f = tmp_path / "token"
    f.write_text("s3cret-file\n")
    assert read_token(str(f)) == "s3cret-file"
    monkeypatch.setenv(TOKEN_ENV, "s3cret-env")
    assert read_token(str(f)) == "s3cret-env"  # the environment wins
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ValueError, match="cannot read the token"):
        read_token(str(tmp_path / "missing"))
    digest = token_digest("s3cret-env")
    assert digest.matches("s3cret-env") and not digest.matches("s3cret-en") and not digest.matches("")
    assert b"s3cret-env" not in digest.salt + digest.digest
    assert token_digest("same").digest != token_digest("same").digest  # salted


def test_a_host_off_loopback_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    require_token_off_loopback("127.0.0.1", has_token=False)
    require_token_off_loopback("0.0.0.0", has_token=True)
    with pytest.raises(ValueError, match="without a bearer token"):
        require_token_off_loopback("0.0.0.0", has_token=False)


def test_suites_by_paper_table_or_task_list_and_errors_name_the_valid_ones():
    assert paper_suite_names()["table4"] == "kvqa" and paper_suite_names()["figure5"] == "unseen_instructions"
    assert resolve_suite("Table 5", ["coco"]) == ("hallucination", ["coco"])
    assert resolve_suite("kvqa", [])[0] == "kvqa"
    assert resolve_suite(["vqa-v2", "coco", "vqa-v2"], ["coco", "vqa-v2"]) == ("tasks", ["coco", "vqa-v2"])
    with pytest.raises(ValueError, match="table4 \\(kvqa\\)"):
        resolve_suite("table99", ["coco"])
    with pytest.raises(ValueError, match="tasks with data here: \\['coco'\\]"):
        resolve_suite(["nope"], ["coco"])


def test_serve_config_rejects_a_queue_that_cannot_hold_two_batches():
    cfg = load_config("tiny")
    assert cfg.serve.ongoing_requests >= 2 * cfg.serve.max_batch_size
    with pytest.raises(ConfigError, match="at least 2 x serve.max_batch_size"):
        load_config("tiny", overrides=["serve.max_batch_size=8", "serve.max_ongoing_requests=10"])
    with pytest.raises(ConfigError, match="image_url_allowlist"):
        load_config("tiny", overrides=["serve.image_url_allowlist=[ftp://x/]"])
    assert load_config("paper").serve.num_gpus_per_replica == 1 and load_config("paper").serve.host == "127.0.0.1"


def test_base64_images_round_trip_through_data_urls():
    raw = png(3, 5)
    gen, refs = parse_chat(chat(text("x"), image("data:image/png;base64," + base64.b64encode(raw).decode())),
                           LIMITS, MODEL)
    assert refs[0].data == raw and decode_image(refs[0].data, refs[0].param, 10_000) == (3, 5)


def _fake_checkpoint(path) -> str:
    path.mkdir(parents=True)
    (path / "ying_model.json").write_text("{}")
    return str(path)


def test_served_models_come_from_the_run_checkpoints_and_config(tmp_path):
    from ying import storage
    from ying.serve.models import resolve_models

    run = tmp_path / "run"
    for stage in ("stage1", "stage2"):
        storage.write_manifest(str(run / stage), {"outputs": {"checkpoint": _fake_checkpoint(run / stage / "hf")}})
    storage.write_manifest(str(run / "qc"), {"fingerprint": "qc-fp", "outputs": {"data_dir": str(run / "qc")}})
    extra = _fake_checkpoint(tmp_path / "extra")
    cfg = load_config("tiny", overrides=[f"serve.models={{ablation: {extra}}}"])
    served = resolve_models(cfg, run_dir=str(run))
    assert list(served.checkpoints) == ["stage1", "stage2", "ablation"] and served.default == "stage2"
    assert (served.data_dir, served.data_fingerprint) == (str(run / "qc"), "qc-fp")
    only = resolve_models(load_config("tiny"), checkpoint=extra, model_name="mine")
    assert only.checkpoints == {"mine": extra} and only.default == "mine" and only.data_dir is None
    with pytest.raises(ValueError, match="serve.default_model='nope' is not served"):
        resolve_models(load_config("tiny", overrides=["serve.default_model=nope"]), run_dir=str(run))
    with pytest.raises(ValueError, match="no finished stage1 or stage2"):
        resolve_models(cfg, run_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not Ying checkpoints"):
        resolve_models(load_config("tiny"), checkpoint=str(tmp_path))


def test_a_replica_refuses_an_open_proxy_without_a_token(monkeypatch):
    from types import SimpleNamespace

    import ray.serve.context

    from ying.serve.app import _refuse_open_host_without_token

    for host, refuses in (("0.0.0.0", True), ("127.0.0.1", False)):
        client = SimpleNamespace(http_config=SimpleNamespace(host=host))
        monkeypatch.setattr(ray.serve.context, "_get_global_client", lambda *a, **k: client)
        if refuses:
            with pytest.raises(RuntimeError, match="not loopback, and no bearer token"):
                _refuse_open_host_without_token(None)
        else:
            _refuse_open_host_without_token(None)
        _refuse_open_host_without_token(token_digest("t"))  # with a token: any host
