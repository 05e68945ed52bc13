"""The HTTP protocol: OpenAI-compatible chat requests with images, turned into validated model input.

What a chat request means to Ying-VLM (paper Figure 3's prompt ``<human>:\\n{instruction}\\n{input}\\n<bot>:\\n``):

- one ``user`` message (the prompt is single-turn; ``system``/``assistant`` turns are refused with a
  400 rather than silently dropped);
- its first text part is the instruction, any further text parts (joined by newlines) the input;
  a plain-string ``content`` is the instruction alone;
- its ``image_url`` parts, in order, are the images (a video is its frames): ``data:`` URLs with
  base64 payloads; ``http(s)`` URLs only under a prefix listed in ``serve.image_url_allowlist``;
- ``chinese_dialogue: true`` (an extra body field; ``extra_body=`` in the openai client) selects the
  zero-shot Chinese dialogue prompt of the paper's Table 12;
- ``temperature`` defaults to 0 (greedy, as the paper evaluates), ``max_tokens`` (or
  ``max_completion_tokens``) to ``serve.default_max_tokens``.

Every image is decoded completely here, before the request joins a batch, so a truncated JPEG or
a decompression bomb is this request's 400 and never a batch's failure. Every rejection is a
``RequestError`` naming the offending field (``param``, as OpenAI's errors do).
"""

# No `from __future__ import annotations`: FastAPI resolves these models' annotations at runtime.

import base64
import binascii
import io
import re
import time
import uuid
from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ying.serve.engine import GenerationRequest, GenerationResult, ModelLimits

__all__ = [
    "RequestError",
    "ChatCompletionRequest",
    "EvaluationRequest",
    "RequestLimits",
    "ImageRef",
    "parse_chat",
    "decode_image",
    "url_allowed",
    "chat_completion",
    "chat_chunk",
    "error_body",
    "IMAGE_FORMATS",
]

# Formats a client may send. Pillow opens many more (some through external programs); these cover
# photos, screenshots and frames.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class RequestError(Exception):
    """A request we refuse: HTTP ``status``, a message for people, and the field at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error shape, which its clients parse."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(description="a data: URL (data:image/png;base64,...) or an allow-listed http(s) URL")
    detail: Optional[Literal["auto", "low", "high"]] = None  # accepted; the model sees every image at its own size


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: Optional[str] = Field(None, description="a name from GET /v1/models; default: the server's default model")
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(None, ge=1, le=1, description="only 1")
    user: Optional[str] = None
    chinese_dialogue: bool = Field(False, description="Ying: use the paper's Chinese dialogue prompt (Table 12)")


class EvaluationRequest(_Strict):
    model: Optional[str] = Field(None, description="a name from GET /v1/models; default: the server's default model")
    suite: Union[str, list[str]] = Field(
        description='a paper table ("table4", "table5", "table6", "table7", "table11", "figure5"), a suite name '
        '("kvqa", ...) or a list of task names')
    limit: Optional[int] = Field(None, ge=1, le=100_000, description="examples per task (default: eval.max_per_task)")


class RequestLimits(BaseModel):
    """The serve.* limits a request is checked against (a plain copy, picklable into replicas)."""

    max_images: int
    max_image_pixels: int
    max_tokens: int
    default_max_tokens: int
    image_url_allowlist: list[str] = []


class ImageRef(BaseModel):
    """Where one image of the request comes from, before decoding."""

    param: str  # the field, e.g. messages.0.content.1.image_url.url
    data: Optional[bytes] = None  # decoded from a data: URL
    url: Optional[str] = None  # an allow-listed http(s) URL, fetched by the server


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def url_allowed(url: str, allowlist: list[str]) -> bool:
    """True when ``url`` is under one of the allowed prefixes (scheme, host and port exact, path prefix)."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return False
    for prefix in allowlist:
        p = urlsplit(prefix)
        if (p.scheme, p.hostname, p.port) == (u.scheme, u.hostname, port) and u.path.startswith(p.path or "/"):
            return True
    return False


def _data_url_bytes(url: str, param: str) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise RequestError(f"{param}: not a data: URL (expected data:image/<type>;base64,<payload>)", param)
    if not m.group("b64"):
        raise RequestError(f"{param}: only base64 data: URLs are accepted (add ';base64')", param)
    payload = url[m.end():]
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{param}: the data: URL's payload is not valid base64 ({e})", param) from None
    if not raw:
        raise RequestError(f"{param}: the image is empty", param)
    return raw


def decode_image(raw: bytes, param: str, max_image_pixels: int) -> tuple[int, int]:
    """Decode ``raw`` completely (a truncated file fails here); its (width, height). Raises ``RequestError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
            width, height = img.size  # from the header: checked before any pixel is decoded
            if width * height > max_image_pixels:
                raise RequestError(
                    f"{param}: the image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_image_pixels} (serve.max_image_pixels)", param)
            img.load()
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(f"{param}: not an image in an accepted format ({', '.join(IMAGE_FORMATS)})", param) from None
    except Exception as e:  # truncated data, bad chunks, decompression bombs: Pillow raises many types
        raise RequestError(f"{param}: the image does not decode: {type(e).__name__}: {e}", param) from None
    if width < 1 or height < 1:
        raise RequestError(f"{param}: the image has no pixels", param)
    return width, height


def parse_chat(req: ChatCompletionRequest, limits: RequestLimits, model_limits: ModelLimits
               ) -> tuple[GenerationRequest, list[ImageRef]]:
    """Check everything but the images' pixels; the images come back as references to decode.

    The returned request has ``images=[]``; the caller fills them in after decoding the refs.
    """
    if req.n not in (None, 1):
        raise RequestError("n: only one choice per request is supported", "n")
    user_turns = [i for i, m in enumerate(req.messages) if m.role == "user"]
    for i, m in enumerate(req.messages):
        if m.role != "user":
            raise RequestError(
                f"messages.{i}: role {m.role!r} is not supported: Ying-VLM's prompt (paper Figure 3) is one "
                "instruction and its input; send one user message", f"messages.{i}.role")
    if len(user_turns) != 1:
        raise RequestError(
            f"messages: {len(user_turns)} user messages; Ying-VLM's prompt is single-turn, send exactly one",
            "messages")
    msg = req.messages[0]
    texts: list[str] = []
    images: list[ImageRef] = []
    if isinstance(msg.content, str):
        texts.append(msg.content)
    elif msg.content:
        for j, part in enumerate(msg.content):
            param = f"messages.0.content.{j}"
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            url = part.image_url.url.strip()
            param += ".image_url.url"
            scheme = url.split(":", 1)[0].lower() if ":" in url else ""
            if scheme == "data":
                images.append(ImageRef(param=param, data=_data_url_bytes(url, param)))
            elif scheme in ("http", "https"):
                if not url_allowed(url, limits.image_url_allowlist):
                    raise RequestError(
                        f"{param}: image URLs are not fetched by this server unless serve.image_url_allowlist "
                        "lists their prefix; send the image inline as a data: URL "
                        "(data:image/jpeg;base64,<payload>)", param)
                images.append(ImageRef(param=param, url=url))
            else:
                raise RequestError(f"{param}: unsupported URL scheme {scheme or '(none)'!r}; use a data: URL", param)
            if len(images) > limits.max_images:
                raise RequestError(f"messages.0.content: more than {limits.max_images} images (serve.max_images)",
                                   "messages.0.content")
    instruction = texts[0].strip() if texts else ""
    if not instruction:
        raise RequestError("messages.0.content: a text part with the instruction is required", "messages.0.content")
    if not images:
        raise RequestError("messages.0.content: at least one image_url part is required (Ying-VLM answers about "
                           "images)", "messages.0.content")
    inputs = "\n".join(t.strip() for t in texts[1:] if t.strip())

    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise RequestError("max_tokens and max_completion_tokens disagree; send one of them", "max_completion_tokens")
    field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_new = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    room = model_limits.max_new_tokens(len(images))
    if max_new > limits.max_tokens:
        raise RequestError(f"{field}: {max_new} is over this server's limit of {limits.max_tokens} (serve.max_tokens)",
                           field)
    if max_new > room:
        raise RequestError(
            f"{field}: {max_new} tokens do not fit the model's context with {len(images)} image(s); at most {room}",
            field)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise RequestError("stop: at most 4 stop sequences", "stop")
    if any(not s for s in stops):
        raise RequestError("stop: stop sequences must not be empty", "stop")
    gen = GenerationRequest(
        images=[], instruction=instruction, inputs=inputs, chinese_dialogue=req.chinese_dialogue,
        max_new_tokens=max_new, temperature=req.temperature or 0.0,
        top_p=1.0 if req.top_p is None else req.top_p, stop=tuple(stops))
    return gen, images


def chat_completion(model: str, result: GenerationResult) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": _usage(result),
    }


def _usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def chat_chunk(chunk_id: str, created: int, model: str, *, delta: dict | None = None,
               finish_reason: str | None = None, usage: GenerationResult | None = None) -> dict:
    """One ``chat.completion.chunk``; with ``usage`` it is the final usage-only chunk (no choices)."""
    body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage is not None:
        body["choices"] = []
        body["usage"] = _usage(usage)
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    return body
