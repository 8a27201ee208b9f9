"""Load test: `python app.py` under concurrent clients, bounded in time and in requests.

    python bench/load.py                                   # 8 clients for 180 s, default bundle
    python bench/load.py --clients 8 --duration 180 --json load.json
    python bench/load.py --bundle models/other --duration 60 --queue-size 2

The server is started on a free loopback port (never anything else) and must answer
/healthz first. Then each client thread sends one request after another until the
time or the request budget is spent, mixing /api/caption and /api/explain (several
method sets) on synthetic scenes of several sizes and formats with a share of bad
inputs, each of which must be refused with its own 4xx. Every request has a timeout.
A 503 must carry Retry-After, and the client then waits that long, as a browser
would. The server's resident memory (RSS) is sampled every few seconds.

Printed: throughput, p50/p95/p99 latency per request kind, answers by status and
RSS over time. The exit status is 1 when an expectation fails (``problems``): a 5xx
other than 503, a 503 without Retry-After, a request without an answer within the
timeout, an answer other than the expected one, RSS growing after warm-up, or a
server that is not healthy at the end. tests/test_reliability_load.py runs a short
version of the same.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"


# -- the server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env() -> dict:
    """The environment of a server started here: the user's CAPTION_* settings removed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("CAPTION_HOST", "CAPTION_PORT", "CAPTION_BUNDLE"):
        env.pop(name, None)
    return env


def start_server(bundle, port: int, log_path, *extra: str) -> subprocess.Popen:
    """`python app.py` on HOST:port, its output in ``log_path``; ``bundle`` None serves
    the default bundle (no --bundle flag)."""
    bundle_args = ["--bundle", str(bundle)] if bundle is not None else []
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", HOST,
                                 "--port", str(port), *bundle_args, *extra],
                                cwd=REPO, env=server_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_until_healthy(port: int, proc: subprocess.Popen, timeout: float = 180) -> float:
    """Seconds until /healthz answered 200; AssertionError if the server died or was late."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if request(port, "GET", "/healthz", timeout=2).status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"/healthz did not answer 200 within {timeout:.0f} s")


@contextmanager
def served(bundle, log_path, *extra: str, timeout: float = 300):
    """A running `python app.py` for the block: yields {"port", "base", "proc", "health"
    (the /healthz JSON)}, and stops the server afterwards, whatever happens."""
    port = free_port()
    proc = start_server(bundle, port, log_path, *extra)
    try:
        try:
            wait_until_healthy(port, proc, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n" + Path(log_path).read_text(errors="replace")[-3000:])
        yield {"port": port, "base": f"http://{HOST}:{port}", "proc": proc,
               "health": request(port, "GET", "/healthz").json()}
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- HTTP ---------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form; files: name -> (filename, bytes)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                  f"{value}\r\n".encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None,
            content_type: str | None = None, timeout: float = 60) -> Answer:
    """One request on a fresh connection; raises OSError (socket.timeout included)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        return Answer(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


# -- what the clients send ---------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    path: str
    fields: tuple = ()               # (name, value) pairs
    payload: str = "scene"           # scene | not-an-image | truncated | too-large | none
    expect: int = 200


MIX = (
    Kind("caption", 0.45, "/api/caption"),
    Kind("explain gradcam", 0.15, "/api/explain", (("methods", "gradcam"), ("adversarial", "0"))),
    Kind("explain gradcam+saliency", 0.10, "/api/explain",
         (("methods", "gradcam,saliency"), ("words", "0"), ("adversarial", "0"))),
    Kind("explain all methods", 0.10, "/api/explain"),
    Kind("bad: not an image", 0.05, "/api/caption", payload="not-an-image", expect=400),
    Kind("bad: truncated jpeg", 0.05, "/api/explain", payload="truncated", expect=400),
    Kind("bad: unknown method", 0.04, "/api/explain", (("methods", "gradcam,magic"),), expect=400),
    Kind("bad: no image field", 0.04, "/api/caption", (("methods", "gradcam"),), payload="none",
         expect=400),
    Kind("bad: too large", 0.02, "/api/caption", payload="too-large", expect=413),
)


def scene_pool(n: int = 24, seed: int = 0) -> list[tuple[str, bytes]]:
    """(file name, bytes) of synthetic scenes, 160 to 480 px, alternately JPEG and PNG."""
    from PIL import Image

    from source_code.data.synthetic import generate_scene
    pool = []
    for i in range(n):
        size = (160, 240, 320, 480)[i % 4]
        im = Image.fromarray(generate_scene(seed + i, image_size=size).image)
        buf = io.BytesIO()
        fmt = "JPEG" if i % 2 else "PNG"
        im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        pool.append((f"scene{i}.{fmt.lower()}", buf.getvalue()))
    return pool


def bad_payloads(max_upload_bytes: int) -> dict:
    jpeg = scene_pool(2)[1][1]
    return {"not-an-image": ("notes.jpg", b"<html>this is not a picture</html>\n" * 20),
            "truncated": ("cut.jpg", jpeg[: len(jpeg) // 3]),
            "too-large": ("huge.jpg", b"\xff\xd8\xff" + bytes(max_upload_bytes + 1024))}


def build_request(kind: Kind, rng: random.Random, pool, bad) -> tuple[bytes, str]:
    files = {}
    if kind.payload == "scene":
        files["image"] = rng.choice(pool)
    elif kind.payload != "none":
        files["image"] = bad[kind.payload]
    return multipart(dict(kind.fields), files)


def answer_is_right(kind: Kind, answer: Answer) -> bool:
    body = answer.json()
    if answer.status != kind.expect or not isinstance(body, dict):
        return False
    if kind.expect != 200:
        return set(body) == {"error"} and bool(body["error"])
    return "caption" in body and ("explanations" in body if kind.path == "/api/explain" else True)


# -- the run --------------------------------------------------------------------------------------
@dataclass
class Record:
    t: float                 # seconds from the start of the load
    kind: str
    status: int | None       # None: no answer (timeout, reset)
    latency_s: float
    retry_after: str | None = None
    right: bool = False      # the expected status and body shape (503 excepted)
    error: str | None = None


class RssSampler(threading.Thread):
    """Samples the RSS (MB) of one process every ``interval`` seconds into ``samples``."""

    def __init__(self, pid: int, interval: float, t0: float):
        super().__init__(name="rss-sampler", daemon=True)
        import psutil
        self.process, self.interval, self.t0 = psutil.Process(pid), interval, t0
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def sample(self):
        try:
            rss = self.process.memory_info().rss / 2**20
        except Exception:       # the process is gone: the health check reports it
            return
        self.samples.append((round(time.monotonic() - self.t0, 1), round(rss, 1)))

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def client_loop(port, stop_at, budget, records, lock, rng, pool, bad, timeout, t0):
    kinds, weights = MIX, [k.weight for k in MIX]
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        kind = rng.choices(kinds, weights)[0]
        body, ctype = build_request(kind, rng, pool, bad)
        start = time.monotonic()
        try:
            answer = request(port, "POST", kind.path, body, ctype, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            rec = Record(start - t0, kind.name, None, time.monotonic() - start,
                         error=type(exc).__name__)
            with lock:
                records.append(rec)
            continue
        rec = Record(start - t0, kind.name, answer.status, time.monotonic() - start,
                     answer.headers.get("retry-after"), answer_is_right(kind, answer))
        with lock:
            records.append(rec)
        if answer.status == 503:            # back off as told, as a browser would
            try:
                wait = float(rec.retry_after or 1)
            except ValueError:
                wait = 1.0
            time.sleep(max(0.0, min(wait, stop_at - time.monotonic())))


def run_load(port: int, pid: int, clients: int, duration: float, max_requests: int,
             timeout: float, rss_interval: float, seed: int = 0,
             max_upload_bytes: int = 10 * 1024 * 1024) -> dict:
    """Drive a running server; returns the raw records and RSS samples (see ``summarise``)."""
    pool, bad = scene_pool(seed=seed), bad_payloads(max_upload_bytes)
    records, lock, budget = [], threading.Lock(), [max_requests]
    t0 = time.monotonic()
    sampler = RssSampler(pid, rss_interval, t0)
    sampler.start()
    stop_at = t0 + duration
    threads = [threading.Thread(target=client_loop, name=f"client-{i}", daemon=True,
                                args=(port, stop_at, budget, records, lock,
                                      random.Random(seed * 1000 + i), pool, bad, timeout, t0))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 30)
    elapsed = time.monotonic() - t0
    sampler.stop.set()
    sampler.join(5)
    sampler.sample()
    try:
        healthy = request(port, "GET", "/healthz", timeout=10).status == 200
    except OSError:
        healthy = False
    return {"records": [asdict(r) for r in records], "rss_mb": sampler.samples,
            "elapsed_s": round(elapsed, 1), "healthy_after": healthy,
            "stuck_clients": sum(t.is_alive() for t in threads)}


def percentile(values, q: float) -> float | None:
    if not values:
        return None
    import numpy as np
    return round(float(np.percentile(values, q)) * 1000, 1)


def latency_row(records) -> dict:
    lat = [r["latency_s"] for r in records if r["status"] is not None]
    statuses = {}
    for r in records:
        key = str(r["status"]) if r["status"] is not None else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
    return {"n": len(records), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99), "statuses": dict(sorted(statuses.items()))}


def summarise(raw: dict, warm_up_s: float) -> dict:
    records = raw["records"]
    answered = [r for r in records if r["status"] is not None]
    by_kind = {k.name: latency_row([r for r in records if r["kind"] == k.name]) for k in MIX}
    ok = [r for r in records if r["status"] == 200]
    rss = raw["rss_mb"]
    after_warm = [mb for t, mb in rss if t >= warm_up_s] or [mb for _, mb in rss]
    return {
        "elapsed_s": raw["elapsed_s"],
        "requests": len(records),
        "throughput_rps": round(len(answered) / raw["elapsed_s"], 2) if raw["elapsed_s"] else 0,
        "ok_rps": round(len(ok) / raw["elapsed_s"], 2) if raw["elapsed_s"] else 0,
        "all": latency_row(records),
        "ok_200": latency_row(ok),
        "by_kind": by_kind,
        "no_answer": [r for r in records if r["status"] is None],
        "server_errors": [r for r in records if r["status"] and r["status"] >= 500
                          and r["status"] != 503],
        "busy_503": sum(r["status"] == 503 for r in records),
        "busy_503_without_retry_after": sum(r["status"] == 503 and not r["retry_after"]
                                            for r in records),
        "wrong_answers": [r for r in records if r["status"] not in (None, 503) and not r["right"]],
        "rss_mb": {"start": rss[0][1] if rss else None,
                   "after_warm_up": after_warm[0] if after_warm else None,
                   "end": rss[-1][1] if rss else None,
                   "max": max(mb for _, mb in rss) if rss else None,
                   "warm_up_s": warm_up_s, "samples": rss},
        "healthy_after": raw["healthy_after"],
        "stuck_clients": raw["stuck_clients"],
    }


def problems(report: dict, rss_growth_limit: float = 0.10) -> list[str]:
    """What broke the expectations (an empty list: all met)."""
    out = []
    if report["server_errors"]:
        statuses = sorted({r["status"] for r in report["server_errors"]})
        out.append(f"{len(report['server_errors'])} answers with 5xx other than 503: {statuses}")
    if report["busy_503_without_retry_after"]:
        out.append(f"{report['busy_503_without_retry_after']} answers 503 without Retry-After")
    if report["no_answer"]:
        errors = sorted({r["error"] for r in report["no_answer"]})
        out.append(f"{len(report['no_answer'])} requests got no answer in time ({', '.join(errors)})")
    if report["wrong_answers"]:
        first = report["wrong_answers"][0]
        out.append(f"{len(report['wrong_answers'])} answers were not the expected ones "
                   f"(first: {first['kind']} -> {first['status']})")
    if report["stuck_clients"]:
        out.append(f"{report['stuck_clients']} client threads did not finish")
    if not report["healthy_after"]:
        out.append("the server was not healthy after the load")
    rss = report["rss_mb"]
    if rss["after_warm_up"] and rss["end"]:
        growth = (rss["end"] - rss["after_warm_up"]) / rss["after_warm_up"]
        if growth > rss_growth_limit:
            out.append(f"RSS grew {100 * growth:.0f} % after warm-up "
                       f"({rss['after_warm_up']:.0f} -> {rss['end']:.0f} MB)")
    if report["requests"] == 0:
        out.append("no request was sent")
    return out


def load_test(bundle=None, clients: int = 8, duration: float = 180, max_requests: int = 100_000,
              timeout: float = 60, queue_size: int = 4, threads: int = 8, rss_interval: float = 2,
              warm_up_s: float | None = None, seed: int = 0, log_path=None) -> dict:
    """Start `python app.py`, run the load, stop the server: the summarised report."""
    import tempfile
    bundle = Path(bundle or REPO / "models" / "shapes")
    port = free_port()
    log_path = Path(log_path or tempfile.mkstemp(prefix="load-server-", suffix=".log")[1])
    proc = start_server(bundle, port, log_path, "--threads", str(threads),
                        "--queue-size", str(queue_size))
    try:
        startup_s = wait_until_healthy(port, proc)
        raw = run_load(port, proc.pid, clients, duration, max_requests, timeout, rss_interval, seed)
    finally:
        exit_code = stop_server(proc)
    report = summarise(raw, duration / 3 if warm_up_s is None else warm_up_s)
    report["setup"] = {"bundle": str(bundle), "clients": clients, "duration_s": duration,
                       "max_requests": max_requests, "timeout_s": timeout,
                       "queue_size": queue_size, "threads": threads,
                       "startup_s": round(startup_s, 1), "server_exit_code": exit_code,
                       "server_log": str(log_path), "machine": machine(),
                       "mix": {k.name: k.weight for k in MIX}}
    report["problems"] = problems(report)
    return report


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


# -- output -----------------------------------------------------------------------------------
def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_report(r: dict) -> str:
    s = r["setup"]
    lines = [f"load test: {s['clients']} clients for {r['elapsed_s']:.0f} s against python app.py "
             f"({Path(s['bundle']).name} bundle, queue {s['queue_size']}, {s['threads']} threads, "
             f"timeout {s['timeout_s']:.0f} s; {s['machine']}; started in {s['startup_s']:.0f} s)",
             f"requests {r['requests']}, {r['throughput_rps']:.2f}/s answered, "
             f"{r['ok_rps']:.2f}/s 200 OK, no answer {len(r['no_answer'])}, "
             f"503 {r['busy_503']} ({r['busy_503'] - r['busy_503_without_retry_after']} with Retry-After)",
             "",
             f"{'request':<26}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses"]
    rows = list(r["by_kind"].items()) + [("all 200 OK", r["ok_200"]), ("all", r["all"])]
    for name, row in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in row["statuses"].items())
        lines.append(f"{name:<26}{row['n']:>6}{_ms(row['p50_ms']):>9}{_ms(row['p95_ms']):>9}"
                     f"{_ms(row['p99_ms']):>9}  {statuses}")
    rss = r["rss_mb"]
    if rss["samples"]:
        step = max(1, len(rss["samples"]) // 10)
        series = ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in rss["samples"][::step])
        lines += ["", f"RSS MB: start {rss['start']:.0f}, after warm-up ({rss['warm_up_s']:.0f} s) "
                      f"{rss['after_warm_up']:.0f}, end {rss['end']:.0f}, max {rss['max']:.0f}",
                  f"RSS over time: {series}"]
    lines += ["", "expectations: " + ("all met" if not r["problems"] else
                                      "FAILED\n  " + "\n  ".join(r["problems"]))]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="model bundle (default: models/shapes)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--duration", type=float, default=180, help="seconds of load (default: 180)")
    p.add_argument("--max-requests", type=int, default=100_000, help="request budget (default: 100000)")
    p.add_argument("--timeout", type=float, default=60, help="seconds a request may take (default: 60)")
    p.add_argument("--queue-size", type=int, default=4, help="the server's --queue-size (default: 4)")
    p.add_argument("--threads", type=int, default=8, help="the server's --threads (default: 8)")
    p.add_argument("--rss-interval", type=float, default=2, help="seconds between RSS samples")
    p.add_argument("--warm-up", type=float, default=None,
                   help="seconds before RSS counts as warm (default: a third of --duration)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the full report here")
    args = p.parse_args(argv)
    report = load_test(args.bundle, args.clients, args.duration, args.max_requests, args.timeout,
                       args.queue_size, args.threads, args.rss_interval, args.warm_up, args.seed)
    print(format_report(report))
    if args.json:
        from source_code.files import write_json
        write_json(args.json, report)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
