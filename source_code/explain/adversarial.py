"""The adversarial check: how fragile is the caption?

The image is perturbed against the caption's likelihood s(x) = sum_t s_t(x)
within an L-infinity ball of ``epsilon`` grey levels, then captioned again:
* FGSM (Goodfellow et al. 2015): one signed-gradient step, x - eps * sign(ds/dx);
* PGD (Madry et al. 2018): ``steps`` smaller signed steps, projected back into the ball;
* the "salient" variant perturbs only the ``salient_fraction`` of pixels with the
  largest |ds/dx|, showing whether the evidence the saliency map found is what
  the caption rests on.
The report holds the new caption, which words changed, the likelihood drop of
the original caption, and the perturbation as a map.
"""
from __future__ import annotations

import difflib

import numpy as np
import tensorflow as tf

from .target import caption_target, score_gradients, scores_and_attention

EPSILON = 8.0            # grey levels (of 255)
PGD_STEPS = 5
SALIENT_FRACTION = 0.1


def caption_gradient(captioner, pixels, target) -> tuple[tf.Tensor, tf.Tensor]:
    """(s [N], ds/dx [N, S, S, 3]) for the whole caption."""
    x = tf.convert_to_tensor(pixels, tf.float32)
    weights = np.ones((int(x.shape[0]), target.n_words), np.float32)
    scores, grad = score_gradients(captioner, x, target, weights, from_pixels=True)
    return tf.reduce_sum(scores, -1), grad


def perturb(captioner, pixels, target, method: str = "fgsm", epsilon: float = EPSILON,
            steps: int = PGD_STEPS, salient_fraction: float | None = None, gradient=None):
    """Returns the perturbed pixels (same shape), clipped to [0, 255]."""
    x0 = tf.convert_to_tensor(pixels, tf.float32)
    g = gradient if gradient is not None else caption_gradient(captioner, x0, target)[1]
    mask = tf.ones_like(x0)
    if salient_fraction:
        sal = tf.reduce_max(tf.abs(g), -1, keepdims=True)
        k = max(1, int(salient_fraction * int(np.prod(sal.shape[1:3]))))
        thresh = tf.sort(tf.reshape(sal, [-1]), direction="DESCENDING")[k - 1]
        mask = tf.cast(sal >= thresh, tf.float32) * tf.ones_like(x0)
    if method == "fgsm":
        return tf.clip_by_value(x0 - epsilon * tf.sign(g) * mask, 0, 255)
    if method != "pgd":
        raise ValueError(f"unknown attack {method!r}: use fgsm or pgd")
    x, step = x0, 2.5 * epsilon / steps
    for i in range(steps):
        if i:
            g = caption_gradient(captioner, x, target)[1]
        x = x - step * tf.sign(g) * mask
        x = tf.clip_by_value(tf.clip_by_value(x, x0 - epsilon, x0 + epsilon), 0, 255)
    return x


def changed_words(before: list[str], after: list[str]) -> list[dict]:
    """Word-level diff: [{"op": "replace"/"delete"/"insert", "before": [...], "after": [...], "index": i}]."""
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after).get_opcodes():
        if op != "equal":
            out.append({"op": op, "index": i1, "before": before[i1:i2], "after": after[j1:j2]})
    return out


def adversarial_check(explainer, pixels, caption, frame, method: str = "fgsm",
                      epsilon: float = EPSILON, salient: bool = True, gradient=None,
                      overlay: bool = False) -> dict:
    """Perturb (whole image, and salient pixels only), re-caption, report. ``overlay``:
    the perturbation map as a PNG overlay over ``frame`` as well as a heatmap."""
    from .render import data_url, map_json

    captioner = explainer.captioner
    target = caption_target(captioner, caption.words)
    if gradient is None:
        s0, gradient = caption_gradient(captioner, pixels, target)
    variants = {"all_pixels": None}
    if salient:
        variants["salient_pixels"] = SALIENT_FRACTION
    report = {"method": method, "epsilon": epsilon, "original_caption": caption.text}
    x0 = tf.convert_to_tensor(pixels, tf.float32)
    perturbed = tf.concat([perturb(captioner, pixels, target, method, epsilon,
                                   salient_fraction=fraction, gradient=gradient)
                           for fraction in variants.values()], 0)
    # every variant re-captioned in one batch: one backbone call, one search
    feats = captioner.features(perturbed)
    new_captions = captioner.decode_features(feats, explainer.beam_width)
    s_new = tf.reduce_sum(scores_and_attention(captioner, feats, target)[0], -1).numpy()
    for i, (name, fraction) in enumerate(variants.items()):
        new = new_captions[i]
        delta = np.abs((perturbed[i] - x0[0]).numpy()).mean(-1)
        report[name] = {
            "new_caption": new.text, "new_words": new.words,
            "changed_words": changed_words(caption.words, new.words),
            "caption_changed": new.words != caption.words,
            "original_caption_logprob_after": round(float(s_new[i]), 4),
            "perturbation": map_json(delta, frame if overlay else None),
            "fraction_of_pixels": fraction or 1.0,
        }
        if name == "all_pixels" or overlay:
            # The page shows the whole-image attack; the salient-pixels image (about
            # 100 KB as PNG) comes only with the other images (overlays=1, the CLI).
            report[name]["perturbed_image"] = data_url(
                np.clip(perturbed[i].numpy(), 0, 255).astype(np.uint8))
    # the top-level keys describe the whole-image attack, which is what the page shows first
    report.update({k: report["all_pixels"][k] for k in ("new_caption", "changed_words")})
    return report
