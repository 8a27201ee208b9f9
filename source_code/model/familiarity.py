"""How much a frame looks like the bundle's training world.

A captioner trained on one world answers every frame with a caption of that
world; this says when the frame is unlike anything it was trained on, so the
caption can be shown as a guess. The evidence is the backbone's feature map,
average- and max-pooled over the grid (what is there, and how strongly), L2
normalised and projected on its main directions (PCA fitted on training
scenes), keeping the length of what the projection leaves out (a frame from
elsewhere lies off those directions). A frame's typicality is minus its mean
distance to its ``K`` nearest training scenes, the distance taken as if the
left-out parts were orthogonal. Typicality is then calibrated on held-out in-world
scenes: ``familiarity`` is the fraction of those scenes that are *less*
typical than the frame (an empirical p-value in [0, 1]), and a frame is
``familiar`` when at least ``FLOOR`` of held-out in-world scenes are less
typical: by construction about ``1 - FLOOR`` of in-world scenes pass.

Where the world can show frames with nothing of it (the objects world's backgrounds
without an object: what a captioner that always names objects should not take for
its world), the floor is chosen on those held-out negatives instead: the floor
between FLOOR and MAX_FLOOR that best separates them from in-world scenes (largest
balanced accuracy, ties to the lower floor). Both sets are validation data of the
world; real photographs never take part.

A real photograph of a thing of the world (a cat, a cup) is less typical than any
synthetic scene, yet an ImageNet classifier knows it at once. So where the backbone
has one (Lite0), a frame is also familiar when some grid cell's ImageNet
probability of one caption noun's classes (``imagenet_nouns.json``) reaches the
*evidence threshold*. Where validation photographs exist (the objects world's:
``evaluation/validation_photos.py``, never the test photos), the threshold is the one
among the ``EVIDENCE_QUANTILES`` quantiles of the held-out frames without an object
that best separates the validation photos of the world (familiar) from the validation
frames from outside it (unfamiliar): the largest balanced accuracy, ties to the
stricter threshold. Without them it is the ``EVIDENCE_QUANTILE`` quantile, so that
at most 5 % of object-free frames pass on this evidence alone (the first bundles'
rule). ``familiarity`` stays the typicality p-value.

Stored in the bundle as ``familiarity.npz`` (plain arrays, no pickles).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from ..files import atomic_path

FILE = "familiarity.npz"
K = 5
COMPONENTS = 96
FLOOR = 0.01
MAX_FLOOR = 0.05            # at most 5 % of in-world scenes may be called unfamiliar
FLOOR_STEP = 0.005
EVIDENCE_QUANTILE = 0.95    # at most 5 % of frames without an object pass on ImageNet evidence
EVIDENCE_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)   # chosen among


def noun_evidence(feature_maps: np.ndarray, classifier) -> np.ndarray:
    """[B, h, w, C] -> [B]: the largest probability that one grid cell's ImageNet
    classifier (``kernel`` [C, 1000], ``bias`` [1000], ``class_nouns`` [1000, N] with 1
    where a class is a kind of a noun) gives to the classes of one noun."""
    kernel, bias, class_nouns = classifier
    f = np.asarray(feature_maps, np.float32)
    return noun_evidence_from_logits(f.reshape(len(f), -1, f.shape[-1]) @ kernel + bias,
                                     class_nouns)


def noun_evidence_from_logits(logits, class_nouns: np.ndarray) -> np.ndarray:
    """``noun_evidence`` from the cells' class logits [B, N, 1000], which the decoder's
    ImageNet head has already computed on a caption pass (a 14 x 14 x 1280 by 1280 x
    1000 product saved per frame). Softmax ignores a shift per cell, so logits centred
    per cell (``CaptionDecoder.cell_parts``) serve as well."""
    logits = np.asarray(logits, np.float32)
    if not len(logits):
        return np.zeros(0, np.float32)
    return (softmax(logits, axis=-1) @ class_nouns).max((1, 2))


def choose_floor(negative_p: np.ndarray) -> float:
    """The floor in [FLOOR, MAX_FLOOR] that best separates in-world scenes (a share
    ``floor`` of which fall below it, by construction of the p-values) from negatives
    with familiarity ``negative_p``: the largest balanced accuracy, ties to the lower."""
    candidates = np.round(np.arange(FLOOR, MAX_FLOOR + 1e-9, FLOOR_STEP), 4)
    accuracy = [(1 - f) + np.mean(np.asarray(negative_p) < f) for f in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def choose_evidence_quantile(negative_evidence, in_world: tuple, out_of_world: tuple,
                             floor: float) -> tuple[float, list[dict]]:
    """The quantile of the object-free frames' evidence (``negative_evidence``) whose
    threshold best separates validation photos of the world from validation frames
    from outside it, each given as (evidence, typicality p-values): a frame is familiar
    when its p-value reaches ``floor`` or its evidence the threshold. Returns (quantile,
    the table of every candidate)."""
    rows = []
    for q in EVIDENCE_QUANTILES:
        threshold = float(np.quantile(negative_evidence, q))
        familiar_in = np.mean((in_world[1] >= floor) | (in_world[0] >= threshold))
        familiar_out = np.mean((out_of_world[1] >= floor) | (out_of_world[0] >= threshold))
        rows.append({"quantile": q, "threshold": round(threshold, 4),
                     "familiar_in_world": round(float(familiar_in), 4),
                     "unfamiliar_out_of_world": round(float(1 - familiar_out), 4),
                     "balanced_accuracy": round(float(familiar_in + 1 - familiar_out) / 2, 4)})
    best = max(rows, key=lambda r: (r["balanced_accuracy"], r["quantile"]))
    return best["quantile"], rows


def describe(feature_maps: np.ndarray) -> np.ndarray:
    """[B, h, w, C] feature maps -> [B, 2C] L2-normalised (average, max) pooled vectors."""
    f = np.asarray(feature_maps, np.float32)
    v = np.concatenate([f.mean((1, 2)), f.max((1, 2))], -1)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-8)


@dataclass
class Familiarity:
    mean: np.ndarray            # [D]
    components: np.ndarray      # [D, k] PCA directions
    bank: np.ndarray            # [N, k] projected training vectors
    bank_residual: np.ndarray   # [N] length of what the projection leaves out
    calibration: np.ndarray     # sorted typicality of held-out in-world scenes
    floor: float = FLOOR
    evidence_threshold: float | None = None   # see noun_evidence; None: typicality only
    classifier: tuple | None = None           # (kernel, bias, class_nouns), not saved
    evidence_quantile: float | None = None    # of object-free frames, the threshold's
    evidence_choice: list | None = None       # the table it was chosen by, not saved

    def with_evidence(self, classifier, negative_maps, validation=None) -> "Familiarity":
        """Also call a frame familiar when its ImageNet noun evidence reaches a quantile
        of held-out frames without an object: the one chosen on ``validation`` = (maps
        of validation photos of the world, maps of validation frames from outside it)
        when given, else ``EVIDENCE_QUANTILE``. The choice's table is kept in
        ``self.evidence_choice``."""
        self.classifier = classifier
        negative = noun_evidence(negative_maps, classifier)
        quantile, self.evidence_choice = EVIDENCE_QUANTILE, None
        if validation is not None:
            in_world, out_of_world = ((noun_evidence(m, classifier), self.p_values(describe(m)))
                                      for m in validation)
            quantile, self.evidence_choice = choose_evidence_quantile(
                negative, in_world, out_of_world, self.floor)
        self.evidence_threshold = float(np.quantile(negative, quantile))
        self.evidence_quantile = quantile
        return self

    @classmethod
    def fit(cls, train_vectors, calibration_vectors, components: int = COMPONENTS,
            negative_vectors=None) -> "Familiarity":
        """From ``describe``d training and held-out calibration feature maps (and, when
        given, held-out frames with nothing of the world, which set the floor)."""
        x = np.asarray(train_vectors, np.float32)
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        model = cls(mean, vt[:components].T.astype(np.float32), np.zeros((0, 0), np.float32),
                    np.zeros(0, np.float32), np.zeros(0, np.float32))
        model.bank, model.bank_residual = model._project(x)
        model.calibration = np.sort(model.typicality_of(np.asarray(calibration_vectors)))
        if negative_vectors is not None and len(negative_vectors):
            model.floor = choose_floor(model.p_values(np.asarray(negative_vectors)))
        return model

    def p_values(self, described: np.ndarray) -> np.ndarray:
        """Familiarity: the share of held-out in-world scenes less typical than each frame."""
        t = self.typicality_of(described)
        return np.searchsorted(self.calibration, t, side="right") / max(len(self.calibration), 1)

    def _project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centred = x - self.mean
        z = centred @ self.components
        residual = np.linalg.norm(centred - z @ self.components.T, axis=1)
        return z.astype(np.float32), residual.astype(np.float32)

    def typicality_of(self, described: np.ndarray) -> np.ndarray:
        z, r = self._project(described)
        d2 = (np.sum(z ** 2, 1)[:, None] + np.sum(self.bank ** 2, 1)[None] - 2 * z @ self.bank.T
              + r[:, None] ** 2 + self.bank_residual[None] ** 2)
        k = min(K, d2.shape[1])
        return -np.sqrt(np.maximum(np.sort(d2, axis=1)[:, :k], 0)).mean(1)

    def score(self, feature_maps, class_logits=None) -> list[tuple[bool, float]]:
        """[B, h, w, C] -> (familiar, familiarity) per frame; ``class_logits`` [B, h * w,
        1000]: the cells' ImageNet logits where a caption pass already made them."""
        p = self.p_values(describe(feature_maps))
        familiar = p >= self.floor
        if self.evidence_threshold is not None:
            if self.classifier is None:
                raise RuntimeError("this familiarity reads ImageNet evidence: attach the "
                                   "backbone's classifier first (Captioner.load does)")
            evidence = (noun_evidence(feature_maps, self.classifier) if class_logits is None
                        else noun_evidence_from_logits(class_logits, self.classifier[2]))
            familiar |= evidence >= self.evidence_threshold
        return [(bool(f), round(float(v), 4)) for f, v in zip(familiar, p)]

    def save(self, bundle_dir) -> None:
        """Written under a temporary name and renamed: never a half-written file."""
        with atomic_path(Path(bundle_dir) / FILE) as tmp:
            np.savez_compressed(tmp, mean=self.mean, components=self.components,
                                bank=self.bank.astype(np.float16),
                                bank_residual=self.bank_residual, calibration=self.calibration,
                                floor=np.float32(self.floor),
                                evidence_threshold=np.float32(
                                    np.nan if self.evidence_threshold is None
                                    else self.evidence_threshold),
                                evidence_quantile=np.float64(
                                    np.nan if self.evidence_quantile is None
                                    else self.evidence_quantile))

    @classmethod
    def load(cls, bundle_dir) -> "Familiarity | None":
        path = Path(bundle_dir) / FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            evidence, quantile = (float(z[k]) if k in z.files else np.nan
                                  for k in ("evidence_threshold", "evidence_quantile"))
            return cls(z["mean"], z["components"], z["bank"].astype(np.float32),
                       z["bank_residual"], z["calibration"], float(z["floor"]),
                       None if np.isnan(evidence) else evidence,
                       evidence_quantile=None if np.isnan(quantile) else quantile)
