"""The web app: the page, the JSON API and the no-JavaScript form, over one Explainer.

``create_app(config, explainer)`` is the application factory. The model is the
slow, single resource: every call into it runs under one worker lock, and at
most ``QUEUE_SIZE`` requests may wait for that lock; the next one is answered
503 with ``Retry-After`` at once instead of piling up. Uploads are read into
memory and never written to disk (``InMemoryRequest``); saving results happens
in the browser.

Routes (see DESIGN.md for the JSON contract)::

    GET  /                 the page
    GET  /healthz          {"status": "ok", "model": card}; 503 {"status": "loading"} first
    POST /api/caption      multipart ``image`` -> caption JSON
    POST /api/explain      multipart ``image`` (+ methods, words, saliency_method,
                           adversarial) -> explanation JSON
    POST /explain          the page's form without JavaScript: the same page, rendered
                           with the result
    GET  /api/samples      the sample scenes
    GET  /samples/<n>.png  sample scene n (generated in memory)

Errors are ``{"error": "reason"}`` with a fitting status (HTML for the form
route); a 500 never carries a traceback or a path, the log does.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from flask import (Blueprint, Flask, Request, Response, current_app, jsonify, redirect,
                   render_template, request, url_for)
from werkzeug.exceptions import HTTPException

from ..explain.pipeline import SALIENCY_METHODS, ExplainError, parse_methods
from .imaging import DEFAULT_MAX_PIXELS, ImageError, decode_image
from .memory import release_free_memory

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION = "captioning"

DEFAULT_CONFIG = {
    "BUNDLE": None,                          # model bundle; None: $CAPTION_BUNDLE or models/objects
    "MAX_CONTENT_LENGTH": 10 * 1024 * 1024,  # bytes in one request (Flask answers 413 above it)
    "MAX_PIXELS": DEFAULT_MAX_PIXELS,        # pixels in one image
    "QUEUE_SIZE": 4,                         # requests allowed to wait for the model
    "WARM_UP": False,                        # trace the model once before serving
    "SAVE_DIR": None,                        # reserved: results are saved in the browser only
    "BEAM_WIDTH": 3,
    "RETRY_AFTER_BUSY": 5,                   # seconds, in Retry-After when the queue is full
    "RETRY_AFTER_LOADING": 10,               # seconds, in Retry-After while the model loads
}

# Shown on the page, in this order.
METHOD_LABELS = {"gradcam": "Grad-CAM", "saliency": "Saliency", "ace": "ACE"}
METHOD_HINTS = {
    "gradcam": "where the model looked",
    "saliency": "pixels the caption is sensitive to",
    "ace": "image regions (concepts) that drove it",
}

# Synthetic sample scenes: held-out seeds (the default model trains on seeds below 10^7).
SAMPLE_SEEDS = (50_000_000, 50_000_002, 50_000_003, 50_000_007, 50_000_009, 50_000_011)
SAMPLE_SIZE = 160
OBJECTS_SAMPLE_SIZE = 224
WORLDS = ("shapes", "objects")

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
GENERIC_500 = "internal error: the server could not process this image; please try again"


# -- plumbing --------------------------------------------------------------------------
class InMemoryRequest(Request):
    """Uploaded files stay in memory: Werkzeug would spool files over 500 KB to a
    temporary file. The request size is bounded by MAX_CONTENT_LENGTH."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


class ApiError(Exception):
    """An error answered as {"error": message} with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class QueueFull(Exception):
    pass


class WorkQueue:
    """One worker lock for the model, and a bound on how many requests may wait for it."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self.worker = threading.Lock()
        self._count = threading.Lock()
        self.pending = 0            # running + waiting

    @contextmanager
    def slot(self):
        with self._count:
            if self.pending >= self.size + 1:
                raise QueueFull()
            self.pending += 1
        try:
            with self.worker:
                try:
                    yield
                finally:
                    release_free_memory()   # the request's peak need not stay resident
        finally:
            with self._count:
                self.pending -= 1


class ModelState:
    """The explainer and whether it can serve yet ("loading", "ready" or "error")."""

    def __init__(self):
        self.status = "loading"
        self.explainer = None
        self.error = None

    def ready(self, explainer):
        self.explainer, self.error, self.status = explainer, None, "ready"

    def failed(self, message: str):
        self.error, self.status = message, "error"

    @property
    def card(self) -> dict:
        captioner = getattr(self.explainer, "captioner", None)
        return dict(getattr(captioner, "card", None) or {})


class Service:
    """Everything the routes share, kept in ``app.extensions["captioning"]``."""

    def __init__(self, config):
        self.config = config
        self.queue = WorkQueue(config["QUEUE_SIZE"])
        self.model = ModelState()


def _service() -> Service:
    return current_app.extensions[EXTENSION]


def ace_available() -> bool:
    try:
        from ..explain import ace, adversarial  # noqa: F401
    except ImportError:
        return False
    return True


# -- model loading ---------------------------------------------------------------------
def warm_up(explainer):
    """Run every compiled function once so the first visitor does not wait for tracing."""
    if not hasattr(explainer, "warm_up"):
        return
    try:
        explainer.warm_up()
    except ImportError:          # a build without ACE: warm up what there is
        import numpy as np
        size = explainer.captioner.input_size
        frame = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        explainer.explain(frame, methods="gradcam,saliency", words="0")
        explainer.caption(frame)
    finally:
        release_free_memory()


def _load_explainer(bundle, beam_width):
    from ..explain.pipeline import Explainer
    from ..model.captioner import Captioner
    return Explainer(Captioner.load(bundle), beam_width=beam_width)


def _prepare_model(service: Service, explainer, bundle, warm: bool):
    """Load (when no explainer was given) and warm up in a background thread."""
    state = service.model

    def work():
        t0 = time.perf_counter()
        try:
            ex = explainer
            if ex is None:
                log.info("loading model bundle %s", bundle)
                ex = _load_explainer(bundle, service.config["BEAM_WIDTH"])
            if warm:
                log.info("warming up the model")
                with service.queue.worker:
                    warm_up(ex)
            state.ready(ex)
            log.info("model ready (%.1f s)", time.perf_counter() - t0)
        except Exception:
            log.exception("the model could not be loaded from %s", bundle)
            state.failed("the model could not be loaded; see the server log")

    if explainer is not None and not warm:
        state.ready(explainer)
        return
    threading.Thread(target=work, name="model-loader", daemon=True).start()


# -- request helpers -------------------------------------------------------------------
def _ready_explainer():
    service = _service()
    state = service.model
    if state.status == "ready":
        return state.explainer
    if state.status == "loading":
        raise ApiError(503, "the model is still loading; try again in a few seconds",
                       {"Retry-After": str(service.config["RETRY_AFTER_LOADING"])})
    raise ApiError(503, "the model is not available: it failed to load (see the server log)")


def _uploaded_image():
    """The multipart field ``image``, decoded (raises ApiError / ImageError)."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise ApiError(400, "send the image as multipart/form-data in the field 'image'")
    upload = request.files.get("image")
    if upload is None and "image" in request.form:
        raise ApiError(400, "the field 'image' must be a file upload, not text")
    if upload is None:
        # a part without a name (Content-Disposition: form-data; filename="x") arrives
        # under the key None, which broke the join below into a 500
        got = sorted({name[:40] for name in (*request.files, *request.form) if name})[:5]
        hint = f" (received: {', '.join(got)})" if got else ""
        raise ApiError(400, f"no image received: send it in the form field 'image'{hint}")
    data = upload.read()
    if not data and not upload.filename:
        raise ApiError(400, "no image was chosen: pick an image file first")
    cfg = _service().config
    return decode_image(data, max_bytes=cfg["MAX_CONTENT_LENGTH"], max_pixels=cfg["MAX_PIXELS"])


def _flag(name: str, default: bool) -> bool:
    # the last value wins: the page's form sends a hidden "0" before its checkbox's "1"
    values = request.form.getlist(name)
    value = values[-1] if values else None
    if value is None or value.strip() == "":
        return default
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ApiError(400, f"{name} must be 0 or 1, not {value!r}")


def _explain_options() -> dict:
    """The optional form fields of /api/explain and /explain, validated before any model work."""
    raw = request.form.get("methods")
    methods = parse_methods(raw)                     # ExplainError -> 400
    if not (raw or "").strip() and not ace_available():
        methods = [m for m in methods if m != "ace"]
    if "ace" in methods and not ace_available():
        raise ApiError(501, "ACE is not available on this server")
    saliency = (request.form.get("saliency_method") or "vanilla").strip().lower()
    if saliency not in SALIENCY_METHODS:
        raise ApiError(400, f"unknown saliency method {saliency!r}; choose from "
                            f"{', '.join(SALIENCY_METHODS)}")
    return {"methods": methods, "words": request.form.get("words") or None,
            "saliency_method": saliency, "adversarial": _flag("adversarial", True)}


def _run(fn, *args, **kwargs):
    """Call into the model under the worker lock, or answer 503 when too many wait."""
    service = _service()
    try:
        with service.queue.slot():
            return fn(*args, **kwargs)
    except QueueFull:
        raise ApiError(503, "the server is busy with other images; try again in a few seconds",
                       {"Retry-After": str(service.config["RETRY_AFTER_BUSY"])}) from None


def _explain(explainer, image, options):
    t0 = time.perf_counter()
    result = _run(explainer.explain, image, **options)
    log.info("explained a %dx%d image as %r in %.0f ms", image.shape[1], image.shape[0],
             result.get("caption"), 1000 * (time.perf_counter() - t0))
    return result


@lru_cache(maxsize=4 * len(SAMPLE_SEEDS))
def _sample(n: int, world: str = "shapes"):
    """(PNG bytes, reference caption) of sample scene n of a world (the served bundle's)."""
    from ..explain.render import png_bytes
    if world == "objects":
        from ..data.objects_world import generate_object_scene
        scene = generate_object_scene(SAMPLE_SEEDS[n], image_size=OBJECTS_SAMPLE_SIZE)
    else:
        from ..data.synthetic import generate_scene
        scene = generate_scene(SAMPLE_SEEDS[n], image_size=SAMPLE_SIZE, jpeg_quality=0)
    return png_bytes(scene.image), scene.caption


def _world() -> str:
    return _service().model.card.get("world", "shapes")


def _samples() -> list[dict]:
    world = _world()
    return [{"id": n, "url": url_for("captioning.sample_png", n=n, world=world),
             "caption": _sample(n, world)[1]} for n in range(len(SAMPLE_SEEDS))]


@lru_cache(maxsize=1)
def _legend_url() -> str:
    from ..explain.render import data_url, legend
    return data_url(legend(width=256, height=12))


def _page(**context):
    service = _service()
    return render_template(
        "index.html", samples=_samples(), legend_url=_legend_url(),
        method_labels=METHOD_LABELS, method_hints=METHOD_HINTS,
        max_upload_mb=service.config["MAX_CONTENT_LENGTH"] / (1024 * 1024),
        max_upload_bytes=int(service.config["MAX_CONTENT_LENGTH"]),
        model_status=service.model.status, model_card=service.model.card,
        bundles=_bundle_choices(), **context)


def _bundle_choices() -> list[dict]:
    """The shipped bundles for the page's picker, the served one marked."""
    from ..model.bundles import list_bundles
    current = _service().config.get("BUNDLE")
    current = Path(current).resolve() if current else None
    return [{"name": b["name"], "description": b["description"],
             "selected": current == Path(b["path"]).resolve()} for b in list_bundles()]


def _wants_html() -> bool:
    return request.path in ("/", "/explain")


# -- routes ----------------------------------------------------------------------------
bp = Blueprint("captioning", __name__)


@bp.get("/")
def index():
    return _page()


@bp.get("/healthz")
def healthz():
    service = _service()
    state = service.model
    if state.status == "ready":
        from ..model.bundles import list_bundles
        return jsonify(status="ok", model=state.card, bundle=service.config.get("BUNDLE"),
                       bundles=[{k: b[k] for k in ("name", "description", "default")}
                                for b in list_bundles()])
    if state.status == "loading":
        return (jsonify(status="loading"), 503,
                {"Retry-After": str(service.config["RETRY_AFTER_LOADING"])})
    return jsonify(status="error", error=state.error), 503


@bp.post("/api/bundle")
def api_bundle():
    """Serve another shipped bundle (the page's model picker). Only names listed under
    models/ are accepted, never a path from the client. Answers 202 while it loads."""
    from ..model.bundles import list_bundles
    body = request.get_json(silent=True) if request.is_json else None
    name = str((body or {}).get("name") or request.form.get("name") or "")[:100]
    bundles = {b["name"]: b["path"] for b in list_bundles()}
    if name not in bundles:
        raise ApiError(400, f"unknown bundle {name!r}; choose one of {', '.join(sorted(bundles))}")
    service = _service()
    current = service.config.get("BUNDLE")
    if current and Path(current).resolve() == Path(bundles[name]).resolve() \
            and service.model.status != "error":
        return jsonify(status=service.model.status, bundle=name)
    service.config["BUNDLE"] = bundles[name]
    service.model = ModelState()
    _prepare_model(service, None, bundles[name], warm=service.config.get("WARM_UP", True))
    return jsonify(status="loading", bundle=name), 202


@bp.post("/api/caption")
def api_caption():
    explainer = _ready_explainer()
    image = _uploaded_image()
    return jsonify(_run(explainer.caption, image))


@bp.post("/api/explain")
def api_explain():
    explainer = _ready_explainer()
    options = _explain_options()
    image = _uploaded_image()
    return jsonify(_explain(explainer, image, options))


@bp.post("/explain")
def explain_form():
    """The no-JavaScript path: the page's form posts here (an upload, or a sample button)."""
    from ..explain.render import data_url, display_frame
    explainer = _ready_explainer()
    options = _explain_options()
    options["words"] = None
    sample = request.form.get("sample")
    if sample is not None and "image" not in request.files:
        try:
            n = int(sample)
            png, reference = _sample(n) if 0 <= n < len(SAMPLE_SEEDS) else (None, None)
        except ValueError:
            png = None
        if png is None:
            raise ApiError(400, f"there is no sample {sample!r}")
        image = decode_image(png)
    else:
        image, reference = _uploaded_image(), None
    result = _explain(explainer, image, options)
    return _page(result=result, frame_url=data_url(display_frame(image)), reference=reference)


@bp.get("/explain")
def explain_get():
    return redirect(url_for("captioning.index"))


@bp.get("/api/samples")
def api_samples():
    return jsonify(samples=_samples())


@bp.get("/samples/<int:n>.png")
def sample_png(n: int):
    if not 0 <= n < len(SAMPLE_SEEDS):
        raise ApiError(404, f"there is no sample {n}; samples are 0 to {len(SAMPLE_SEEDS) - 1}")
    world = request.args.get("world", "shapes")
    if world not in WORLDS:
        raise ApiError(404, f"there is no world {world[:40]!r}; worlds are {', '.join(WORLDS)}")
    png, _ = _sample(n, world)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "public, max-age=3600"})


# -- errors and headers ----------------------------------------------------------------
def _error(status: int, message: str, headers: dict | None = None):
    if _wants_html():
        return _page(error=message), status, headers or {}
    return jsonify(error=message), status, headers or {}


def _http_message(exc: HTTPException) -> str:
    code = exc.code or 500
    if code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        size = f" ({limit / (1024 * 1024):.0f} MB)" if limit else ""
        return f"the upload is too large: the limit is{size} per request"
    if code == 404:
        return f"not found: {request.path}"
    if code == 405:
        return f"method {request.method} is not allowed here"
    if code == 400:
        return "bad request: the upload could not be read"
    return (exc.description or exc.name or "error").rstrip(".")


def _register_errors(app: Flask):
    @app.errorhandler(ApiError)
    def on_api_error(exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.errorhandler(ImageError)
    def on_image_error(exc: ImageError):
        return _error(getattr(exc, "status", 400), str(exc))

    @app.errorhandler(ExplainError)
    def on_explain_error(exc: ExplainError):
        return _error(400, str(exc))

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        if exc.code and exc.code < 400:     # redirects raised as exceptions
            return exc
        return _error(exc.code or 500, _http_message(exc))

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, GENERIC_500)


def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path in ("/explain", "/healthz"):
        response.headers["Cache-Control"] = "no-store"
    return response


# -- factory ---------------------------------------------------------------------------
def create_app(config: dict | None = None, explainer=None) -> Flask:
    """The Flask app. ``explainer``: a ready Explainer (tests, app.py); without one the
    model is loaded from ``config["BUNDLE"]`` in a background thread, and /healthz and
    the API answer 503 until it is ready."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    if cfg["SAVE_DIR"] is not None:
        raise ValueError("SAVE_DIR is not supported: frames and results are never stored on "
                         "the server; the page saves them in the browser")
    if cfg["BUNDLE"] is None and explainer is None:
        from ..model.bundles import default_bundle
        cfg["BUNDLE"] = str(default_bundle())

    app = Flask(__name__, template_folder=str(REPO_ROOT / "templates"),
                static_folder=str(REPO_ROOT / "static"), static_url_path="/static")
    app.request_class = InMemoryRequest
    app.config.update({k: v for k, v in cfg.items() if k != "SAVE_DIR"})
    app.config["MAX_CONTENT_LENGTH"] = int(cfg["MAX_CONTENT_LENGTH"])
    app.json.sort_keys = False

    service = Service(cfg)
    app.extensions[EXTENSION] = service
    app.register_blueprint(bp)
    _register_errors(app)
    app.after_request(_security_headers)
    _prepare_model(service, explainer, cfg["BUNDLE"], bool(cfg["WARM_UP"]))
    return app
