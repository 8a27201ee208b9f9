"""The explanation methods, in one registry.

A method is a function of a shared ``Context`` (captioner, frame, pixels,
feature map, the caption's target, and the gradients several methods share,
computed once on first use) that returns the method's JSON section::

    {"caption": MAP, "words": [MAP or None per word], ...method's own keys}

where a MAP is ``render.map_json``'s dict. The pipeline loops over the
requested methods; the API's validation, the CLI's ``--methods``,
``GET /api/methods`` and the page's panels all read this registry, so a new
method is one function and one ``@method(...)`` line. A CAM variant only
chooses its channel weights from the activations A and gradients G::

    @method("layercam_lite", "LayerCAM-lite", "positive gradients only", default=False)
    def layercam_lite(ctx):
        return ctx.cam_section(lambda A, G: tf.reduce_mean(tf.nn.relu(G), axis=[1, 2]))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import tensorflow as tf

from . import gradcam as gradcam_lib
from . import saliency as saliency_lib
from .render import map_json
from .target import (CaptionTarget, TeacherPass, channel_pass, score_gradients,
                     scores_and_attention, teacher_pass)


class ExplainError(ValueError):
    """A request the explainer cannot serve (bad method name, option, word index...)."""


# -- declarations -----------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """A request option of a method: ``kind`` is "choice", "bool" or "text"."""
    name: str
    kind: str
    default: object
    help: str
    choices: tuple = ()

    def parse(self, raw):
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return self.default
        if self.kind == "bool":
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ExplainError(f"{self.name} must be 0 or 1, not {str(raw)[:40]!r}")
        value = str(raw).strip()
        if self.kind == "choice":
            value = value.lower()
            if value not in self.choices:
                raise ExplainError(f"unknown {self.name.replace('_', ' ')} {value[:40]!r}; choose from "
                                   f"{', '.join(self.choices)}")
        return value[:500]

    def describe(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "default": self.default, "help": self.help}
        if self.choices:
            out["choices"] = list(self.choices)
        return out


FULL, CHANNELS = "full", "channels"    # the decoder gradients a method reads (see Context)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    hint: str
    run: Callable[["Context"], dict]
    default: bool = True                   # part of a request that names no methods
    options: tuple[Option, ...] = ()
    # the decoder gradients it reads: FULL (every word's ds_t/dA, ctx.teacher), CHANNELS
    # (their sums over cells, ctx.channels), None, or a function of the options
    needs_gradients: str | None | Callable[[dict], str | None] = None
    needs_pixel_gradient: Callable[[dict], bool] = lambda options: False
    unavailable: Callable[[object], str | None] = lambda captioner: None
    note: str = ""

    def wants_gradients(self, options: dict) -> str | None:
        needs = self.needs_gradients
        return needs(options) if callable(needs) else needs

    def describe(self, captioner=None) -> dict:
        why = self.unavailable(captioner) if captioner is not None else None
        out = {"name": self.name, "label": self.label, "hint": self.hint,
               "default": self.default, "available": why is None,
               "options": [o.describe() for o in self.options]}
        if why:
            out["unavailable_because"] = why
        if self.note:
            out["note"] = self.note
        return out


REGISTRY: dict[str, Method] = {}


def method(name: str, label: str, hint: str, **details):
    """Register the decorated ``run(ctx) -> section`` as explanation method ``name``."""
    def register(run):
        if name in REGISTRY:
            raise ValueError(f"explanation method {name!r} is registered twice")
        REGISTRY[name] = Method(name, label, hint, run, **details)
        return run
    return register


# -- the context every method runs on ----------------------------------------------------
@dataclass
class Context:
    captioner: object
    explainer: object
    image: np.ndarray            # the frame as received
    frame: np.ndarray            # the frame scaled for display (overlays, request-time SLIC)
    pixels: tf.Tensor            # the model's input [1, S, S, 3]
    feature_map: tf.Tensor       # A [1, h, w, C]
    caption: object              # model.captioner.Caption
    target: CaptionTarget
    words: list[int]             # word indices asked for where per-word maps are costly
    options: dict
    overlays: bool = False       # PNG overlays as well as heatmaps
    caption_pixel_gradient: tf.Tensor | None = None   # ds/dx, when the caption pass made it
    cell_parts: tuple | None = None   # the decoder's reading of the cells, when the search made it
    _teacher: TeacherPass | None = field(default=None, repr=False)
    _channels: TeacherPass | None = field(default=None, repr=False)

    @property
    def teacher(self) -> TeacherPass:
        """Teacher forcing of the caption with every word's ds_t/dA, computed once."""
        if self._teacher is None:
            self._teacher = teacher_pass(self.captioner, self.feature_map, self.target)
        return self._teacher

    @property
    def channels(self) -> TeacherPass:
        """The same pass with only each word's gradient summed over the cells (what
        Grad-CAM reads): from the full pass when it ran, else the cheaper channel pass."""
        if self._teacher is not None:
            return self._teacher
        if self._channels is None:
            self._channels = channel_pass(self.captioner, self.feature_map, self.target,
                                          parts=self.cell_parts)
        return self._channels

    def scored(self) -> TeacherPass | None:
        """A teacher pass already run (its scores, attention and top words), if any."""
        return self._teacher if self._teacher is not None else self._channels

    def attention(self) -> np.ndarray:
        """[T, h * w] attention weights, from the teacher pass when it ran, else a forward."""
        done = self.scored()
        if done is not None:
            return done.attention
        return scores_and_attention(self.captioner, self.feature_map, self.target)[1].numpy()[0]

    def pixel_gradient_of_caption(self) -> tf.Tensor:
        if self.caption_pixel_gradient is None:
            self.caption_pixel_gradient = saliency_lib.pixel_gradients(
                self.captioner, self.pixels, self.target, [None])
        return self.caption_pixel_gradient

    # -- building sections ------------------------------------------------------------
    def map(self, heatmap, **extra) -> dict:
        return map_json(heatmap, self.frame if self.overlays else None, **extra)

    def section(self, caption_map, word_maps, caption_extra=None, word_extras=None,
                **keys) -> dict:
        """{"caption": MAP, "words": [MAP or None]}: ``word_maps`` is a list with one
        entry per word or a dict {index: map} (other words None)."""
        n = self.target.n_words
        if isinstance(word_maps, dict):
            word_maps = [word_maps.get(i) for i in range(n)]
        word_extras = word_extras or [{}] * n
        return {"caption": self.map(caption_map, **(caption_extra or {})),
                "words": [None if m is None else self.map(m, **extra)
                          for m, extra in zip(word_maps, word_extras)],
                **keys}

    def cam_section(self, weights=gradcam_lib.gradcam_weights, gradients=None,
                    scores=None, **keys) -> dict:
        """A CAM method's section: maps ReLU(sum_k w_k A_k), w = weights(A, dS/dA), for
        every word and the caption (S = sum_t s_t), from the shared gradients."""
        gradients = self.teacher.gradients if gradients is None else gradients
        scores = self.teacher.scores if scores is None else scores
        words = gradcam_lib.cam_maps(self.feature_map, gradients, weights)
        caption = gradcam_lib.cam_maps(self.feature_map,
                                       tf.reduce_sum(gradients, 0, keepdims=True), weights)[0]
        return self._scored_maps(caption, words, scores, **keys)

    def gradcam_section(self, channel_gradients=None, scores=None, **keys) -> dict:
        """Grad-CAM's section from the gradients' sums over cells (its weights are their
        means), for every word and the caption: what cam_section gives for Grad-CAM."""
        sums = self.channels.channel_gradients if channel_gradients is None else channel_gradients
        scores = self.channels.scores if scores is None else scores
        caption, words = gradcam_lib.caption_and_word_cams(self.feature_map, sums)
        return self._scored_maps(caption, words, scores, **keys)

    def _scored_maps(self, caption_map, word_maps, scores, **keys) -> dict:
        """A CAM section whose maps carry their score: each word's s_t, the caption's sum."""
        scores = np.asarray(scores)
        return self.section(caption_map, list(word_maps), {"score": _round(scores.sum())},
                            [{"score": _round(s)} for s in scores], **keys)

    def pixel_section(self, one_map: Callable, **keys) -> dict:
        """A pixel-attribution section: one_map(None) for the caption, one_map(i) for
        each requested word (the others stay None: each costs backbone passes)."""
        return self.section(one_map(None), {i: one_map(i) for i in self.words}, **keys)


def _round(x, digits: int = 4) -> float:
    return round(float(x), digits)


# -- the methods --------------------------------------------------------------------------
GRADCAM_SCOPE = Option(
    "gradcam_scope", "choice", "words",
    "words: the caption's map and every word's; caption: the caption's map alone, from one "
    "backward pass (the live view's fast path)", ("words", "caption"))


@method("gradcam", "Grad-CAM", "where the model looked", options=(GRADCAM_SCOPE,),
        needs_gradients=lambda options: (CHANNELS if options.get("gradcam_scope", "words")
                                         == "words" else None))
def gradcam(ctx: Context) -> dict:
    if ctx.options.get("gradcam_scope", "words") == "caption" and ctx.scored() is None:
        # one gradient of s = sum_t s_t instead of every word's: the live view's need
        ones = np.ones((1, ctx.target.n_words), np.float32)
        scores, grad = score_gradients(ctx.captioner, ctx.feature_map, ctx.target, ones, False)
        cam = gradcam_lib.cam_maps(ctx.feature_map, grad)[0]
        return ctx.section(cam, [None] * ctx.target.n_words,
                           {"score": _round(scores.numpy().sum())}, layer="top_activation")
    return ctx.gradcam_section(layer="top_activation")


@method("gradcam_pp", "Grad-CAM++", "Grad-CAM weighting each cell's positive gradient",
        default=False, needs_gradients=FULL)
def gradcam_pp(ctx: Context) -> dict:
    return ctx.cam_section(partial(gradcam_lib.gradcam_weights, plus_plus=True),
                           layer="top_activation")


ATTENTION_NOTE = ("attention weights: where the decoder looked while writing the word; "
                  "not an attribution of the word to pixels")


def _needs_attention_decoder(captioner) -> str | None:
    if getattr(getattr(captioner, "decoder", None), "kind", None) != "attention":
        return "this model's decoder has no attention (a merge decoder)"
    return None


@method("attention", "Attention", "where the decoder looked (not an attribution)",
        unavailable=_needs_attention_decoder, note=ATTENTION_NOTE)
def attention(ctx: Context) -> dict:
    gh, gw = ctx.captioner.grid
    maps = ctx.attention()[: ctx.target.n_words].reshape(-1, gh, gw)
    return ctx.section(maps.mean(0), list(maps), note=ATTENTION_NOTE)


SALIENCY_VARIANTS = ("vanilla", "smoothgrad", "integrated_gradients")
SALIENCY_OPTION = Option("saliency_method", "choice", "vanilla",
                         "how the saliency panel differentiates", SALIENCY_VARIANTS)


def _saliency_needs_caption_gradient(options: dict) -> bool:
    return options.get("saliency_method", "vanilla") == "vanilla"


@method("saliency", "Saliency", "pixels the caption is sensitive to",
        options=(SALIENCY_OPTION,), needs_pixel_gradient=_saliency_needs_caption_gradient)
def saliency(ctx: Context) -> dict:
    variant = ctx.options.get("saliency_method", "vanilla")
    if variant == "smoothgrad":
        return smoothgrad(ctx) | {"method": variant}
    if variant == "integrated_gradients":
        return integrated_gradients(ctx) | {"method": variant}
    # vanilla: the caption's gradient is shared; all requested words in one batch
    grads = ctx.pixel_gradient_of_caption()
    if ctx.words:
        grads = tf.concat([grads, saliency_lib.pixel_gradients(
            ctx.captioner, ctx.pixels, ctx.target, ctx.words)], 0)
    maps = saliency_lib.vanilla_from_gradients(grads)
    return ctx.section(maps[0], dict(zip(ctx.words, maps[1:])), method=variant)


@method("smoothgrad", "SmoothGrad", "saliency averaged over noisy copies of the frame",
        default=False)
def smoothgrad(ctx: Context) -> dict:
    return ctx.pixel_section(
        lambda word: saliency_lib.smoothgrad(ctx.captioner, ctx.pixels, ctx.target, word))


@method("integrated_gradients", "Integrated Gradients",
        "pixel contributions along a path from a black frame", default=False)
def integrated_gradients(ctx: Context) -> dict:
    return ctx.pixel_section(
        lambda word: saliency_lib.integrated_gradients(ctx.captioner, ctx.pixels, ctx.target,
                                                       word))


CONTRAST_OPTION = Option(
    "contrast", "text", "",
    "alternatives to contrast with, as 'index:word' pairs (e.g. '1:bottle'); "
    "other words are contrasted with the model's runner-up")


@method("contrastive", "Contrast", "why this word and not the runner-up",
        options=(CONTRAST_OPTION,), needs_gradients=CHANNELS, default=False)
def contrastive(ctx: Context) -> dict:
    """Grad-CAM of s_t(w_t) - s_t(w'_t): evidence for the word over an alternative at the
    same step (same prefix); the caption's map contrasts every word at once."""
    chosen = parse_contrast(ctx.options.get("contrast", ""), ctx.target, ctx.captioner.vocab)
    alternatives = [chosen.get(t, runner_up(ctx, t)) for t in range(ctx.target.n_words)]
    other = channel_pass(ctx.captioner, ctx.feature_map, ctx.target, alternatives,
                         parts=ctx.cell_parts)
    s_word, s_alt = ctx.channels.scores, other.scores
    vocab = ctx.captioner.vocab
    extras = [{"alternative": vocab.word(a), "p_word": _round(np.exp(sw)),
               "p_alternative": _round(np.exp(sa)), "chosen": t in chosen}
              for t, (a, sw, sa) in enumerate(zip(alternatives, s_word, s_alt))]
    section = ctx.gradcam_section(ctx.channels.channel_gradients - other.channel_gradients,
                                  scores=s_word - s_alt)
    for entry, extra in zip(section["words"], extras):
        entry.update(extra)
    return section


def parse_contrast(value: str, target: CaptionTarget, vocab) -> dict[int, int]:
    """'1:bottle,3:dog' -> {1: id of bottle, 3: id of dog}, checked against the caption."""
    out = {}
    for part in filter(None, (p.strip() for p in str(value or "").split(","))):
        index, sep, word = part.partition(":")
        try:
            i = int(index)
        except ValueError:
            i = None
        if not sep or i is None:
            raise ExplainError(f"contrast {part[:40]!r} is not 'index:word'")
        if not 0 <= i < target.n_words:
            raise ExplainError(f"contrast index {i} is out of range: the caption has "
                               f"{target.n_words} words")
        word = word.strip().lower()
        if word not in vocab:
            raise ExplainError(f"contrast word {word[:40]!r} is not in the model's vocabulary")
        if word == target.words[i]:
            raise ExplainError(f"contrast word {word!r} is the caption's own word {i}")
        out[i] = vocab.index(word)
    return out


def special_ids(vocab) -> set[int]:
    return {vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id}


def runner_up(ctx: Context, t: int) -> int:
    """The model's most likely other word at step t (never a special token)."""
    skip = special_ids(ctx.captioner.vocab) | {ctx.target.token_ids[t]}
    for i in ctx.channels.top_ids[t]:
        if int(i) not in skip:
            return int(i)
    return ctx.captioner.vocab.unk_id     # a vocabulary of special tokens only


ADVERSARIAL_OPTIONS = (
    Option("adversarial", "bool", True, "run the adversarial check with ACE"),
    Option("attack", "choice", "fgsm", "the adversarial check's attack", ("fgsm", "pgd")),
)


@method("ace", "ACE", "image regions (concepts) that drove it", options=ADVERSARIAL_OPTIONS,
        needs_gradients=FULL, needs_pixel_gradient=lambda o: bool(o.get("adversarial", True)))
def ace(ctx: Context) -> dict:
    from .ace import explain_with_concepts
    from .adversarial import adversarial_check
    section = explain_with_concepts(ctx)
    if ctx.options.get("adversarial", True):
        section["adversarial"] = adversarial_check(
            ctx.explainer, ctx.pixels, ctx.caption, ctx.frame, method=ctx.options["attack"],
            gradient=ctx.pixel_gradient_of_caption(), overlay=ctx.overlays)
    return section


# -- requests -----------------------------------------------------------------------------
def available(captioner) -> list[str]:
    return [name for name, m in REGISTRY.items() if m.unavailable(captioner) is None]


def default_methods(captioner=None) -> list[str]:
    return [name for name, m in REGISTRY.items()
            if m.default and (captioner is None or m.unavailable(captioner) is None)]


def parse_methods(value, captioner=None) -> list[str]:
    """A comma list (or list) of method names -> validated names in request order; empty
    means the default set. With a captioner, methods it cannot run are refused."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    items = [str(m).strip().lower() for m in items]
    items = list(dict.fromkeys(m for m in items if m))
    if not items:
        return default_methods(captioner)
    bad = [m for m in items if m not in REGISTRY]
    if bad:
        raise ExplainError(f"unknown method(s) {', '.join(repr(b[:40]) for b in bad)}; "
                           f"choose from {', '.join(REGISTRY)}")
    if captioner is not None:
        for name in items:
            why = REGISTRY[name].unavailable(captioner)
            if why:
                raise ExplainError(f"{name} is not available: {why}")
    return items


# Options of a whole request rather than of one method.
REQUEST_OPTIONS = (
    Option("overlays", "bool", False, "also PNG overlays (data URLs) beside the heat maps"),
    Option("faithfulness", "bool", False,
           "a trust score per word map: its deletion curve against random maps"),
)


def all_options() -> dict[str, Option]:
    return {o.name: o for m in REGISTRY.values() for o in m.options}


def parse_request_options(raw: dict) -> dict:
    """The request-wide options (REQUEST_OPTIONS), typed and validated from ``raw``."""
    return {o.name: o.parse(raw.get(o.name)) for o in REQUEST_OPTIONS}


def parse_options(raw: dict) -> dict:
    """Every registered option, typed and validated, from ``raw`` (form fields or
    keyword arguments); missing ones take their defaults."""
    return {name: option.parse(raw.get(name)) for name, option in all_options().items()}


def describe(captioner=None) -> list[dict]:
    """The registry as data: what ``GET /api/methods`` and the page's panels read."""
    return [m.describe(captioner) for m in REGISTRY.values()]
