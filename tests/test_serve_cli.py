"""`ying serve --run-dir` as a user runs it: a subprocess on the session cluster that serves until
SIGTERM, answers the openai client, sheds load with 503 + Retry-After, and on exit deletes its own
app only (another app on the cluster keeps running)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from serve_support import data_url, make_run_dir, png, serve_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "cli-token-51d0e2"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "YING_SERVE_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def test_an_open_host_without_a_token_refuses_to_start(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ying.cli", "serve", "--run-dir", str(tmp_path), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 2, out.stderr
    assert "not a loopback address, without a bearer token" in out.stderr and "YING_SERVE_TOKEN" in out.stderr


@pytest.fixture(scope="module")
def bystander(ray_cluster):
    """Another app on the same cluster, which `ying serve` must leave alone."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Bystander:
        async def __call__(self, request) -> str:
            return "still here"

    port = serve_port()
    serve.run(Bystander.bind(), name="bystander", route_prefix="/bystander")
    yield port
    serve.delete("bystander")


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(line)


def test_ying_serve_answers_sheds_load_and_deletes_only_its_app_on_sigterm(ray_cluster, bystander, tmp_path):
    from ray import serve

    port = bystander
    run = make_run_dir(str(tmp_path / "run"))
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "ying.cli", "serve", "--run-dir", run["run_dir"], "--port", str(port),
         "--address", address, "--set", "serve.app_name=cli-app", "--set", "serve.max_batch_size=1",
         "--set", "serve.max_queued_requests=1", "--set", "serve.retry_after_s=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(YING_SERVE_TOKEN=TOKEN))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
    seen = []
    try:
        deadline = time.time() + 600  # a guard against hanging, not a speed check
        while not any("serving on" in line for line in seen):
            assert proc.poll() is None, "".join(seen)[-3000:]
            assert time.time() < deadline, "".join(seen)[-3000:]
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        url = f"http://127.0.0.1:{port}"
        oa = OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
        assert [m.id for m in oa.models.list()] == ["stage1", "stage2"]
        messages = [{"role": "user", "content": [{"type": "text", "text": "What color is it?"},
                                                  {"type": "image_url", "image_url": {"url": data_url(png())}}]}]
        r = oa.chat.completions.create(model="stage2", messages=messages, max_tokens=4)
        assert r.choices[0].message.content == oa.chat.completions.create(
            messages=messages, model="stage2", max_tokens=4).choices[0].message.content  # greedy: repeatable

        # One request generating, one waiting, one queued: a burst beyond that is shed, never failed.
        def one(_):
            return httpx.post(f"{url}/v1/chat/completions", timeout=300, headers={"Authorization": f"Bearer {TOKEN}"},
                              json={"model": "stage2", "messages": messages, "max_tokens": 64})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(one, range(16)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
        shed = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "2" and r.json()["error"]["type"] == "server_overloaded" for r in shed)
    finally:
        proc.terminate()  # SIGTERM
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    tail = "".join(seen) + "".join(lines.get() for _ in range(lines.qsize()))
    assert proc.returncode == 0, tail[-3000:]
    assert "deleting Serve app 'cli-app'" in tail
    apps = serve.status().applications
    assert "cli-app" not in apps and "bystander" in apps
    assert httpx.get(f"http://127.0.0.1:{port}/bystander", timeout=60).text == "still here"
    assert TOKEN not in tail  # never logged


def test_deploy_refuses_a_port_other_than_the_running_serves(ray_cluster):
    from ying.serve.runner import deploy

    port = serve_port()
    with pytest.raises(RuntimeError, match=f"Serve already listens on 127.0.0.1:{port}"):
        deploy(object(), host="127.0.0.1", port=port + 1, app_name="never", has_token=False)


def test_the_dag_serve_stage_checks_with_the_token_and_deletes_its_app(ray_cluster, tmp_path, monkeypatch):
    from ray import serve

    from ying.config import load_config
    from ying.serve.check import serve_and_check

    run = make_run_dir(str(tmp_path / "run"))
    cfg = load_config("tiny", overrides=[f"run.run_dir={run['run_dir']}", f"serve.port={serve_port()}",
                                         "serve.app_name=dag-check", "eval.max_new_tokens=4"])
    monkeypatch.setenv("YING_SERVE_TOKEN", TOKEN)  # the stage's worker reads it, and must send it
    out = serve_and_check(cfg, run["stage2"], run["data_dir"])
    assert out["health"]["status"] == "ok" and out["models"] == ["stage1", "stage2"]
    assert isinstance(out["check"]["output"], str) and out["check"]["id"] == "okvqa-validation-0"
    assert "dag-check" not in serve.status().applications and not out["kept_running"]
