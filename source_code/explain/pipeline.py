"""Caption an image and explain the caption: the one entry point the web app and CLI use.

Data flows one way: frame -> pixels -> feature map A (one backbone pass) ->
caption -> explanations (Grad-CAM from A through the decoder; saliency and ACE
through the backbone) -> JSON-ready dicts with heatmaps and overlays. When the
caption's pixel gradient is needed (saliency, the adversarial check), the pass
that captions also backpropagates, so the backbone runs forward once. Nothing
here knows about HTTP.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import tensorflow as tf

from . import gradcam as gradcam_lib
from . import saliency as saliency_lib
from .maps import json_grid
from .render import display_frame, overlay_url_later, resolve
from .target import caption_target, scores_and_attention

METHODS = ("gradcam", "saliency", "ace")
SALIENCY_METHODS = ("vanilla", "smoothgrad", "integrated_gradients")
ATTENTION_NOTE = ("attention weights: where the decoder looked while writing the word; "
                  "not an attribution of the word to pixels")


class ExplainError(ValueError):
    """A request the explainer cannot serve (bad method name, word index...)."""


def parse_methods(value) -> list[str]:
    if value is None or value == "":
        return list(METHODS)
    items = [m.strip().lower() for m in (value.split(",") if isinstance(value, str) else value)]
    items = [m for m in items if m]
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise ExplainError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(items)) or list(METHODS)


def parse_word_indices(value, n_words: int) -> list[int]:
    """'all', '' / None (none), or a comma list of indices into the caption's words."""
    if value is None or str(value).strip() == "":
        return []
    if str(value).strip().lower() == "all":
        return list(range(n_words))
    out = []
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            i = int(part)
        except ValueError:
            raise ExplainError(f"word index {part!r} is not an integer") from None
        if not 0 <= i < n_words:
            raise ExplainError(f"word index {i} is out of range: the caption has {n_words} words")
        out.append(i)
    return sorted(set(out))


class _Timer:
    def __init__(self):
        self.ms = {}

    @contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        yield
        self.ms[name] = round(self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - t0), 1)


class Explainer:
    def __init__(self, captioner, beam_width: int = 3, concept_bank="auto"):
        """concept_bank: a ConceptBank, None, or "auto" (the bundle's own bank, if it has one)."""
        self.captioner = captioner
        self.beam_width = beam_width
        if concept_bank == "auto":
            from .ace import ConceptBank
            bundle = getattr(captioner, "bundle_dir", None)
            concept_bank = ConceptBank.load(bundle) if bundle else None
        self.concept_bank = concept_bank

    # -- helpers ----------------------------------------------------------------
    def _map(self, frame, heatmap, score=None) -> dict:
        out = {"heatmap": json_grid(heatmap), "overlay": overlay_url_later(frame, heatmap)}
        if score is not None:
            out["score"] = round(float(score), 4)
        return out

    def _prepare(self, image, timer):
        with timer("preprocess"):
            pixels = self.captioner.preprocess(image)
        with timer("backbone"):
            feature_map = self.captioner.features(pixels)
        with timer("decode"):
            caption = self.captioner.decode_features(feature_map, self.beam_width)[0]
        return pixels, feature_map, caption

    def _prepare_with_gradient(self, image, timer):
        """As _prepare, plus the caption's pixel gradient, from one backbone forward."""
        from .target import caption_and_gradient
        with timer("preprocess"):
            pixels = self.captioner.preprocess(image)
        with timer("backbone + decode + caption gradient"):
            feature_map, caption, gradient = caption_and_gradient(self.captioner, pixels,
                                                                  self.beam_width)
        return pixels, feature_map, caption, gradient

    # -- public -----------------------------------------------------------------
    def _familiarity(self, feature_map) -> dict:
        familiar, familiarity = self.captioner.familiar(np.asarray(feature_map))[0]
        return {"familiar": familiar, "familiarity": familiarity}

    def caption(self, image) -> dict:
        timer = _Timer()
        _, feature_map, caption = self._prepare(image, timer)
        return {"caption": caption.text, "words": caption.words,
                **self._familiarity(feature_map),
                "logprob": round(caption.logprob, 4), "beam_width": self.beam_width,
                "timings_ms": timer.ms}

    def explain(self, image, methods=None, words=None, saliency_method: str = "vanilla",
                adversarial: bool = True, caption: str | None = None) -> dict:
        """Caption ``image`` and explain the caption (or explain the given ``caption``,
        which must use the model's vocabulary)."""
        methods = parse_methods(methods)
        if saliency_method not in SALIENCY_METHODS:
            raise ExplainError(f"unknown saliency method {saliency_method!r}; "
                               f"choose from {', '.join(SALIENCY_METHODS)}")
        timer = _Timer()
        t_all = time.perf_counter()
        caption_pixel_grad = None   # ds/dx of the whole caption: saliency and the adversarial check
        if caption is None and ("saliency" in methods or ("ace" in methods and adversarial)):
            pixels, feature_map, caption, caption_pixel_grad = self._prepare_with_gradient(
                image, timer)
        else:
            pixels, feature_map, model_caption = self._prepare(image, timer)
            caption = (model_caption if caption is None
                       else self._given_caption(caption, feature_map))
        frame = display_frame(np.asarray(image))
        result = {"caption": caption.text, "words": caption.words,
                  **self._familiarity(feature_map),
                  "logprob": round(caption.logprob, 4), "beam_width": self.beam_width,
                  "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
                  "explanations": {}}
        if not caption.words:
            result["timings_ms"] = timer.ms
            return result
        target = caption_target(self.captioner, caption.words)
        word_idx = parse_word_indices(words, target.n_words)
        ex = result["explanations"]
        feature_grads = None
        if "gradcam" in methods or "ace" in methods:
            with timer("decoder_gradients"):   # ds_t/dA for every word: shared by Grad-CAM and ACE
                feature_grads = gradcam_lib.word_gradients(self.captioner, feature_map, target)
        if "gradcam" in methods:
            with timer("gradcam"):
                cams = gradcam_lib.gradcam(self.captioner, feature_map, target,
                                           gradients=feature_grads)
                ex["gradcam"] = {
                    "caption": self._map(frame, cams["caption"], cams["scores"].sum()),
                    "words": [self._map(frame, m, s) for m, s in zip(cams["words"], cams["scores"])],
                    "layer": "top_activation"}
            if self.captioner.decoder.kind == "attention":
                with timer("attention"):
                    ex["attention"] = self._attention(frame, feature_map, target)
        if "saliency" in methods:
            with timer("saliency"):
                ex["saliency"], caption_pixel_grad = self._saliency(
                    frame, pixels, target, word_idx, saliency_method, caption_pixel_grad)
        if "ace" in methods:
            with timer("ace"):
                ex["ace"] = self._ace(image, frame, pixels, target, feature_map, feature_grads)
            if adversarial:
                with timer("adversarial"):
                    from .adversarial import adversarial_check
                    ex["ace"]["adversarial"] = adversarial_check(self, pixels, caption, frame,
                                                                 gradient=caption_pixel_grad)
        with timer("render"):   # overlays still being drawn on the render pool
            result = resolve(result)
        timer.ms["total"] = round(1000 * (time.perf_counter() - t_all), 1)
        result["timings_ms"] = timer.ms
        return result

    def _given_caption(self, text: str, feature_map):
        """A caption supplied by the user, scored by the model (teacher forcing)."""
        from ..model.captioner import Caption
        from ..text.vocabulary import clean_caption
        words = clean_caption(text)
        try:
            target = caption_target(self.captioner, words)
        except ValueError as exc:
            raise ExplainError(str(exc)) from None
        logps = [float(v) for v in scores_and_attention(self.captioner, feature_map, target)[0].numpy()[0]]
        return Caption(words, list(target.token_ids), logps, sum(logps))

    def _attention(self, frame, feature_map, target) -> dict:
        _, alpha = scores_and_attention(self.captioner, feature_map, target)
        gh, gw = self.captioner.grid
        maps = alpha.numpy()[0, : target.n_words].reshape(-1, gh, gw)
        return {"note": ATTENTION_NOTE, "caption": self._map(frame, maps.mean(0)),
                "words": [self._map(frame, m) for m in maps]}

    def _saliency(self, frame, pixels, target, word_idx, method, caption_grad=None):
        """Returns (JSON section, signed caption gradient or None). ``caption_grad``:
        the caption's ds/dx when already computed."""
        if method == "vanilla":  # the caption (unless given) and all requested words in one batch
            rows = ([] if caption_grad is not None else [None]) + word_idx
            grads = (saliency_lib.pixel_gradients(self.captioner, pixels, target, rows) if rows
                     else tf.zeros((0,) + tuple(pixels.shape[1:])))
            if caption_grad is not None:
                grads = tf.concat([caption_grad, grads], 0)
            maps = saliency_lib.vanilla_from_gradients(grads)
            caption_map, word_maps = maps[0], dict(zip(word_idx, maps[1:]))
            caption_grad = grads[:1]
        else:
            fn = (saliency_lib.smoothgrad if method == "smoothgrad"
                  else saliency_lib.integrated_gradients)
            caption_map = fn(self.captioner, pixels, target, None)
            word_maps = {i: fn(self.captioner, pixels, target, i) for i in word_idx}
        section = {"method": method, "caption": self._map(frame, caption_map),
                   "words": [self._map(frame, word_maps[i]) if i in word_maps else None
                             for i in range(target.n_words)]}
        return section, caption_grad

    def _ace(self, image, frame, pixels, target, feature_map, feature_grads) -> dict:
        from .ace import explain_with_concepts
        return explain_with_concepts(self, image, frame, pixels, target, feature_map,
                                     feature_grads)

    def warm_up(self):
        """Trace every compiled function once, so the first user request is fast."""
        from .target import warm_up_compiled
        warm_up_compiled(self.captioner)
        size = self.captioner.input_size
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        self.explain(frame, methods=list(METHODS), words="0")
        self.caption(frame)
