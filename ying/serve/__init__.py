"""Ying-VLM on Ray Serve: an OpenAI-compatible vision chat API and evaluations over HTTP.

``build`` is the application builder (``serve run ying.serve.app:build run_dir=...``); ``start_from_run``
and ``delete_app`` start and stop it from Python; ``load_engine`` loads a checkpoint for batched
generation outside Serve. See ``app.py``.
"""

from ying.serve.app import AppArgs, application, build
from ying.serve.auth import TOKEN_ENV, read_token
from ying.serve.engine import GenerationEngine, GenerationRequest, GenerationResult, load_engine
from ying.serve.models import ServedModels, resolve_models
from ying.serve.runner import base_url, delete_app, deploy, serve_until_stopped, start_from_run

__all__ = [
    "AppArgs",
    "build",
    "application",
    "TOKEN_ENV",
    "read_token",
    "GenerationEngine",
    "GenerationRequest",
    "GenerationResult",
    "load_engine",
    "ServedModels",
    "resolve_models",
    "deploy",
    "delete_app",
    "base_url",
    "start_from_run",
    "serve_until_stopped",
]
