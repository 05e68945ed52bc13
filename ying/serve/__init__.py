"""Ray Serve app for the trained model: ``build_app`` / ``deploy`` / ``shutdown``. See ``app.py``."""

from ying.serve.app import (
    DEFAULT_PREDICTOR_FACTORY,
    TOKEN_ENV,
    GenerateRequest,
    GenerateResponse,
    Predictor,
    build_app,
    deploy,
    shutdown,
)

__all__ = [
    "DEFAULT_PREDICTOR_FACTORY",
    "TOKEN_ENV",
    "GenerateRequest",
    "GenerateResponse",
    "Predictor",
    "build_app",
    "deploy",
    "shutdown",
]
