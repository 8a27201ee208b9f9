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
*evidence threshold*: the ``EVIDENCE_QUANTILE`` quantile of the same held-out
frames without an object, so that at most 5 % of them pass on this evidence alone.
``familiarity`` stays the typicality p-value.

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

    def with_evidence(self, classifier, negative_maps) -> "Familiarity":
        """Also call a frame familiar when its ImageNet noun evidence reaches the
        ``EVIDENCE_QUANTILE`` quantile of held-out frames without an object."""
        self.classifier = classifier
        self.evidence_threshold = float(np.quantile(
            noun_evidence(negative_maps, classifier), EVIDENCE_QUANTILE))
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
                                    else self.evidence_threshold))

    @classmethod
    def load(cls, bundle_dir) -> "Familiarity | None":
        path = Path(bundle_dir) / FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            evidence = float(z["evidence_threshold"]) if "evidence_threshold" in z.files else np.nan
            return cls(z["mean"], z["components"], z["bank"].astype(np.float32),
                       z["bank_residual"], z["calibration"], float(z["floor"]),
                       None if np.isnan(evidence) else evidence)
