"""Explained video: every N-th frame is captioned and its caption's Grad-CAM computed;
the caption and the heat map are burnt into every frame (the frames in between reuse
the last result).

``python -m source_code explain-video IN --out OUT.mp4`` writes a file;
``python -m source_code live --camera 0`` shows a camera (or a video file) in a window.

OpenCV (and TensorFlow) are imported only when one of these commands runs, so the
rest of the CLI does not need them.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_path

FOURCC = "mp4v"
DEFAULT_FPS = 25.0          # when a file does not say its frame rate
HEATMAP_ALPHA = 0.45        # weight of the heat map in the blend
WINDOW_TITLE = "explained captions (q or Esc to quit)"
QUIT_KEYS = (ord("q"), ord("Q"), 27)


class VideoError(Exception):
    """A problem the user can fix (a path, a camera, a display): one line, exit code 1."""


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    n = int(value)
    if n < 0:
        import argparse
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


# -- reading --------------------------------------------------------------------
def parse_source(value) -> int | str:
    """A camera index ("0", "1", ...) -> int; anything else is a video file path."""
    text = str(value).strip()
    return int(text) if text.isdigit() else text


@contextmanager
def quiet_opencv():
    """OpenCV's own log silenced for the duration."""
    from cv2.utils import logging as cv_logging
    level = cv_logging.getLogLevel()
    cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv_logging.setLogLevel(level)


def open_capture(source: int | str):
    """An opened cv2.VideoCapture for a camera index or a video file."""
    import cv2
    if isinstance(source, str):
        path = Path(source)
        if not path.exists():
            raise VideoError(f"cannot read video {source}: no such file")
        if path.is_dir():
            raise VideoError(f"cannot read video {source}: it is a folder")
        if not os.access(path, os.R_OK):
            raise VideoError(f"cannot read video {source}: permission denied")
    with quiet_opencv():   # a missing camera or a bad file: our one line, not OpenCV's warnings
        capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if isinstance(source, int) else f"video {source}"
        raise VideoError(f"cannot open {what}"
                         + ("" if isinstance(source, int) else ": OpenCV cannot decode it"))
    return capture


def first_frame(capture, source) -> np.ndarray:
    """The first BGR frame, or a VideoError for a source that yields none."""
    with quiet_opencv():
        ok, frame = capture.read()
    if not ok or frame is None:
        capture.release()
        what = f"camera {source}" if isinstance(source, int) else f"video {source}"
        raise VideoError(f"cannot read {what}: no frame could be decoded")
    return frame


def read_frames(capture, first: np.ndarray | None = None):
    """The BGR frames of an opened capture (``first`` if already read), until it ends."""
    if first is not None:
        yield first
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        yield frame


def frame_rate(capture) -> float:
    """The file's frames per second (DEFAULT_FPS when it does not say)."""
    import cv2
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS


def frame_count(capture) -> int | None:
    """The container's frame count (an estimate for some formats), or None if unknown."""
    import cv2
    n = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(n) if n and np.isfinite(n) and n > 0 else None


# -- explaining -----------------------------------------------------------------
@dataclass
class FrameResult:
    """What is drawn on a frame: the caption, the label of the map, the Grad-CAM."""
    caption: str
    label: str
    heatmap: np.ndarray | None          # [h, w] in [0, 1], spanning the whole frame
    _colored: dict = field(default_factory=dict, repr=False)

    def colored(self, width: int, height: int) -> np.ndarray | None:
        """The heat map upsampled (bilinear) to width x height, jet colours, BGR; cached."""
        if self.heatmap is None:
            return None
        if (width, height) not in self._colored:
            self._colored[(width, height)] = colorize(self.heatmap, width, height)
        return self._colored[(width, height)]


def load_explainer(bundle, beam_width: int = 3):
    """An Explainer of the bundle at ``bundle`` (a directory; the CLI resolves names)."""
    from .cli import _load_captioner
    from .explain.pipeline import Explainer
    return Explainer(_load_captioner(bundle), beam_width=beam_width)


def ready_explainer(explainer):
    """``explainer``, or what it makes when it is a function (called once the input and
    output are known good, so a bad path fails before the model loads)."""
    return explainer() if callable(explainer) else explainer


def pick_heatmap(gradcam: dict, word: int | None, words: list) -> tuple[np.ndarray, str]:
    """The caption's Grad-CAM, or word ``word``'s when asked for and the caption has it."""
    if word is not None and word < len(words):
        maps = gradcam.get("words") or []
        if word < len(maps) and maps[word] and maps[word].get("heatmap") is not None:
            return np.asarray(maps[word]["heatmap"], np.float32), f"Grad-CAM: '{words[word]}'"
    return np.asarray(gradcam["caption"]["heatmap"], np.float32), "Grad-CAM: caption"


def explain_frame(explainer, bgr: np.ndarray, word: int | None = None) -> FrameResult:
    """Caption one BGR frame and take its caption's Grad-CAM (word ``word``'s with --word)."""
    import cv2
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    res = explainer.explain(rgb, methods="gradcam", adversarial=False)
    caption = res["caption"]
    gradcam = (res.get("explanations") or {}).get("gradcam")
    if not gradcam:   # an empty caption has nothing to explain
        return FrameResult(caption or "(no caption)", "", None)
    words = caption.split()
    heatmap, label = pick_heatmap(gradcam, word, words)
    return FrameResult(caption, label, heatmap)


def explained_frames(frames, explainer, every: int = 1, word: int | None = None):
    """(frame, result, explained) for each frame: every ``every``-th frame is explained,
    the ones in between reuse the last result."""
    result = None
    for i, frame in enumerate(frames):
        fresh = i % every == 0 or result is None
        if fresh:
            result = explain_frame(explainer, frame, word)
        yield frame, result, fresh


# -- drawing --------------------------------------------------------------------
def colorize(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """A [h, w] map in [0, 1] -> a width x height BGR jet image (bilinear upsampling)."""
    import cv2
    m = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    up = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(np.clip(up * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def blend_heatmap(bgr: np.ndarray, colored: np.ndarray, alpha: float = HEATMAP_ALPHA) -> np.ndarray:
    import cv2
    return cv2.addWeighted(bgr, 1.0 - alpha, colored, alpha, 0.0)


def _font_scale(width: int) -> float:
    return float(np.clip(width / 900.0, 0.3, 1.2))


def wrap_text(text: str, width: int, scale: float, thickness: int = 1) -> list[str]:
    """Split ``text`` into lines that fit ``width`` pixels in OpenCV's Hershey font."""
    import cv2
    lines, line = [], ""
    for w in text.split():
        candidate = f"{line} {w}".strip()
        (text_width, _), _ = cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        if line and text_width > width:
            lines.append(line)
            line = w
        else:
            line = candidate
    return lines + [line] if line else lines


def draw_text_block(bgr: np.ndarray, lines: list[str], bottom: bool = True) -> np.ndarray:
    """White text on a dark translucent band, at the bottom (or top) of the frame, in place."""
    import cv2
    h, w = bgr.shape[:2]
    scale = _font_scale(w)
    thickness = 1 if scale < 0.8 else 2
    margin = max(2, int(round(6 * scale)))
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    step = th + base + margin
    band = min(h, step * len(lines) + margin)
    y0 = h - band if bottom else 0
    region = bgr[y0: y0 + band]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = y0 + margin + th + i * step
        cv2.putText(bgr, line, (margin, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return bgr


def _ascii(text: str) -> str:   # the Hershey fonts draw ASCII only
    return text.encode("ascii", "replace").decode()


def draw_result(bgr: np.ndarray, result: FrameResult, fps: float | None = None) -> np.ndarray:
    """A new frame: the heat map blended over ``bgr``, the caption (and the map's label)
    at the bottom, the frame rate (when given) at the top."""
    h, w = bgr.shape[:2]
    colored = result.colored(w, h)
    out = blend_heatmap(bgr, colored) if colored is not None else bgr.copy()
    scale = _font_scale(w)
    lines = wrap_text(_ascii(result.caption), w - 12, scale)
    if result.label:
        lines.append(_ascii(result.label))
    draw_text_block(out, lines, bottom=True)
    if fps is not None:
        draw_text_block(out, [f"{fps:.1f} fps"], bottom=False)
    return out


# -- writing --------------------------------------------------------------------
def open_writer(path: Path, fps: float, width: int, height: int, shown_as: Path | None = None):
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
    if not writer.isOpened():
        writer.release()
        raise VideoError(f"cannot write {shown_as or path}: OpenCV cannot write an {FOURCC} video "
                         f"with the extension {path.suffix or '(none)'!r}; use .mp4")
    return writer


def check_output(out: Path) -> None:
    if out.is_dir():
        raise VideoError(f"cannot write {out}: it is a folder; give a file name such as out.mp4")
    if not out.parent.is_dir():
        raise VideoError(f"cannot write {out}: the folder {out.parent} does not exist")


def explain_video(source: str, out, explainer, every: int = 1, word: int | None = None,
                  progress: bool = True) -> dict:
    """Write ``source`` with captions and Grad-CAM burnt in to ``out``, all or nothing: a
    temporary file in the same folder, renamed when complete. ``explainer``: an Explainer,
    or a function that makes one (see ready_explainer)."""
    from tqdm import tqdm
    out = Path(out)
    check_output(out)
    capture = open_capture(source)
    try:
        first = first_frame(capture, source)
        height, width = first.shape[:2]
        fps, total = frame_rate(capture), frame_count(capture)
        try:
            with atomic_path(out) as tmp:     # renamed over ``out`` only when complete
                writer = open_writer(tmp, fps, width, height, shown_as=out)
                try:
                    explainer = ready_explainer(explainer)
                    frames = explained = 0
                    t0 = time.perf_counter()
                    with tqdm(total=total, desc="explaining video", unit="frame",
                              disable=not progress) as bar:
                        for frame, result, fresh in explained_frames(
                                read_frames(capture, first), explainer, every, word):
                            if frame.shape[:2] != (height, width):   # a stream that changes size
                                frame = _resize(frame, width, height)
                            writer.write(draw_result(frame, result))
                            frames += 1
                            explained += fresh
                            bar.update(1)
                    seconds = time.perf_counter() - t0
                finally:
                    writer.release()
                if tmp.stat().st_size == 0:
                    raise VideoError(f"cannot write {out}: OpenCV wrote nothing")
        except OSError as exc:            # the folder refuses files, the disk is full...
            raise VideoError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        capture.release()
    return {"frames": frames, "explained": explained, "seconds": seconds,
            "width": width, "height": height, "fps": fps}


def _resize(frame, width, height):
    import cv2
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)


# -- live -----------------------------------------------------------------------
def check_display() -> None:
    """OpenCV's Qt window aborts the process without an X display: say so first."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise VideoError("no display to open a window on ($DISPLAY is not set): "
                         "run with --no-window, or from a desktop session")


class FrameRate:
    """Frames per second, smoothed (exponential moving average of frame intervals)."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing, self.interval, self.last = smoothing, None, None

    def tick(self) -> float | None:
        now = time.perf_counter()
        if self.last is not None:
            dt = now - self.last
            self.interval = dt if self.interval is None else (
                self.smoothing * self.interval + (1 - self.smoothing) * dt)
        self.last = now
        return 1.0 / self.interval if self.interval else None


class WindowWatch:
    """Whether the user closed the window. A backend that cannot tell (-1 from the
    start) is never taken for a closed window: only visible, then not."""

    def __init__(self, title: str):
        self.title, self.seen = title, False

    def closed(self) -> bool:
        import cv2
        try:
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            visible = False
        self.seen |= visible
        return self.seen and not visible


def run_live(source, explainer, every: int = 1, word: int | None = None,
             max_frames: int | None = None, window: bool = True) -> dict:
    """Show a camera (or video file) with captions, Grad-CAM and frames per second until
    q/Esc, the window is closed, the source ends, or ``max_frames`` frames. ``explainer``:
    an Explainer, or a function that makes one (see ready_explainer)."""
    import cv2
    if window:
        check_display()
    capture = open_capture(source)
    try:
        first = first_frame(capture, source)
        explainer = ready_explainer(explainer)
        frames = explained = 0
        rate = FrameRate()
        t0 = time.perf_counter()
        if window:
            cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
            watch = WindowWatch(WINDOW_TITLE)
        for frame, result, fresh in explained_frames(read_frames(capture, first), explainer,
                                                     every, word):
            shown = draw_result(frame, result, fps=rate.tick())   # None on the first frame
            frames += 1
            explained += fresh
            if window:
                cv2.imshow(WINDOW_TITLE, shown)
                if (cv2.waitKey(1) & 0xFF) in QUIT_KEYS or watch.closed():
                    break
            if max_frames is not None and frames >= max_frames:
                break
    finally:
        capture.release()
        if window:
            cv2.destroyAllWindows()
    seconds = time.perf_counter() - t0
    return {"frames": frames, "explained": explained, "seconds": seconds,
            "fps": frames / seconds if seconds > 0 else 0.0}


# -- commands (registered in cli.py) ----------------------------------------------
def _fail(exc: VideoError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _explainer_of(args):
    return lambda: load_explainer(args.bundle, beam_width=args.beam)


def cmd_explain_video(args) -> int:
    try:
        stats = explain_video(args.input, args.out, _explainer_of(args), every=args.every,
                              word=args.word, progress=not args.quiet)
    except VideoError as exc:
        return _fail(exc)
    print(f"wrote {args.out}: {stats['frames']} frames ({stats['width']}x{stats['height']}, "
          f"{stats['fps']:.1f} fps), {stats['explained']} explained, "
          f"{stats['frames'] / max(stats['seconds'], 1e-9):.1f} frames/s")
    return 0


def cmd_live(args) -> int:
    try:
        stats = run_live(parse_source(args.camera), _explainer_of(args), every=args.every,
                         word=args.word, max_frames=args.frames, window=not args.no_window)
    except VideoError as exc:
        return _fail(exc)
    print(f"{stats['frames']} frames, {stats['explained']} explained, "
          f"{stats['fps']:.1f} frames/s")
    return 0
