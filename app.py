"""Serve the explainable-captioning web app.

    python app.py [--host 127.0.0.1] [--port 4200] [--bundle DIR] [--threads N] [--queue-size N]
                  [--idle-timeout S]

Environment: CAPTION_HOST, CAPTION_PORT, CAPTION_BUNDLE (flags win). The model is
loaded and warmed up once, then the app is served with waitress; open the printed
address in a browser. Browsers only give pages the camera on localhost or over
HTTPS, so the server binds to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from contextlib import contextmanager

log = logging.getLogger("app")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        print(f"error: {name}={value!r} is not a port number", file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> argparse.ArgumentParser:
    from source_code.model.bundles import BUNDLE_ENV, DEFAULT_NAME
    p = argparse.ArgumentParser(prog="python app.py",
                                description="Serve the explainable-captioning web app.")
    p.add_argument("--host", default=os.environ.get("CAPTION_HOST") or DEFAULT_HOST,
                   help="address to listen on (default: $CAPTION_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=_env_int("CAPTION_PORT", DEFAULT_PORT),
                   help="port (default: $CAPTION_PORT or 4200)")
    p.add_argument("--bundle", default=os.environ.get(BUNDLE_ENV) or DEFAULT_NAME,
                   help=f"model bundle: a name under models/ (objects, shapes) or a directory "
                        f"(default: ${BUNDLE_ENV} or {DEFAULT_NAME})")
    p.add_argument("--threads", type=int, default=8,
                   help="request threads; keep it above --queue-size + 1 so that a full "
                        "queue is answered 503 at once (default: 8)")
    p.add_argument("--queue-size", type=int, default=4,
                   help="requests that may wait for the model before new ones get 503 (default: 4)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload (default: 10)")
    p.add_argument("--idle-timeout", type=int, default=30,
                   help="seconds a connection may stay silent, mid-upload included, before it "
                        "is closed (default: 30)")
    p.add_argument("--no-warm-up", action="store_true", help="skip tracing the model at start")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, native library output")
    return p


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@contextmanager
def quiet_native_stderr(enabled: bool = True):
    """Hide what native libraries print straight to file descriptor 2 while
    TensorFlow starts (CUDA probes, oneDNN notices); Python exceptions still arrive."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_explainer(bundle: str, verbose: bool):
    """The Explainer for ``bundle``, or None after printing one line saying why not."""
    with quiet_native_stderr(not verbose):
        from source_code.model.captioner import BundleError, Captioner
        try:
            from source_code.explain.pipeline import Explainer
            return Explainer(Captioner.load(bundle))
        except BundleError as exc:
            error = f"error: {exc}"
        except Exception as exc:  # a bundle that cannot be read: say so, without a traceback
            if verbose:
                raise
            error = f"error: could not load the model bundle {bundle}: {type(exc).__name__}: {exc}"
    print(error, file=sys.stderr)
    return None


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from source_code.web.memory import configure_process_memory
    configure_process_memory()      # before TensorFlow is imported: see its docstring
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 < args.port < 65536:
        print(f"error: port {args.port} is out of range", file=sys.stderr)
        return 2
    if args.idle_timeout < 1:
        print(f"error: --idle-timeout must be at least 1 second, not {args.idle_timeout}",
              file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        log.warning("listening on %s: this exposes the app to other machines, an explicit choice. "
                    "Browsers only allow the camera on localhost or over HTTPS, so remote visitors "
                    "can upload images but not use their camera unless you put HTTPS in front.",
                    args.host)

    from source_code.model.bundles import resolve_bundle
    args.bundle = str(resolve_bundle(args.bundle))
    log.info("loading model from %s ...", args.bundle)
    explainer = load_explainer(args.bundle, args.verbose)
    if explainer is None:
        return 2
    from source_code.web import create_app
    from source_code.web.service import warm_up
    if not args.no_warm_up:
        log.info("warming up the model (first run of every compiled function) ...")
        try:
            warm_up(explainer)
        except Exception as exc:  # a bundle that loads but cannot run: one line, no traceback
            if args.verbose:
                raise
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            print(f"error: the model bundle {args.bundle} loaded but failed its first run: "
                  f"{type(exc).__name__}: {reason}", file=sys.stderr)
            return 2

    max_bytes = int(args.max_upload_mb * 1024 * 1024)
    app = create_app({"MAX_CONTENT_LENGTH": max_bytes, "QUEUE_SIZE": args.queue_size,
                      "BUNDLE": args.bundle}, explainer=explainer)
    host_in_url = f"[{args.host}]" if ":" in args.host else args.host
    url_host = "localhost" if args.host in ("0.0.0.0", "::", "") else host_in_url

    import waitress
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server = waitress.create_server(
            app, host=args.host, port=args.port, threads=max(1, args.threads), ident="captioning",
            # Request and response bodies stay in memory (waitress would spool large ones
            # to temporary files). Bodies up to twice the upload limit reach the app, which
            # answers 413 in JSON; waitress refuses anything larger outright.
            max_request_body_size=2 * max_bytes,
            inbuf_overflow=2 * max_bytes + 1,
            outbuf_overflow=256 * 1024 * 1024,
            # A client that stops sending mid-upload would otherwise keep its connection
            # and buffered body for waitress' default 120 s plus a 30 s sweep: close
            # silent connections after --idle-timeout, swept every few seconds. A
            # request being served is never cut (waitress only closes idle channels).
            channel_timeout=args.idle_timeout,
            cleanup_interval=max(1, min(10, args.idle_timeout // 2)))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("open http://%s:%s in your browser", url_host, server.effective_port)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        log.info("stopped")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
