"""The web app, the flaskr way: ``create_app(config, explainer)`` here, the routes in
``routes``, the model service (loading, warm-up, the queue) in ``service``, errors in
``errors``. Nothing here computes a gradient: the explainers live in ``explain/``."""
from __future__ import annotations

import io
from pathlib import Path

from flask import Flask, Request, Response, request

from ..imaging import DEFAULT_MAX_PIXELS
from .errors import register_errors
from .routes import bp, render_page
from .service import EXTENSION, Service

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_CONFIG = {
    "BUNDLE": None,                          # model bundle; None: $CAPTION_BUNDLE or models/objects
    "MAX_CONTENT_LENGTH": 10 * 1024 * 1024,  # bytes in one request (Flask answers 413 above it)
    "MAX_PIXELS": DEFAULT_MAX_PIXELS,        # pixels in one image
    "QUEUE_SIZE": 4,                         # requests allowed to wait for the model
    "WARM_UP": False,                        # trace the model once before serving
    "BEAM_WIDTH": 3,
    "RETRY_AFTER_BUSY": 5,                   # seconds, in Retry-After when the queue is full
    "RETRY_AFTER_LOADING": 10,               # seconds, in Retry-After while the model loads
    "LIVE_LEASE_SECONDS": 3,                 # live mode: a stream's hold on the model lapses
}

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}


class InMemoryRequest(Request):
    """Uploaded files stay in memory: Werkzeug would spool files over 500 KB to a
    temporary file. The request size is bounded by MAX_CONTENT_LENGTH."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path in ("/explain", "/healthz"):
        # Answers about a frame are never cached; a route may say otherwise for what
        # is immutable (a concept's example patch, addressed by its bank's fingerprint).
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(config: dict | None = None, explainer=None) -> Flask:
    """The Flask app. ``explainer``: a ready Explainer (tests, app.py); without one the
    model is loaded from ``config["BUNDLE"]`` in a background thread, and /healthz and
    the API answer 503 until it is ready."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    if explainer is None or cfg["BUNDLE"] is not None:
        # A name (`--bundle shapes`) becomes its folder, so the page's model picker
        # and /healthz can tell which shipped bundle is served.
        from ..model.bundles import resolve_bundle
        cfg["BUNDLE"] = str(resolve_bundle(cfg["BUNDLE"]))

    app = Flask(__name__, template_folder=str(REPO_ROOT / "templates"),
                static_folder=str(REPO_ROOT / "static"), static_url_path="/static")
    app.request_class = InMemoryRequest
    app.config.update(cfg)
    app.config["MAX_CONTENT_LENGTH"] = int(cfg["MAX_CONTENT_LENGTH"])
    app.json.sort_keys = False

    service = Service(app.config)
    app.extensions[EXTENSION] = service
    app.register_blueprint(bp)
    register_errors(app, render_page)
    app.after_request(_security_headers)
    service.load(cfg["BUNDLE"], explainer, bool(cfg["WARM_UP"]))
    return app
