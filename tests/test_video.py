"""explain-video and live (source_code/video.py): a short clip made here, the tiny
random-weight bundle, through the CLI; the drawing and the window loop with a stand-in
explainer (no model), headless."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from source_code import video
from source_code.cli import main

SIZE, N_FRAMES = 96, 12


def write_clip(path, n=N_FRAMES, size=SIZE, fps=10):
    """A red square moving left to right over a grey background, with a blue disc."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((size, size, 3), 170, np.uint8)
        x = 4 + i * (size - 36) // max(1, n - 1)
        cv2.rectangle(frame, (x, 12), (x + 30, 42), (0, 0, 255), -1)
        cv2.circle(frame, (size // 2, size - 24), 14, (255, 0, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def read_all(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


class StandInExplainer:
    """Answers like Explainer.explain, with only the keys video.py reads: a caption and
    a caption Grad-CAM that is hot in the top-left corner. Counts its calls."""

    def __init__(self, caption="a red square"):
        self.caption, self.calls = caption, 0

    def explain(self, image, methods=None, adversarial=True):
        assert image.dtype == np.uint8 and image.ndim == 3
        assert methods == "gradcam" and adversarial is False
        self.calls += 1
        heat = np.zeros((8, 8))
        heat[:4, :4] = 1.0
        gradcam = {"caption": {"heatmap": heat.tolist()}}
        return {"caption": self.caption,
                "explanations": {"gradcam": gradcam} if self.caption else {}}


# -- through the CLI, with the tiny bundle ----------------------------------------
def test_explain_video_burns_captions_and_gradcam_into_every_frame(clip, tiny_bundle, tmp_path,
                                                                    capsys):
    out = tmp_path / "explained.mp4"
    code = main(["explain-video", str(clip), "--out", str(out), "--bundle", str(tiny_bundle),
                 "--every", "4", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert f"{N_FRAMES} frames" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained.mp4"]   # no temporary left
    frames, originals = read_all(out), read_all(clip)
    assert len(frames) == N_FRAMES
    assert all(f.shape == (SIZE, SIZE, 3) for f in frames)
    for burnt, original in zip(frames, originals):
        diff = np.abs(burnt.astype(int) - original.astype(int))
        assert diff[-10:].mean() > 30        # the caption band, darkened, with text
        assert diff.mean() > 5               # and more than codec noise


def test_a_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path, tiny_bundle, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    for source in (tmp_path / "missing.mp4", garbage):
        out = tmp_path / "out.mp4"
        assert main(["explain-video", str(source), "--out", str(out),
                     "--bundle", str(tiny_bundle), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot ") and str(source) in err and "\n" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.mp4"]


def test_an_unwritable_output_exits_1_and_leaves_no_file(clip, tmp_path, tiny_bundle, capsys):
    for out in (tmp_path / "no-such-folder" / "out.mp4", tmp_path):
        assert main(["explain-video", str(clip), "--out", str(out),
                     "--bundle", str(tiny_bundle), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: cannot write {out}") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_live_headless_on_a_video_file_reports_its_frames(clip, tiny_bundle, capsys):
    assert main(["live", "--camera", str(clip), "--no-window", "--frames", "5",
                 "--every", "2", "--word", "1", "--bundle", str(tiny_bundle)]) == 0
    assert capsys.readouterr().out.strip().startswith("5 frames, 3 explained, ")


def test_live_without_a_display_says_so_instead_of_crashing(clip, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(video.sys, "platform", "linux")
    assert main(["live", "--camera", str(clip)]) == 1
    err = capsys.readouterr().err.strip()
    assert "--no-window" in err and "\n" not in err


# -- the pieces, with a stand-in explainer ------------------------------------------
def test_frames_in_between_reuse_the_last_result():
    ex = StandInExplainer()
    frames = [np.zeros((16, 16, 3), np.uint8)] * 10
    fresh = [f for _, _, f in video.explained_frames(frames, ex, every=4)]
    assert ex.calls == 3 and fresh == [i % 4 == 0 for i in range(10)]


def test_the_heat_map_is_upsampled_over_the_whole_frame_in_jet_colours():
    frame = np.full((120, 80, 3), 128, np.uint8)
    result = video.explain_frame(StandInExplainer(), frame)
    assert result.caption == "a red square" and result.heatmap.shape == (8, 8)
    drawn = video.draw_result(frame, result, fps=12.5)
    assert drawn.shape == frame.shape and not np.array_equal(drawn, frame)
    b, g, r = drawn[30, 10].astype(int)                  # the hot quarter (under no text): red
    assert r > b + 40
    b, g, r = drawn[80, 70].astype(int)                  # cold: blue
    assert b > r + 40
    empty = video.explain_frame(StandInExplainer(caption=""), frame)
    assert empty.heatmap is None and empty.caption == "(no caption)"
    assert video.draw_result(frame, empty).shape == frame.shape


def test_the_window_loop_quits_on_q(clip, monkeypatch):
    """The window code, headless: OpenCV's window calls are stood in for."""
    keys = iter([-1, -1, ord("q")])
    shown = []
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda title, frame: shown.append(frame.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    stats = video.run_live(str(clip), StandInExplainer, every=2)   # a class makes the explainer
    assert stats["frames"] == 3 and stats["explained"] == 2
    assert shown == [(SIZE, SIZE, 3)] * 3
