"""The Serve app over real HTTP on loopback, around a small deterministic predictor.

One deployment for the whole module (Serve takes ~15 s to come up here). Bearer auth is on for it,
so the open /healthz and the 401 path are covered by the same deployment.
"""

from __future__ import annotations

import base64
import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ying.serve import TOKEN_ENV, build_app, deploy, shutdown

MODEL_NAME = "reverse-test"
MAX_BODY_BYTES = 64 * 1024
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class ReversePredictor:
    """Depends on every part of the example: instruction reversed, image count, first image's size."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str) -> "ReversePredictor":
        return cls(Path(checkpoint_dir, "prefix.txt").read_text().strip())

    def generate(self, examples: list[dict]) -> list[str]:
        outputs = []
        for ex in examples:
            with Image.open(io.BytesIO(ex["images"][0])) as img:
                width, height = img.size
            outputs.append(
                f"{self.prefix}:{ex['instruction'][::-1]}|n={len(ex['images'])}|first={width}x{height}|inputs={ex['inputs']}"
            )
        return outputs


def png(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(ray_cluster, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    (ckpt / "prefix.txt").write_text("ckpt-v1\n")
    factory = f"{ReversePredictor.__module__}:ReversePredictor.from_checkpoint"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)  # build_app forwards it to the replica
        app = build_app(
            str(ckpt),
            MODEL_NAME,
            MAX_BODY_BYTES,
            predictor_factory=factory,
            num_cpus=0.5,
            # The replica imports the factory's module: put this test folder on its path.
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
        )
    url = deploy(app, host="127.0.0.1", port=free_port())
    yield url
    shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def test_healthz_is_open(client):
    r = client.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "model": MODEL_NAME}


def test_generate_returns_what_the_predictor_computes(client):
    images = [png(7, 5), png(3, 3, (0, 0, 255))]
    body = {"images": [b64(i) for i in images], "instruction": "Describe the image.", "inputs": "Q: color?"}
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    expected = ReversePredictor("ckpt-v1").generate(
        [{"images": images, "instruction": "Describe the image.", "inputs": "Q: color?"}]
    )[0]
    assert expected == "ckpt-v1:.egami eht ebircseD|n=2|first=7x5|inputs=Q: color?"
    assert r.json() == {"output": expected, "model": MODEL_NAME}


def test_inputs_default_to_empty_and_data_urls_are_accepted(client):
    body = {"images": ["data:image/png;base64," + b64(png(4, 9))], "instruction": "abc"}
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "ckpt-v1:cba|n=1|first=4x9|inputs="


def test_concurrent_requests_are_batched_without_mixing_answers(client):
    def one(i: int) -> tuple[int, str]:
        body = {"images": [b64(png(i + 1, 2))], "instruction": f"task {i}", "inputs": str(i)}
        r = client.post("/v1/generate", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return i, r.json()["output"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, output in results:
        assert output == f"ckpt-v1:{f'task {i}'[::-1]}|n=1|first={i + 1}x2|inputs={i}"


def test_missing_token_or_wrong_token_is_401(client):
    body = {"images": [b64(png(2, 2))], "instruction": "x"}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 401
    assert "bearer token" in r.json()["detail"]
    r = client.post("/v1/generate", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_bad_base64_is_400_with_the_index(client):
    body = {"images": [b64(png(2, 2)), "not base64!!"], "instruction": "x"}
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "images[1] is not valid base64" in r.json()["detail"]


def test_bytes_that_are_not_an_image_are_400(client):
    body = {"images": [b64(b"definitely not a png")], "instruction": "x"}
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "images[0] is not a decodable image" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, missing",
    [
        ({"images": ["aGk="]}, "instruction"),
        ({"instruction": "x"}, "images"),
        ({"images": [], "instruction": "x"}, "images"),
    ],
)
def test_missing_fields_are_422_naming_the_field(client, body, missing):
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert any(missing in err["loc"] for err in r.json()["detail"]), r.text


def test_oversize_body_is_413(client):
    body = {"images": [b64(b"\0" * MAX_BODY_BYTES)], "instruction": "x"}
    r = client.post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == 413, r.text
    assert "max_body_bytes" in r.json()["detail"]


def test_oversize_chunked_body_without_content_length_is_413(client):
    payload = b'{"images": ["' + b"A" * (2 * MAX_BODY_BYTES) + b'"], "instruction": "x"}'

    def chunks():
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    r = client.post("/v1/generate", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413, r.text
