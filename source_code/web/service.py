"""The model service: the one explainer the routes share, its loading state, and the
queue in front of it.

The model is the slow, single resource: every call into it runs under one worker
lock, and at most ``QUEUE_SIZE`` requests may wait for that lock; the next one is
answered 503 with ``Retry-After`` at once instead of piling up.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

from flask import current_app

from .errors import ApiError
from .memory import TRIM_ABOVE, release_free_memory

log = logging.getLogger(__name__)
EXTENSION = "captioning"


# Example patches of the served model's concepts (routes.concept_patch); key is the
# bank's fingerprint, so a page never shows patches of another model's bank.
PATCH_ROUTE = "/api/concepts/{key}/{concept}/{n}.png"


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
                    # a large request's peak need not stay resident
                    release_free_memory(above=TRIM_ABOVE)
        finally:
            with self._count:
                self.pending -= 1


class LiveLease:
    """Live mode explains a webcam stream continuously, so one viewer can keep the model
    busy: the first live client holds the lease while its frames keep coming (each
    renews it), and another live client is refused (503 + Retry-After) instead of
    halving both streams' frame rates. A paused or closed stream frees it after
    ``seconds`` without frames."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self._lock = threading.Lock()
        self.holder, self.renewed = None, 0.0

    def take(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if self.holder not in (None, client) and now - self.renewed < self.seconds:
                return False
            self.holder, self.renewed = client, now
            return True


class ModelState:
    """The explainer and whether it can serve yet ("loading", "ready" or "error")."""

    def __init__(self):
        self.status = "loading"
        self.explainer = None
        self.error = None

    def ready(self, explainer):
        bank = getattr(explainer, "concept_bank", None)
        if bank is not None:       # answers link the patches the server serves
            bank.patch_route = PATCH_ROUTE
        self.explainer, self.error, self.status = explainer, None, "ready"

    def failed(self, message: str):
        self.error, self.status = message, "error"

    @property
    def captioner(self):
        return getattr(self.explainer, "captioner", None)

    @property
    def card(self) -> dict:
        return dict(getattr(self.captioner, "card", None) or {})


class Service:
    """Everything the routes share, kept in ``app.extensions["captioning"]``."""

    def __init__(self, config):
        self.config = config
        self.queue = WorkQueue(config["QUEUE_SIZE"])
        self.live = LiveLease(config["LIVE_LEASE_SECONDS"])
        self.model = ModelState()

    def load(self, bundle, explainer=None, warm: bool = False):
        """Serve ``explainer``, or load it from ``bundle``; loading and warming up run
        in a background thread while /healthz answers "loading"."""
        self.model = state = ModelState()
        if explainer is not None and not warm:
            state.ready(explainer)
            return
        threading.Thread(target=self._prepare, args=(state, bundle, explainer, warm),
                         name="model-loader", daemon=True).start()

    def _prepare(self, state: ModelState, bundle, explainer, warm: bool):
        t0 = time.perf_counter()
        try:
            if explainer is None:
                log.info("loading model bundle %s", bundle)
                explainer = load_explainer(bundle, self.config["BEAM_WIDTH"])
            if warm:
                log.info("warming up the model")
                with self.queue.worker:
                    warm_up(explainer)
            state.ready(explainer)
            log.info("model ready (%.1f s)", time.perf_counter() - t0)
        except Exception:
            log.exception("the model could not be loaded from %s", bundle)
            state.failed("the model could not be loaded; see the server log")

    def ready_explainer(self):
        """The explainer, or ApiError 503 while it loads or after it failed."""
        state = self.model
        if state.status == "ready":
            return state.explainer
        if state.status == "loading":
            raise ApiError(503, "the model is still loading; try again in a few seconds",
                           {"Retry-After": str(self.config["RETRY_AFTER_LOADING"])})
        raise ApiError(503, "the model is not available: it failed to load (see the server log)")

    def take_live(self, client: str):
        """The live lease for ``client``, or ApiError 503 while another stream holds it."""
        if not self.live.take(client):
            raise ApiError(503, "another viewer is using live mode; try again in a few seconds "
                                "(capturing single frames still works)",
                           {"Retry-After": str(max(1, round(self.live.seconds)))})

    def run(self, fn, *args, **kwargs):
        """Call into the model under the worker lock, or answer 503 when too many wait."""
        try:
            with self.queue.slot():
                return fn(*args, **kwargs)
        except QueueFull:
            raise ApiError(503, "the server is busy with other images; try again in a few "
                                "seconds",
                           {"Retry-After": str(self.config["RETRY_AFTER_BUSY"])}) from None


def service() -> Service:
    return current_app.extensions[EXTENSION]


def load_explainer(bundle, beam_width):
    from ..explain.pipeline import Explainer
    from ..model.captioner import Captioner
    return Explainer(Captioner.load(bundle), beam_width=beam_width)


def warm_up(explainer):
    """Run every compiled function once so the first visitor does not wait for tracing."""
    try:
        if hasattr(explainer, "warm_up"):
            explainer.warm_up()
    finally:
        release_free_memory()
