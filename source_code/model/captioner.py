"""The captioning model: backbone + decoder + vocabulary, and its bundle on disk.

A bundle is a directory::

    config.json            model card: backbone, decoder, sizes, training, metrics
    vocab.txt              one token a line (specials first)
    decoder.weights.h5     decoder weights
    backbone.weights.h5    backbone weights (absent when the backbone is the
                           stock ImageNet one, which Keras loads from its cache)
    concepts/              ACE concept bank (optional)

Loading rebuilds the architecture from our own code and reads weights only:
nothing in a bundle is executed (no pickles, no serialized layers). Before
anything is read, ``check_data_only`` refuses a bundle that holds something which
*could* run code in other loaders (a pickle, a whole Keras model with its layers,
a serialized Keras object in config.json), so such a bundle fails loudly instead
of being half-trusted.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from ..files import atomic_dir
from ..text.vocabulary import Vocabulary
from .backbone import BackboneSpec, build_backbone
from .decoders import CaptionDecoder
from .familiarity import Familiarity
from .search import beam_search, greedy_search

BUNDLE_FORMAT = 1
CONFIG_FILE, VOCAB_FILE = "config.json", "vocab.txt"
DECODER_WEIGHTS, BACKBONE_WEIGHTS = "decoder.weights.h5", "backbone.weights.h5"
DECODER_KEYS = ("kind", "embed_dim", "units", "dropout", "train_embedding", "imagenet_head")
# Read from the config's decoder section but not a constructor argument: set after loading.
PRIOR_KEY = "imagenet_prior"
POOLING_KEY = "imagenet_prior_pooling"      # absent: "frame", the first bundles' prior
# File kinds that carry code (pickles and their cousins, whole Keras models, Python).
CODE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".keras", ".py", ".pyc", ".so")
PICKLE_MAGIC = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


class BundleError(ValueError):
    """A bundle directory is missing, incomplete or inconsistent."""


def check_data_only(bundle_dir: Path) -> None:
    """Raise BundleError unless every file of the bundle is plain data: no pickle (by
    name or by content, nor inside an .npz), no whole Keras model (a ``.keras`` file
    or an .h5 file with a ``model_config``, such as one holding a Lambda layer), and
    no serialized Keras object (``class_name``) in config.json."""
    import h5py

    def refuse(path: Path, why: str):
        raise BundleError(f"model bundle {bundle_dir} is refused: {path.relative_to(bundle_dir)} "
                          f"{why}; a bundle holds settings and weights only, and loading "
                          f"never runs code from it")

    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        if path.suffix.lower() in CODE_SUFFIXES:
            refuse(path, "is a kind of file that can carry code")
        with open(path, "rb") as fh:
            if fh.read(2) in PICKLE_MAGIC:
                refuse(path, "is a pickle")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    for key in z.files:
                        z[key]          # reading an object array raises ValueError
            except ValueError:
                refuse(path, "holds pickled objects")
        elif path.suffix == ".h5":
            try:
                with h5py.File(path, "r") as f:
                    model_config = f.attrs.get("model_config")
            except OSError:
                continue            # not HDF5 at all: the weights loader says so
            if model_config is not None:
                lam = " with a Lambda layer" if b"Lambda" in _as_bytes(model_config) else ""
                refuse(path, f"is a whole Keras model{lam}, not weights")
    config_text = (bundle_dir / CONFIG_FILE).read_bytes()
    if b'"class_name"' in config_text:
        lam = " (a Lambda layer)" if b'"Lambda"' in config_text else ""
        refuse(bundle_dir / CONFIG_FILE, f"holds a serialized Keras object{lam}")


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class Caption:
    words: list[str]
    token_ids: list[int]          # word ids, without start/end
    token_logprobs: list[float]   # log p of each word, then of the end token
    logprob: float                # total, end token included

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _has_imagenet_classifier(backbone: BackboneSpec) -> bool:
    return backbone.variant == "lite0" and backbone.weights == "imagenet"


def _imagenet_classifier(backbone: BackboneSpec):
    if not _has_imagenet_classifier(backbone):
        raise ValueError("imagenet_head needs the lite0 backbone with ImageNet weights")
    from .lite0 import imagenet_classifier
    return imagenet_classifier()


def token_logprobs(logits, targets) -> tuple[tf.Tensor, tf.Tensor]:
    """Log-probabilities of the decoder's outputs: logits [B, T, V], targets [B, T] ->
    (log p over the vocabulary [B, T, V], log p of each target token [B, T]). The one
    place captions are scored: explainers, teacher forcing and training all read it."""
    logp = tf.nn.log_softmax(logits, axis=-1)
    return logp, tf.gather(logp, targets, batch_dims=2)


class Captioner:
    def __init__(self, backbone, decoder: CaptionDecoder, vocab: Vocabulary, config: dict):
        self.backbone, self.decoder, self.vocab, self.config = backbone, decoder, vocab, config
        self.max_length = int(config["max_length"])
        self.input_size = int(config["backbone"]["input_size"])
        self.grid = tuple(backbone.output_shape[1:3])
        self._features = tf.function(lambda x: self.backbone(x, training=False),
                                     reduce_retracing=True)
        # Compiled functions over this model (searches here, explainers' in explain/target),
        # by key; emptied when the model's scores change (set_imagenet_prior), since a
        # compiled graph keeps the constants it was traced with.
        self.compiled = {}
        self.familiarity = None       # see familiarity.py; loaded with the bundle

    # -- construction ---------------------------------------------------------
    @classmethod
    def build(cls, vocab: Vocabulary, backbone: BackboneSpec, decoder: dict, max_length: int,
              embedding_matrix: np.ndarray | None = None, extra_config: dict | None = None):
        net = build_backbone(backbone)
        grid_h, grid_w, channels = net.output_shape[1:]
        dec_cfg = {"kind": "attention", "embed_dim": 100, "units": 256, "dropout": 0.3,
                   "train_embedding": embedding_matrix is None}
        dec_cfg.update({k: v for k, v in decoder.items() if k in DECODER_KEYS})
        dec = CaptionDecoder(len(vocab), grid_cells=grid_h * grid_w,
                             embedding_matrix=embedding_matrix, **dec_cfg)
        dec.build_for((grid_h, grid_w, channels), max_length + 1)
        if dec_cfg.get("imagenet_head") and backbone.weights is not None:
            # A backbone with random weights (the sanity check's randomised copy)
            # keeps a random head too: nothing of ImageNet is left in that model.
            dec.imagenet_head.set_weights(list(_imagenet_classifier(backbone)))
        config = {"format": BUNDLE_FORMAT, "backbone": backbone.to_dict(), "decoder": dec_cfg,
                  "max_length": int(max_length), "grid": [grid_h, grid_w],
                  "feature_channels": int(channels), "vocab_size": len(vocab)}
        config.update(extra_config or {})
        return cls(net, dec, vocab, config)

    # -- bundle I/O -----------------------------------------------------------
    def save(self, bundle_dir, include_backbone: bool | None = None) -> Path:
        """Write the bundle atomically: a temp dir next to the target, then a rename.
        The backbone's weights are written unless it is the untouched stock ImageNet one."""
        bundle_dir = Path(bundle_dir)
        if include_backbone is None:
            include_backbone = (self.config["backbone"].get("weights") != "imagenet"
                                or self.config.get("backbone_trained", False)
                                or bool(self.config.get("backbone_tail")))
        config = dict(self.config, backbone_weights_in_bundle=bool(include_backbone))
        with atomic_dir(bundle_dir) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            self.vocab.save(tmp / VOCAB_FILE)
            self.decoder.save_weights(tmp / DECODER_WEIGHTS)
            if include_backbone:
                self.backbone.save_weights(tmp / BACKBONE_WEIGHTS)
            if (bundle_dir / "concepts").is_dir():  # keep an existing concept bank
                shutil.copytree(bundle_dir / "concepts", tmp / "concepts")
            if self.familiarity is not None:
                self.familiarity.save(tmp)
        self.config = config
        return bundle_dir

    @classmethod
    def load(cls, bundle_dir) -> "Captioner":
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise BundleError(f"model bundle not found: {bundle_dir} is not a directory")
        for name in (CONFIG_FILE, VOCAB_FILE, DECODER_WEIGHTS):
            if not (bundle_dir / name).is_file():
                raise BundleError(f"model bundle {bundle_dir} is missing {name}")
        check_data_only(bundle_dir)
        try:
            config = json.loads((bundle_dir / CONFIG_FILE).read_text())
            spec = BackboneSpec.from_dict(config["backbone"])
            dec_cfg = config["decoder"]
            max_length = int(config["max_length"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"model bundle {bundle_dir} has an unreadable {CONFIG_FILE}: {exc}") from exc
        if config.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"model bundle {bundle_dir} has format {config.get('format')!r}; "
                              f"this version reads format {BUNDLE_FORMAT}")
        in_bundle = config.get("backbone_weights_in_bundle", False)
        if in_bundle:  # never download weights we are about to overwrite
            spec = BackboneSpec.from_dict(dict(config["backbone"], weights=None))
        vocab = Vocabulary.load(bundle_dir / VOCAB_FILE)
        if len(vocab) != config.get("vocab_size", len(vocab)):
            raise BundleError(f"model bundle {bundle_dir}: vocab.txt has {len(vocab)} tokens, "
                              f"config.json says {config['vocab_size']}")
        net = build_backbone(spec)
        grid_h, grid_w, channels = net.output_shape[1:]
        dec = CaptionDecoder(len(vocab), grid_cells=grid_h * grid_w,
                             **{k: v for k, v in dec_cfg.items() if k in DECODER_KEYS})
        dec.build_for((grid_h, grid_w, channels), max_length + 1)
        try:
            dec.load_weights(bundle_dir / DECODER_WEIGHTS)
            if in_bundle:
                net.load_weights(bundle_dir / BACKBONE_WEIGHTS)
        except (OSError, ValueError) as exc:
            raise BundleError(f"model bundle {bundle_dir}: weights do not match its config: {exc}") from exc
        captioner = cls(net, dec, vocab, config)
        captioner.bundle_dir = bundle_dir
        captioner.familiarity = Familiarity.load(bundle_dir)
        if captioner.familiarity is not None and captioner.familiarity.evidence_threshold is not None:
            captioner.familiarity.classifier = captioner.imagenet_noun_classifier()
            if captioner.familiarity.classifier is None:
                raise BundleError(f"model bundle {bundle_dir}: its familiarity reads ImageNet "
                                  f"evidence, but its backbone has no ImageNet classifier")
        try:
            captioner.set_imagenet_prior(dec_cfg.get(PRIOR_KEY, 0.0),
                                         dec_cfg.get(POOLING_KEY, "frame"))
        except ValueError as exc:
            raise BundleError(f"model bundle {bundle_dir}: {exc}") from exc
        return captioner

    def imagenet_noun_classifier(self):
        """(kernel, bias, class_nouns) of the backbone's own ImageNet classifier, with
        the classes that are kinds of each vocabulary noun (familiarity's evidence);
        None when the backbone has none or was retrained away from it."""
        spec = BackboneSpec.from_dict(self.config["backbone"])
        if not _has_imagenet_classifier(spec) or self.config.get("backbone_trained"):
            return None
        from .imagenet_nouns import class_token_matrix
        kernel, bias = _imagenet_classifier(spec)
        return kernel, bias, class_token_matrix(self.vocab)

    def set_imagenet_prior(self, weight: float, pooling: str = "frame") -> None:
        """The decoder's ImageNet noun prior at this weight (0: none) and pooling (see
        model/decoders.py), recorded in the config. Compiled functions are rebuilt on
        their next call, with the new prior."""
        weight = float(weight or 0.0)
        if weight and not self.config["decoder"].get("imagenet_head"):
            raise ValueError("an ImageNet noun prior needs a decoder with the ImageNet head")
        from .imagenet_nouns import article_tokens, class_token_matrix
        self.decoder.set_noun_prior(class_token_matrix(self.vocab) if weight else None, weight,
                                    pooling, article_tokens(self.vocab))
        decoder = {k: v for k, v in self.config["decoder"].items()
                   if k not in (PRIOR_KEY, POOLING_KEY)}
        if weight:
            decoder[PRIOR_KEY] = weight
            if pooling != "frame":
                decoder[POOLING_KEY] = pooling
        self.config = dict(self.config, decoder=decoder)
        self.compiled.clear()

    def imagenet_prior(self) -> tuple[float, str]:
        """(weight, pooling) of the decoder's ImageNet noun prior; weight 0: none."""
        d = self.config["decoder"]
        return float(d.get(PRIOR_KEY, 0.0)), d.get(POOLING_KEY, "frame")

    # -- inference ------------------------------------------------------------
    def preprocess(self, images) -> tf.Tensor:
        """One HxWx3 uint8 array or a list of them -> float32 [B, S, S, 3] raw pixels.
        The whole frame is resized (not cropped), so explanation maps span all of it."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        size = self.input_size
        batch = np.stack([np.asarray(Image.fromarray(np.asarray(im, np.uint8)).convert("RGB")
                                     .resize((size, size), Image.BILINEAR), np.float32)
                          for im in images])
        return tf.constant(batch)

    def features(self, pixels) -> tf.Tensor:
        """Raw pixels [B, S, S, 3] -> feature map A [B, h, w, C]."""
        return self._features(tf.convert_to_tensor(pixels, tf.float32))

    def search_function(self, beam_width: int = 1, length_penalty: float = 0.0,
                        from_parts: bool = False):
        """The (uncompiled) search: feature map A (or the decoder's cell_parts of it) ->
        (tokens [B, L], token log-probs [B, L]), L = max_length + 1; greedy for
        beam_width <= 1. Start, pad and unk are never chosen."""
        v, n, decoder = self.vocab, self.max_length, self.decoder
        banned = (v.start_id, v.pad_id, v.unk_id)

        def search(inputs):
            memory = decoder.memory_from(inputs) if from_parts else decoder.encode(inputs)
            if beam_width <= 1:
                return greedy_search(decoder, memory, v.start_id, v.end_id, v.pad_id, n, banned)
            return beam_search(decoder, memory, v.start_id, v.end_id, v.pad_id, n,
                               int(beam_width), float(length_penalty), banned)
        return search

    def cell_parts(self, feature_map) -> tuple:
        """The decoder's costly reading of the cells (``CaptionDecoder.cell_parts``),
        compiled: the search and the explainers' channel pass both start from it."""
        if "cell_parts" not in self.compiled:
            self.compiled["cell_parts"] = tf.function(self.decoder.cell_parts,
                                                      reduce_retracing=True)
        return self.compiled["cell_parts"](tf.convert_to_tensor(feature_map, tf.float32))

    def decode_parts(self, parts, beam_width: int = 1,
                     length_penalty: float = 0.0) -> list[Caption]:
        """Captions from the decoder's cell_parts of feature maps (see ``cell_parts``)."""
        key = ("search", int(beam_width), float(length_penalty))
        if key not in self.compiled:
            self.compiled[key] = tf.function(
                self.search_function(beam_width, length_penalty, from_parts=True),
                reduce_retracing=True)
        tokens, logps = self.compiled[key](parts)
        return [self.caption_from_search(t, l) for t, l in zip(tokens.numpy(), logps.numpy())]

    def decode_features(self, feature_map, beam_width: int = 1,
                        length_penalty: float = 0.0) -> list[Caption]:
        return self.decode_parts(self.cell_parts(feature_map), beam_width, length_penalty)

    def caption(self, images, beam_width: int = 3, length_penalty: float = 0.0) -> list[Caption]:
        return self.decode_features(self.features(self.preprocess(images)), beam_width,
                                    length_penalty)

    def familiar(self, feature_map, parts=None) -> list[tuple[bool, float | None]]:
        """(familiar, familiarity) per frame of [B, h, w, C]; (True, None) for a bundle
        without calibration data (nothing to compare with: no warning is invented).
        ``parts``: the decoder's ``cell_parts`` of the same maps, when the caption pass
        made them (its ImageNet logits then serve familiarity's evidence)."""
        if self.familiarity is None:
            return [(True, None)] * int(feature_map.shape[0])
        logits = self.decoder.cell_class_logits(parts) if parts is not None else None
        return self.familiarity.score(np.asarray(feature_map),
                                      None if logits is None else logits.numpy())

    def caption_from_search(self, tokens, logps) -> Caption:
        """One row of a search's (tokens, token log-probs) as a Caption."""
        ids, lps = [], []
        for tok, lp in zip(tokens.tolist(), logps.tolist()):
            lps.append(lp)
            if tok in (self.vocab.end_id, self.vocab.pad_id) or len(ids) == self.max_length:
                break
            ids.append(tok)
        return Caption([self.vocab.word(i) for i in ids], ids, lps, float(sum(lps)))

    def teacher_forcing_inputs(self, token_ids: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
        """(tokens_in [1, T+1], targets [1, T+1]) for a caption of T words: start + words
        in, words + end out. These are the inputs of every explanation's target s_t."""
        ids = [self.vocab.start_id] + list(token_ids)
        targets = list(token_ids) + [self.vocab.end_id]
        return tf.constant([ids], tf.int32), tf.constant([targets], tf.int32)

    def word_logprobs(self, feature_map, tokens_in, targets) -> tf.Tensor:
        """s_t = log p(w_t | image, w_<t) by teacher forcing: [B, T]."""
        logits, _ = self.decoder((feature_map, tokens_in), training=False)
        return token_logprobs(logits, targets)[1]

    @property
    def card(self) -> dict:
        keys = ("name", "world", "backbone", "decoder", "max_length", "grid", "vocab_size", "training",
                "metrics", "glove", "description")
        return {k: self.config[k] for k in keys if k in self.config}
