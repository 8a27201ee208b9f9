"""The routes: the page, the JSON API and the no-JavaScript form (see DESIGN.md for
the JSON contract)::

    GET  /                 the page
    GET  /healthz          {"status": "ok", "model": card, ...}; 503 {"status": "loading"} first
    GET  /api/methods      the explanation methods on offer (the registry, as data)
    POST /api/caption      multipart ``image`` -> caption JSON
    POST /api/explain      multipart ``image`` (+ methods, words, caption, overlays,
                           the methods' options, and ``live`` for a live stream's
                           frames) -> explanation JSON
    POST /api/bundle       serve another shipped bundle (the page's model picker)
    POST /explain          the page's form without JavaScript: the page with the result
    GET  /api/samples      the sample scenes
    GET  /samples/<n>.png  sample scene n (generated in memory)

Uploads are read into memory and never written to disk; saving results happens in
the browser.
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

from flask import (Blueprint, Response, jsonify, redirect, render_template, request,
                   url_for)

from ..explain import methods as registry
from ..imaging import decode_image
from .errors import ApiError
from .service import service

log = logging.getLogger(__name__)
bp = Blueprint("captioning", __name__)

# Synthetic sample scenes: held-out seeds (the bundles train on seeds below 10^7).
SAMPLE_SEEDS = (50_000_000, 50_000_002, 50_000_003, 50_000_007, 50_000_009, 50_000_011)
SAMPLE_SIZE = {"shapes": 160, "objects": 320}   # the bundles' input sizes
MAX_CAPTION_CHARS = 300


# -- request helpers -------------------------------------------------------------------
def uploaded_image():
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
    cfg = service().config
    return decode_image(data, max_bytes=cfg["MAX_CONTENT_LENGTH"], max_pixels=cfg["MAX_PIXELS"])


def _last(name: str):
    # the last value wins: the page's form sends a hidden "0" before its checkbox's "1"
    values = request.form.getlist(name)
    return values[-1] if values else None


def explain_options(captioner) -> dict:
    """The optional form fields of /api/explain and /explain, validated before any
    model work (ExplainError -> 400)."""
    caption = request.form.get("caption")
    if caption is not None and len(caption) > MAX_CAPTION_CHARS:
        raise ApiError(400, f"the caption is too long (at most {MAX_CAPTION_CHARS} characters)")
    raw_options = {name: _last(name) for name in
                   [*registry.all_options(), *(o.name for o in registry.REQUEST_OPTIONS)]}
    # the page's checkboxes send one "methods" field each; the API one comma list
    methods = ",".join(request.form.getlist("methods"))
    return {"methods": registry.parse_methods(methods, captioner),
            "words": request.form.get("words") or None,
            "caption": caption if caption and caption.strip() else None,
            **registry.parse_request_options(raw_options),
            **registry.parse_options(raw_options)}


def _explain(explainer, image, options):
    t0 = time.perf_counter()
    result = service().run(explainer.explain, image, **options)
    log.info("explained a %dx%d image as %r in %.0f ms", image.shape[1], image.shape[0],
             result.get("caption"), 1000 * (time.perf_counter() - t0))
    return result


@lru_cache(maxsize=4 * len(SAMPLE_SEEDS))
def sample_scene(n: int, world: str = "shapes"):
    """(PNG bytes, reference caption) of sample scene n of a world (the served bundle's)."""
    from ..data.worlds import scene_generator
    from ..explain.render import png_bytes
    clean = {"jpeg_quality": 0} if world == "shapes" else {}   # a crisp sample, no JPEG artefacts
    scene = scene_generator(world)(SAMPLE_SEEDS[n], image_size=SAMPLE_SIZE[world], **clean)
    return png_bytes(scene.image), scene.caption


def _world() -> str:
    return service().model.card.get("world", "shapes")


def _samples() -> list[dict]:
    world = _world()
    return [{"id": n, "url": url_for("captioning.sample_png", n=n, world=world),
             "caption": sample_scene(n, world)[1]} for n in range(len(SAMPLE_SEEDS))]


@lru_cache(maxsize=1)
def _legend_url() -> str:
    from ..explain.render import data_url, legend
    return data_url(legend(width=256, height=12))


@lru_cache(maxsize=1)
def _colormap_table() -> list[list[int]]:
    """The overlays' colormap as 256 RGB rows: the page colours heatmaps with it."""
    import numpy as np

    from ..explain.render import DEFAULT_CMAP, _colour_table
    table = _colour_table(DEFAULT_CMAP)
    rows = np.linspace(0, len(table) - 1, 256).round().astype(int)
    return table[rows].round().astype(int).tolist()


def render_page(**context):
    svc = service()
    return render_template(
        "index.html", samples=_samples(), legend_url=_legend_url(),
        methods=registry.describe(svc.model.captioner), colormap=_colormap_table(),
        max_upload_mb=svc.config["MAX_CONTENT_LENGTH"] / (1024 * 1024),
        max_upload_bytes=int(svc.config["MAX_CONTENT_LENGTH"]),
        model_status=svc.model.status, model_card=svc.model.card,
        bundles=_bundle_choices(), **context)


def _bundle_choices() -> list[dict]:
    """The shipped bundles for the page's picker, the served one marked."""
    from ..model.bundles import list_bundles
    current = service().config.get("BUNDLE")
    current = Path(current).resolve() if current else None
    return [{"name": b["name"], "description": b["description"],
             "selected": current == Path(b["path"]).resolve()} for b in list_bundles()]


# -- routes ----------------------------------------------------------------------------
@bp.get("/")
def index():
    return render_page()


@bp.get("/healthz")
def healthz():
    svc = service()
    state = svc.model
    if state.status == "ready":
        from ..model.bundles import list_bundles
        return jsonify(status="ok", model=state.card, bundle=svc.config.get("BUNDLE"),
                       bundles=[{k: b[k] for k in ("name", "description", "default")}
                                for b in list_bundles()])
    if state.status == "loading":
        return (jsonify(status="loading"), 503,
                {"Retry-After": str(svc.config["RETRY_AFTER_LOADING"])})
    return jsonify(status="error", error=state.error), 503


@bp.get("/api/methods")
def api_methods():
    return jsonify(methods=registry.describe(service().model.captioner))


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
    svc = service()
    current = svc.config.get("BUNDLE")
    if current and Path(current).resolve() == Path(bundles[name]).resolve() \
            and svc.model.status != "error":
        return jsonify(status=svc.model.status, bundle=name)
    svc.config["BUNDLE"] = bundles[name]
    svc.load(bundles[name], warm=svc.config.get("WARM_UP", True))
    return jsonify(status="loading", bundle=name), 202


@bp.post("/api/caption")
def api_caption():
    explainer = service().ready_explainer()
    image = uploaded_image()
    return jsonify(service().run(explainer.caption, image))


@bp.post("/api/explain")
def api_explain():
    explainer = service().ready_explainer()
    options = explain_options(explainer.captioner)
    live = (request.form.get("live") or "").strip()[:64]
    if live:          # a frame of a live stream (the page's Live mode)
        service().take_live(live)
    image = uploaded_image()
    return jsonify(_explain(explainer, image, options))


@bp.post("/explain")
def explain_form():
    """The no-JavaScript path: the page's form posts here (an upload, or a sample button).
    The page draws no maps itself then, so the answer carries PNG overlays."""
    from ..explain.render import data_url, display_frame
    explainer = service().ready_explainer()
    options = explain_options(explainer.captioner)
    options.update(words=None, overlays=True)
    sample = request.form.get("sample")
    if sample is not None and "image" not in request.files:
        try:
            n = int(sample)
            png, reference = sample_scene(n, _world()) if 0 <= n < len(SAMPLE_SEEDS) else (None, None)
        except ValueError:
            png = None
        if png is None:
            raise ApiError(400, f"there is no sample {sample!r}")
        image = decode_image(png)
    else:
        image, reference = uploaded_image(), None
    result = _explain(explainer, image, options)
    return render_page(result=result, frame_url=data_url(display_frame(image)),
                       reference=reference)


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
    if world not in SAMPLE_SIZE:
        raise ApiError(404, f"there is no world {world[:40]!r}; worlds are {', '.join(SAMPLE_SIZE)}")
    png, _ = sample_scene(n, world)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "public, max-age=3600"})


@bp.get("/api/concepts/<key>/<concept>/<int:n>.png")
def concept_patch(key: str, concept: str, n: int):
    """Example patch n of a concept of the served model's bank (answers link them
    instead of inlining images). A key from another bank (the model was switched)
    is a 404, never another concept's picture."""
    bank = getattr(service().ready_explainer(), "concept_bank", None)
    png = bank.patch_png(concept, n) if bank is not None and bank.key == key else None
    if png is None:
        raise ApiError(404, "there is no such concept patch for the model being served; "
                            "explain the frame again")
    return Response(png, mimetype="image/png",
                    headers={"Cache-Control": "public, max-age=86400, immutable"})
