"""Start and stop the Serve app from Python: ``deploy``, ``delete_app`` and ``serve_until_stopped``
(what ``ying serve --run-dir`` does).

Serve's HTTP options (host, port) are cluster-wide and fixed by Serve's first start, so ``deploy``
refuses a host/port other than the running ones instead of silently serving elsewhere. Stopping
deletes this app only: other apps on the cluster and Serve itself keep running.
"""

from __future__ import annotations

import signal
import threading

from ying.config import YingConfig
from ying.serve.auth import read_token, require_token_off_loopback, token_digest

__all__ = ["deploy", "delete_app", "base_url", "start_from_run", "serve_until_stopped"]


def base_url(host: str, port: int, route_prefix: str = "/") -> str:
    url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    prefix = "" if route_prefix == "/" else route_prefix.rstrip("/")
    return f"http://{url_host}:{port}{prefix}"


def deploy(app, *, host: str, port: int, app_name: str, route_prefix: str = "/", has_token: bool,
           quiet: bool = False) -> str:
    """Run ``app`` as ``app_name`` and return its base URL once it is healthy.

    ``quiet``: Serve's INFO lines and access log stay in its log files (the DAG's own check of the
    app); ``ying serve`` keeps them on the console, where an operator watches requests.
    """
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import LoggingConfig

    logging_config = LoggingConfig(log_level="WARNING", enable_access_log=False) if quiet else None

    require_token_off_loopback(host, has_token)
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        running = client.http_config
        if (running.host, running.port) != (host, port):
            raise RuntimeError(
                f"Serve already listens on {running.host}:{running.port} on this cluster (its host and port are fixed "
                f"at its first start); use serve.host={running.host} serve.port={running.port}, or stop Serve "
                "(`serve shutdown`) if none of its apps are needed")
    else:
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(app, name=app_name, route_prefix=route_prefix, logging_config=logging_config)
    return base_url(host, port, route_prefix)


def delete_app(app_name: str) -> None:
    """Delete this app only (never ``serve.shutdown()``, which would take every app down)."""
    from ray import serve

    serve.delete(app_name)


def start_from_run(cfg: YingConfig, run_dir: str | None = None, checkpoint: str | None = None,
                   model_name: str = "ying-vlm") -> tuple[str, str | None]:
    """Deploy the app for a run (or a checkpoint); (base URL, token or None)."""
    from ying.serve.app import application
    from ying.serve.models import resolve_models

    s = cfg.serve
    token = read_token(s.token_file)
    require_token_off_loopback(s.host, token is not None)  # before anything starts
    served = resolve_models(cfg, run_dir=run_dir, checkpoint=checkpoint, model_name=model_name)
    app = application(cfg, served, token_digest(token))
    url = deploy(app, host=s.host, port=s.port, app_name=s.app_name, route_prefix=s.route_prefix,
                 has_token=token is not None)
    return url, token


def serve_until_stopped(app_name: str, announce: str) -> None:
    """Print ``announce``, block until Ctrl-C or SIGTERM, then delete ``app_name``."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(announce, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"[ying] stopping: deleting Serve app {app_name!r}", flush=True)
        delete_app(app_name)


