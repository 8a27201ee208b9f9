"""Caption an image and explain the caption: the one entry point the web app and CLI use.

Data flows one way: frame -> pixels -> feature map A (one backbone pass) ->
caption -> explanations (the methods of ``methods.REGISTRY``, run on one shared
context) -> JSON-ready dicts with heatmaps (PNG overlays only when asked). When the
caption's pixel gradient is needed (saliency, the adversarial check), the pass
that captions also backpropagates, so the backbone runs forward once. Nothing
here knows about HTTP.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
from .methods import (CHANNELS, FULL, REGISTRY, Context, ExplainError, parse_methods,
                      parse_options, special_ids)
from .render import display_frame, resolve
from .target import caption_target, scores_and_attention

__all__ = ["Explainer", "ExplainError", "parse_methods", "parse_word_indices"]


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


def one_blas_thread() -> None:
    """Numpy's BLAS (OpenBLAS) to one thread, for the whole process. Its worker threads
    spin for the cores that TensorFlow's thread pools hold: between TensorFlow calls a
    [7, 640] x [640, 100] product (a caption's Grad-CAM maps) took 6 ms instead of
    15 us. What numpy multiplies while explaining is small; TensorFlow keeps the cores."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")


class Explainer:
    def __init__(self, captioner, beam_width: int = 3, concept_bank="auto"):
        """concept_bank: a ConceptBank, None, or "auto" (the bundle's own bank, if it has
        one). Sets numpy's BLAS to one thread (``one_blas_thread``)."""
        one_blas_thread()
        self.captioner = captioner
        self.beam_width = beam_width
        if concept_bank == "auto":
            from .ace import ConceptBank
            bundle = getattr(captioner, "bundle_dir", None)
            concept_bank = ConceptBank.load(bundle) if bundle else None
        self.concept_bank = concept_bank

    # -- helpers ----------------------------------------------------------------
    def _prepare(self, image, timer):
        with timer("preprocess"):
            pixels = self.captioner.preprocess(image)
        with timer("backbone"):
            feature_map = self.captioner.features(pixels)
        with timer("decode"):
            parts = self.captioner.cell_parts(feature_map)
            caption = self.captioner.decode_parts(parts, self.beam_width)[0]
        return pixels, feature_map, caption, parts

    def _prepare_with_gradient(self, image, timer):
        """As _prepare, plus the caption's pixel gradient, from one backbone forward.
        Returns (pixels, feature map, caption, gradient, cell_parts)."""
        from .target import caption_and_gradient
        with timer("preprocess"):
            pixels = self.captioner.preprocess(image)
        with timer("backbone + decode + caption gradient"):
            feature_map, caption, gradient, parts = caption_and_gradient(
                self.captioner, pixels, self.beam_width)
        return pixels, feature_map, caption, gradient, parts

    def _familiarity(self, feature_map, parts, timer) -> dict:
        with timer("familiarity"):
            familiar, familiarity = self.captioner.familiar(np.asarray(feature_map), parts)[0]
        return {"familiar": familiar, "familiarity": familiarity}

    # -- public -----------------------------------------------------------------
    def caption(self, image) -> dict:
        timer = _Timer()
        _, feature_map, caption, parts = self._prepare(image, timer)
        return {"caption": caption.text, "words": caption.words,
                **self._familiarity(feature_map, parts, timer),
                "logprob": round(caption.logprob, 4), "beam_width": self.beam_width,
                "timings_ms": timer.ms}

    def explain(self, image, methods=None, words=None, caption: str | None = None,
                overlays: bool = False, faithfulness: bool = False, **options) -> dict:
        """Caption ``image`` (or score the given ``caption``, which must use the model's
        vocabulary) and explain it with ``methods`` (names from the registry; None: the
        default set). ``options``: the registry's method options (saliency_method,
        adversarial, attack, contrast...). ``overlays``: PNG overlays beside heatmaps.
        ``faithfulness``: a trust score (deletion curve against random maps) on the maps
        of the words asked for, or on the caption's maps."""
        methods = parse_methods(methods, self.captioner)
        options = parse_options(options)
        timer = _Timer()
        t_all = time.perf_counter()
        wants_pixel_gradient = any(REGISTRY[m].needs_pixel_gradient(options) for m in methods)
        caption_pixel_grad = None   # ds/dx of the whole caption, when the caption pass made it
        if caption is None and wants_pixel_gradient:
            pixels, feature_map, caption, caption_pixel_grad, parts = self._prepare_with_gradient(
                image, timer)
        else:
            pixels, feature_map, model_caption, parts = self._prepare(image, timer)
            caption = (model_caption if caption is None
                       else self._given_caption(caption, feature_map))
        result = {"caption": caption.text, "words": caption.words,
                  **self._familiarity(feature_map, parts, timer),
                  "logprob": round(caption.logprob, 4), "beam_width": self.beam_width,
                  "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
                  "explanations": {}}
        if not caption.words:
            result["timings_ms"] = timer.ms
            return result
        target = caption_target(self.captioner, caption.words)
        ctx = Context(self.captioner, self, image, display_frame(np.asarray(image)), pixels,
                      feature_map, caption, target, parse_word_indices(words, target.n_words),
                      options, overlays, caption_pixel_grad, parts)
        levels = {REGISTRY[m].wants_gradients(options) for m in methods}
        if levels & {FULL, CHANNELS}:
            with timer("decoder_gradients"):   # every word's, computed once, shared by methods
                ctx.teacher if FULL in levels else ctx.channels  # noqa: B018
        for name in methods:
            with timer(name):
                result["explanations"][name] = REGISTRY[name].run(ctx)
        result["word_scores"] = self._word_scores(ctx)
        if faithfulness:
            from .trust import add_trust_scores
            with timer("faithfulness"):
                add_trust_scores(ctx, result["explanations"])
        with timer("render"):   # overlays still being drawn on the render pool
            result = resolve(result)
        timer.ms["total"] = round(1000 * (time.perf_counter() - t_all), 1)
        result["timings_ms"] = timer.ms
        return result

    def _word_scores(self, ctx: Context) -> list[dict]:
        """Per word: its probability under the model, whether it was the model's most
        likely word at that step, and the step's likeliest other words."""
        vocab = self.captioner.vocab
        done = ctx.scored()
        if done is not None:
            scores, top_logp, top_ids = done.scores, done.top_logp, done.top_ids
        else:
            scores, _, top_logp, top_ids = (t.numpy()[0] for t in scores_and_attention(
                self.captioner, ctx.feature_map, ctx.target, with_top=True))
        special = special_ids(vocab)
        out = []
        for t, word in enumerate(ctx.target.words):
            word_id = ctx.target.token_ids[t]
            best = next((int(i) for i in top_ids[t] if int(i) not in special), word_id)
            others = [{"word": vocab.word(int(i)), "p": round(float(np.exp(lp)), 4)}
                      for i, lp in zip(top_ids[t], top_logp[t])
                      if int(i) not in special and int(i) != word_id][:3]
            out.append({"word": word, "logprob": round(float(scores[t]), 4),
                        "p": round(float(np.exp(scores[t])), 4),
                        "model_choice": best == word_id, "alternatives": others})
        return out

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

    def warm_up(self):
        """Trace every compiled function once, so the first user request is fast."""
        from .target import warm_up_compiled
        warm_up_compiled(self.captioner)
        size = self.captioner.input_size
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        self.explain(frame, words="0")     # the default methods: every compiled function
        self.caption(frame)
