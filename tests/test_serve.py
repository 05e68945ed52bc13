"""The Serve app over real HTTP on loopback: the openai client, curl, auth, bad input, batching
isolation, evaluations and a schemathesis fuzz of every endpoint.

One app for the whole module (Serve takes a while to come up here), built by the one-argument
builder from a finished-looking run directory (random-init Stage I/II checkpoints, a few records),
with a bearer token and a route prefix. Expected answers come from loading the same checkpoints in
this process: greedy decoding makes them exact.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from serve_support import data_url, make_run_dir, png, serve_port
from ying.serve.engine import GenerationRequest, load_engine

TOKEN = "test-token-7f3a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "test-serve"
PREFIX = "/ying"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run_dir(str(tmp_path_factory.mktemp("serve-run")))


@pytest.fixture(scope="module")
def url(ray_cluster, run):
    from ying.serve.app import AppArgs, build
    from ying.serve.runner import delete_app, deploy

    args = AppArgs(run_dir=run["run_dir"], overrides=[
        f"serve.app_name={APP}", f"serve.route_prefix={PREFIX}", "serve.max_batch_size=4", "serve.max_tokens=64",
        "serve.max_images=4", "serve.max_body_bytes=300000", "eval.max_new_tokens=4", "eval.batch_size=4"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YING_SERVE_TOKEN", TOKEN)  # read by the builder, here; replicas get a salted digest
        app = build(args)
    base = deploy(app, host="127.0.0.1", port=serve_port(), app_name=APP, route_prefix=PREFIX, has_token=True)
    yield base
    delete_app(APP)


@pytest.fixture(scope="module")
def engines(run):
    return {stage: load_engine(run[stage], stage, device="cpu") for stage in ("stage1", "stage2")}


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def user(*content):
    return [{"role": "user", "content": list(content)}]


def text(t):
    return {"type": "text", "text": t}


def image(raw: bytes, mime="image/png"):
    return {"type": "image_url", "image_url": {"url": data_url(raw, mime)}}


def expected(engine, raw: bytes, instruction="Answer the question.", inputs="What color is it?", **kw) -> str:
    return engine.generate([GenerationRequest(images=[raw], instruction=instruction, inputs=inputs, **kw)])[0].text


def test_the_openai_client_lists_models_chats_streams_and_picks_checkpoints(url, engines):
    oa = OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
    assert [m.id for m in oa.models.list()] == ["stage1", "stage2"]
    assert oa.models.retrieve("stage1").id == "stage1"
    raw = png(24, 24, (20, 160, 60))
    messages = user(text("Answer the question."), text("What color is it?"), image(raw))
    answers, usage = {}, {}
    for model in ("stage2", "stage1"):
        r = oa.chat.completions.create(model=model, messages=messages, max_tokens=6)
        answers[model], usage[model] = r.choices[0].message.content, r.usage
        assert answers[model] == expected(engines[model], raw, max_new_tokens=6), model
        assert r.model == model and r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 8
    assert answers["stage1"] != answers["stage2"]  # two checkpoints, multiplexed by the request's model

    chunks = list(oa.chat.completions.create(model="stage2", messages=messages, max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answers["stage2"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens == usage["stage2"].completion_tokens >= 1

    zh = oa.chat.completions.create(model="stage2", messages=messages, max_tokens=5,
                                    extra_body={"chinese_dialogue": True})
    assert zh.choices[0].message.content == expected(engines["stage2"], raw, max_new_tokens=5, chinese_dialogue=True)
    assert zh.usage.prompt_tokens > oa.chat.completions.create(model="stage2", messages=messages,
                                                                max_tokens=5).usage.prompt_tokens


def test_the_readme_curl_command_works(url, engines, tmp_path):
    raw = png(16, 16, (200, 200, 30))
    (tmp_path / "cat.png").write_bytes(raw)
    # The README's command, with its host and the file swapped for this test's.
    command = (
        f"curl -s {url}/v1/chat/completions -H \"Authorization: Bearer $YING_SERVE_TOKEN\" "
        "-H 'content-type: application/json' -d '{\"model\": \"stage2\", \"max_tokens\": 8, \"messages\": "
        "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"What is in the image?\"}, "
        "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,'\"$(base64 -w0 cat.png)\"'\"}}]}]}'"
    )
    out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "YING_SERVE_TOKEN": TOKEN})
    body = json.loads(out.stdout)
    assert body["choices"][0]["message"]["content"] == expected(engines["stage2"], raw, "What is in the image?", "",
                                                                max_new_tokens=8)


def test_the_token_is_required_and_never_shown_by_serve(url, client, ray_cluster):
    body = {"model": "stage2", "messages": user(text("x"), image(png()))}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]["message"]
    assert client.get("/v1/models").status_code == 401
    health = client.get("/healthz")  # open for load balancers
    assert health.status_code == 200 and health.json()["default_model"] == "stage2"
    from ray import serve

    apps = httpx.get(f"{ray_cluster.dashboard_url}/api/serve/applications/", timeout=60).text
    assert APP in apps and TOKEN not in apps  # not in the dashboard's view of the app (config, runtime_env)
    assert TOKEN not in repr(serve.status())


def _post(client, body, **kw):
    return client.post("/v1/chat/completions", json=body, headers=AUTH, **kw)


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # the header is intact, the pixels are cut


def test_every_bad_input_is_a_4xx_naming_the_field(client):
    jpeg = png(30, 30)
    truncated = _truncated_jpeg()
    good = user(text("x"), image(jpeg))
    cases = [
        ({"model": "stage2", "messages": good, "temperature": 9}, 400, "temperature"),
        ({"model": "stage2", "messages": good, "frobnicate": 1}, 400, "frobnicate"),
        ({"model": "stage2", "messages": []}, 400, "messages"),
        ({"model": "stage2", "messages": good, "n": 2}, 400, "n"),
        ({"model": "stage2", "messages": good, "max_tokens": 65}, 400, "max_tokens"),
        ({"model": "nope", "messages": good}, 404, "model"),
        ({"model": "stage2", "messages": user(text("x"), image(truncated, "image/jpeg"))}, 400,
         "messages.0.content.1.image_url.url"),
        ({"model": "stage2", "messages": user(text("x"), *[image(jpeg)] * 5)}, 400, "messages.0.content"),
        ({"model": "stage2", "messages": user(text("x"), {"type": "image_url", "image_url": {"url": "http://x/a.png"}})},
         400, "messages.0.content.1.image_url.url"),
        ({"model": "stage2", "messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, 400,
         "messages.0.content"),
    ]
    for body, status, param in cases:
        r = _post(client, body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param or r.json()["error"]["param"].startswith(param), (param, r.text)
    r = client.post("/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = _post(client, {"model": "stage2", "messages": user(text("x"), image(b"\0" * 300_000))})
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]["message"]


def test_bad_requests_in_a_busy_batch_fail_alone(client, engines):
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    good = {i: png(20, 20, c) for i, c in enumerate(colors)}
    truncated = _truncated_jpeg()
    jobs = [("good", i, user(text("Answer the question."), text("What color is it?"), image(raw)))
            for i, raw in good.items()]
    jobs += [("bad", i, user(text("Answer the question."), image(truncated, "image/jpeg"))) for i in range(4)]

    def send(job):
        kind, i, messages = job
        return kind, i, _post(client, {"model": "stage2", "messages": messages, "max_tokens": 6})

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for kind, i, r in results:
        if kind == "good":
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == expected(engines["stage2"], good[i], max_new_tokens=6)
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content.1.image_url.url"


def test_concurrent_chats_share_decoding_steps_and_answer_as_alone(url, client, engines):
    from ray import serve

    # Plain and streamed chats with their own limits, sent together: they are decoded in shared
    # steps (continuous batching, serve.max_batch_size=4 here), and each answer is the one the
    # model gives that request alone, with its own length.
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    jobs = [(i, png(20, 20, c), 3 + 4 * (i % 3), i % 2 == 1) for i, c in enumerate(colors)]
    handle = serve.get_deployment_handle("YingModel", app_name=APP)
    before = handle.batch_stats.remote().result()

    def send(job):
        i, raw, max_tokens, stream = job
        body = {"model": "stage2", "messages": user(text("Answer the question."), text("What color is it?"), image(raw)),
                "max_tokens": max_tokens, "stream": stream}
        if not stream:
            r = _post(client, body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"], r.json()["usage"]["completion_tokens"]
        with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body,
                                                                     headers=AUTH) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        return "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks if ch.get("choices")), None

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    for (i, raw, max_tokens, stream), (answer, used) in zip(jobs, answers):
        alone = engines["stage2"].generate([GenerationRequest(images=[raw], instruction="Answer the question.",
                                                              inputs="What color is it?", max_new_tokens=max_tokens)])[0]
        assert answer == alone.text, i
        if used is not None:
            assert used == alone.completion_tokens <= max_tokens
    after = handle.batch_stats.remote().result()
    assert after["requests"] - before["requests"] >= len(jobs)
    shared = {k: v - before["rows_per_step"].get(k, 0) for k, v in after["rows_per_step"].items() if k > 1}
    assert any(v > 0 for v in shared.values()), after  # some steps decoded several chats at once
    assert max(after["rows_per_step"]) <= 4  # never more rows than serve.max_batch_size


def _wait(client, eval_id: str, limit_s: float = 900) -> dict:
    # A guard against hanging, not a speed check: evaluations start Ray Data actors on a loaded machine.
    deadline = time.time() + limit_s
    while True:
        state = client.get(f"/v1/evaluations/{eval_id}", headers=AUTH).json()
        assert state["state"] in ("queued", "running", "done"), state
        if state["state"] == "done" or time.time() > deadline:
            return state
        time.sleep(2)


def test_evaluations_run_on_the_cluster_and_are_cached(client, run):
    r = client.post("/v1/evaluations", json={"model": "stage2", "suite": "table4", "limit": 2}, headers=AUTH)
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running"), r.text
    kvqa = r.json()["id"]
    r = client.post("/v1/evaluations", json={"model": "stage1", "suite": ["vqa-v2"], "limit": 3}, headers=AUTH)
    tasks_id = r.json()["id"]
    done = _wait(client, kvqa)
    assert done["state"] == "done" and done["suite"] == "kvqa" and done["paper"] == "Table 4"
    assert done["metrics"]["n"] == {"okvqa": 2} and 0 <= done["metrics"]["scores"]["okvqa"] <= 1
    assert done["not_run"] == {"a-okvqa": "no a-okvqa data", "viquae": "no viquae data"}
    assert done["report"].startswith("### Table 4") and "| stage2 |" in done["report"]
    done = _wait(client, tasks_id)
    assert done["state"] == "done" and set(done["metrics"]) == {"vqa-v2"} and done["metrics"]["vqa-v2"]["n"] == 3
    assert "Exact match" in done["report"]

    again = client.post("/v1/evaluations", json={"model": "stage2", "suite": "Table 4", "limit": 2}, headers=AUTH)
    assert again.json()["id"] == kvqa and again.json()["state"] == "done"  # same model, suite and data
    other = client.post("/v1/evaluations", json={"model": "stage2", "suite": "table4", "limit": 1}, headers=AUTH)
    assert other.json()["id"] != kvqa

    # The stored result outlives the app: a fresh registry answers from it.
    from ying.config import load_config
    from ying.serve.evaluations import EvaluationRegistry

    cfg = load_config("tiny", overrides=[f"run.run_dir={run['run_dir']}", "eval.max_new_tokens=4"])
    stored = asyncio.run(EvaluationRegistry(cfg, run["data_dir"], "fp-qc", {}).get(kvqa))
    assert stored["state"] == "done" and stored["cached"] and stored["metrics"]["n"] == {"okvqa": 2}


def test_evaluation_requests_name_what_is_valid(client):
    r = client.post("/v1/evaluations", json={"suite": "table99"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "suite"
    assert "table4 (kvqa)" in r.json()["error"]["message"]
    r = client.post("/v1/evaluations", json={"suite": ["vqa-v2", "nope"]}, headers=AUTH)
    assert r.status_code == 400 and "tasks with data here" in r.json()["error"]["message"]
    r = client.post("/v1/evaluations", json={"model": "gpt-4", "suite": "table4"}, headers=AUTH)
    assert r.status_code == 404 and "['stage1', 'stage2']" in r.json()["error"]["message"]
    r = client.post("/v1/evaluations", json={"suite": "table4", "limit": 0}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = client.get("/v1/evaluations/eval-0000000000000000", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "eval_id"


def test_fuzzing_every_endpoint_finds_no_5xx(url):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model_id}", "POST /v1/evaluations",
            "GET /v1/evaluations/{eval_id}", "GET /healthz"} <= paths
    failures = []
    for op in operations:
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(base_url=url, headers=AUTH, timeout=120)
            if response.status_code >= 500:
                failures.append((op.path, case.body, response.status_code, response.text[:300]))

        check()
    assert not failures, failures[:3]
