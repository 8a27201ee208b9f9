"""Errors as the client sees them: ``{"error": "reason"}`` with a fitting status (the
page itself for the HTML routes). A 500 never carries a traceback or a path; the log
does."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..explain.methods import ExplainError
from ..imaging import ImageError

log = logging.getLogger(__name__)
GENERIC_500 = "internal error: the server could not process this image; please try again"
HTML_ROUTES = ("/", "/explain")


class ApiError(Exception):
    """An error answered as {"error": message} with ``status`` (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def http_message(exc: HTTPException) -> str:
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


def register_errors(app: Flask, render_page):
    """``render_page(error=message)``: the page for errors on the HTML routes."""
    def answer(status: int, message: str, headers: dict | None = None):
        if request.path in HTML_ROUTES:
            return render_page(error=message), status, headers or {}
        return jsonify(error=message), status, headers or {}

    @app.errorhandler(ApiError)
    def on_api_error(exc: ApiError):
        return answer(exc.status, exc.message, exc.headers)

    @app.errorhandler(ImageError)
    def on_image_error(exc: ImageError):
        return answer(getattr(exc, "status", 400), str(exc))

    @app.errorhandler(ExplainError)
    def on_explain_error(exc: ExplainError):
        return answer(400, str(exc))

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        if exc.code and exc.code < 400:     # redirects raised as exceptions
            return exc
        return answer(exc.code or 500, http_message(exc))

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return answer(500, GENERIC_500)
