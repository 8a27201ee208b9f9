"""Training: dataset -> vocabulary -> samples -> model -> bundle.

Two modes share one loop:
* end to end (``finetune_backbone=True``): images are decoded once into memory,
  augmented on the fly (mirror with the spatial words swapped, zoom, lighting,
  noise) and the backbone is trained too;
* frozen backbone: backbone features are computed once and cached on disk
  (``features.FeatureCache``, resumable), and only the decoder is trained.

Checkpoints after every epoch allow ``--resume``; early stopping watches the
validation loss. The result is a bundle (see ``model.captioner``).

Several devices (``TrainConfig.strategy``, see :func:`make_strategy`): the model,
the optimizers and the train step are built inside ``strategy.scope()``; each
global batch is split evenly over the replicas, the step runs with
``strategy.run`` and its losses are averaged with ``strategy.reduce``. The
default strategy keeps the single-device loop exactly as it is.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ..data.datasets import CaptionDataset
from ..model.backbone import BackboneSpec
from ..model.captioner import Captioner, token_logprobs
from ..text.vocabulary import Vocabulary, clean_caption, max_caption_length
from .samples import CaptionSamples, build_samples, load_grounding, load_images

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    decoder: dict = field(default_factory=lambda: {"kind": "attention"})
    finetune_backbone: bool = False
    # Tune the frozen backbone's last block on the scenes' categories first (see tail.py):
    # None, or settings over tail.TAIL_DEFAULTS ({} for the defaults). Needs grounding.
    tune_tail: dict | None = None
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    backbone_learning_rate: float | None = None  # defaults to learning_rate
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    min_word_count: int = 10
    max_length: int | None = None         # words; default: the longest training caption
    glove: str | None = None              # path to a glove.6B.*d.txt-format file
    train_embedding: bool = False
    attention_weight: float = 1.0         # weight of the attention grounding loss (when grounding given)
    gradcam_weight: float = 0.0           # weight of the Grad-CAM grounding loss (ditto)
    gradcam_start_epoch: int = 0          # the Grad-CAM loss is off before this epoch (captions first)
    gradcam_ramp_epochs: int = 0          # then rises linearly to its weight over these epochs
    augment_hflip: bool = True
    augment_vflip: bool = False
    augment_zoom: float = 0.12            # max zoom-in fraction
    augment_photometric: bool = True
    patience: int = 5                     # early stopping on validation loss
    max_train_images: int | None = None
    captions_per_image: int | None = None  # None: all references; 1: the first one only
    seed: int = 0
    label_smoothing: float = 0.0
    strategy: str = "default"             # "default" | "mirrored" | "multiworker" (see make_strategy)
    # The decoder's per-cell products while training: "auto" (bfloat16 where the
    # hardware multiplies it fast, see fast_bfloat16), "bfloat16" or "float32".
    cell_precision: str = "auto"

    def to_dict(self):
        d = asdict(self)
        d["backbone"] = self.backbone.to_dict()
        return d


STRATEGIES = ("default", "mirrored", "multiworker")
# the feature caches' folders in the work folder (frozen or tail-tuned backbone)
TRAIN_FEATURES, VAL_FEATURES = "features_train", "features_val"
CELL_PRECISIONS = ("auto", "bfloat16", "float32")
# CPU flags of native bfloat16 matrix units (Intel AMX; AVX-512 BF16 dot products)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def fast_bfloat16() -> bool:
    """Whether this machine multiplies bfloat16 faster than float32: a GPU of compute
    capability 8 or later (Ampere on), or a CPU with native bfloat16 units. Elsewhere
    TensorFlow emulates bfloat16 and is slower than in float32."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return bool(capability) and capability[0] >= 8
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cell_dtype_for(precision: str):
    """TrainConfig.cell_precision -> the decoder's cell_dtype while training."""
    if precision not in CELL_PRECISIONS:
        raise ValueError(f"cell precision must be one of {CELL_PRECISIONS}, got {precision!r}")
    if precision == "bfloat16" or (precision == "auto" and fast_bfloat16()):
        return tf.bfloat16
    return None


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``TrainConfig.strategy``; None for "default"
    (one device, the plain loop).

    * "mirrored": ``MirroredStrategy`` over every GPU of this host; without a GPU,
      over its logical CPU devices (one unless configured otherwise).
    * "multiworker": ``MultiWorkerMirroredStrategy`` over several hosts, described by
      the ``TF_CONFIG`` environment variable, which must be set before this call
      (and this call must come before any other TensorFlow work in the process).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "default":
        return None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if not os.environ.get("TF_CONFIG"):
        log.warning("strategy 'multiworker' without TF_CONFIG: training on this host alone")
    return tf.distribute.MultiWorkerMirroredStrategy()


def _worker_role(strategy) -> tuple[bool, int]:
    """(is this the chief, task index): the chief writes checkpoints and the bundle;
    other workers write theirs to a scratch folder (all must save: saving may
    need collectives)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return (task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)), task_id


def prepare_vocabulary(dataset: CaptionDataset, cfg: TrainConfig) -> tuple[Vocabulary, int]:
    train_caps = [clean_caption(c) for i in dataset.splits["train"] for c in dataset.captions[i]]
    vocab = Vocabulary.build(train_caps, min_count=cfg.min_word_count)
    length = cfg.max_length or max_caption_length(train_caps)
    return vocab, length


def _embedding(vocab: Vocabulary, cfg: TrainConfig):
    if not cfg.glove:
        return None, None
    from ..text.glove import embedding_matrix, load_glove_vectors

    vectors, dim = load_glove_vectors(cfg.glove, wanted=set(vocab.tokens), progress=True)
    matrix, coverage = embedding_matrix(vocab.tokens, vectors, dim, seed=cfg.seed)
    log.info("GloVe %s: %d dims, %.1f %% of the vocabulary found", cfg.glove, dim, 100 * coverage)
    return matrix, {"file": Path(cfg.glove).name, "dim": dim, "coverage": round(coverage, 4),
                    "frozen": not cfg.train_embedding}


class _Augmenter:
    """Batch augmentation on raw 0-255 pixels; mirrors also swap caption targets
    and attention targets so captions stay true."""

    def __init__(self, cfg: TrainConfig, size: int):
        self.cfg, self.size = cfg, size

    def __call__(self, images, tgt, tgt_h, tgt_v, att):
        cfg = self.cfg
        b = tf.shape(images)[0]
        images = tf.cast(images, tf.float32)
        if cfg.augment_hflip:
            flip = tf.random.uniform([b]) < 0.5
            images = tf.where(flip[:, None, None, None], images[:, :, ::-1], images)
            tgt = tf.where(flip[:, None], tgt_h, tgt)
            if att is not None:
                att = tf.where(flip[:, None, None, None], att[:, :, :, ::-1], att)
        if cfg.augment_vflip:
            flip = tf.random.uniform([b]) < 0.5
            images = tf.where(flip[:, None, None, None], images[:, ::-1], images)
            tgt = tf.where(flip[:, None], tgt_v, tgt)
            if att is not None:
                att = tf.where(flip[:, None, None, None], att[:, :, ::-1], att)
        if cfg.augment_zoom > 0:
            # zoom in around the centre by up to augment_zoom; objects keep their grid cells
            frac = tf.random.uniform([b], 0, cfg.augment_zoom) / 2
            boxes = tf.stack([frac, frac, 1 - frac, 1 - frac], axis=1)
            images = tf.image.crop_and_resize(images, boxes, tf.range(b), [self.size, self.size])
        if cfg.augment_photometric:
            gain = tf.random.uniform([b, 1, 1, 1], 0.7, 1.3)
            bias = tf.random.uniform([b, 1, 1, 1], -20, 20)
            tint = tf.random.uniform([b, 1, 1, 3], 0.92, 1.08)
            noise = tf.random.normal(tf.shape(images)) * tf.random.uniform([b, 1, 1, 1], 0, 12)
            images = tf.clip_by_value(images * gain * tint + bias + noise, 0, 255)
        return images, tgt, att


def _tuned_tail_features(captioner, dataset, train_ids, val_ids, grounding, cfg: TrainConfig,
                         save_dir: Path, progress: bool):
    """Tune the backbone's tail (tail.py), then cache the decoder's features through it."""
    from .tail import tail_features, tune_tail
    if grounding is None:
        raise ValueError("tuning the backbone tail needs the scenes' categories: "
                         "train on a synthetic world (its scenes.jsonl)")
    record, trunk_train, trunk_val = tune_tail(captioner, dataset, train_ids, val_ids, grounding,
                                               cfg.tune_tail, save_dir, progress)
    captioner.config["backbone_tail"] = record
    return (tail_features(captioner, trunk_train, save_dir / TRAIN_FEATURES, progress),
            tail_features(captioner, trunk_val, save_dir / VAL_FEATURES, progress))


def _lr_schedule(cfg: TrainConfig, total_steps: int, base: float):
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base * 0.01, decay_steps=max(total_steps - cfg.warmup_steps, 1),
        warmup_target=base, warmup_steps=cfg.warmup_steps, alpha=0.02)


def train(dataset: CaptionDataset, out_dir, cfg: TrainConfig, grounding_file=None,
          resume: bool = False, progress: bool = True, extra_card: dict | None = None) -> Captioner:
    # Created first: a multi-worker strategy must exist before any other TF work.
    strategy = make_strategy(cfg.strategy)
    distributed = strategy is not None
    replicas = strategy.num_replicas_in_sync if distributed else 1
    if cfg.batch_size % replicas:
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over "
                         f"{replicas} replicas: use a multiple of {replicas}")
    chief, task_id = _worker_role(strategy) if distributed else (True, 0)
    out_dir = Path(out_dir)
    work = work_dir(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    # Non-chief workers save into a scratch folder of their own.
    save_dir = work if chief else work / f"worker-{task_id}"
    save_dir.mkdir(parents=True, exist_ok=True)
    scope = strategy.scope if distributed else contextlib.nullcontext   # a fresh one per `with`
    if distributed:
        log.info("strategy %s: %d replicas, %d images per replica and step",
                 cfg.strategy, replicas, cfg.batch_size // replicas)
    t_start = time.time()
    tf.keras.utils.set_random_seed(cfg.seed)
    vocab, length = prepare_vocabulary(dataset, cfg)
    log.info("vocabulary: %d tokens, max caption length %d words", len(vocab), length)
    matrix, glove_card = _embedding(vocab, cfg)
    decoder_cfg = dict(cfg.decoder, train_embedding=cfg.train_embedding if matrix is not None else True)
    if matrix is not None:
        decoder_cfg["embed_dim"] = matrix.shape[1]
    with scope():
        captioner = Captioner.build(vocab, cfg.backbone, decoder_cfg, length, matrix)
    grid = captioner.grid
    grounding = load_grounding(grounding_file) if grounding_file else None

    train_ids = dataset.splits["train"][: cfg.max_train_images]
    val_ids = dataset.splits.get("val") or dataset.splits.get("test") or []
    size = cfg.backbone.input_size
    seq = length + 1
    train_caps = {i: dataset.captions[i][: cfg.captions_per_image] for i in train_ids}
    train_s = build_samples(train_ids, train_caps, vocab, seq, grounding, grid, size)
    val_caps = {i: dataset.captions[i][: cfg.captions_per_image] for i in val_ids}
    val_s = build_samples(val_ids, val_caps, vocab, seq, grounding, grid, size)
    log.info("%d training captions on %d images, %d validation captions",
             len(train_s), len(train_ids), len(val_s))

    if cfg.finetune_backbone:
        train_x = load_images([dataset.image_path(i) for i in train_ids], size, progress)
        val_x = load_images([dataset.image_path(i) for i in val_ids], size, progress)
    elif cfg.tune_tail is not None:
        train_x, val_x = _tuned_tail_features(captioner, dataset, train_ids, val_ids, grounding,
                                              cfg, save_dir, progress)
    else:
        from .features import cached_features
        train_x = cached_features(captioner, dataset, train_ids, save_dir / TRAIN_FEATURES, progress)
        val_x = cached_features(captioner, dataset, val_ids, save_dir / VAL_FEATURES, progress)

    steps_per_epoch = max(len(train_s) // cfg.batch_size, 1)
    total = steps_per_epoch * cfg.epochs
    with scope():
        dec_opt = keras.optimizers.AdamW(_lr_schedule(cfg, total, cfg.learning_rate),
                                         weight_decay=cfg.weight_decay, clipnorm=5.0)
        bb_opt = keras.optimizers.AdamW(
            _lr_schedule(cfg, total, cfg.backbone_learning_rate or cfg.learning_rate),
            weight_decay=cfg.weight_decay, clipnorm=5.0) if cfg.finetune_backbone else None
    augment = _Augmenter(cfg, size)
    has_att = train_s.attention is not None and cfg.decoder.get("kind") == "attention"
    model_dec, model_bb = captioner.decoder, captioner.backbone
    if model_dec.kind == "attention":
        # most of a step is the per-cell products: bfloat16 halves them where it is
        # native; the bundle serves in float32 (reset below)
        model_dec.cell_dtype = cell_dtype_for(cfg.cell_precision)
        log.info("decoder cell products in %s", (model_dec.cell_dtype or tf.float32).name)
    dec_vars = model_dec.trainable_variables
    bb_vars = model_bb.trainable_variables if cfg.finetune_backbone else []

    def losses(x, tin, tgt, att, training, with_cam: bool = False):
        """(caption loss, attention grounding loss, Grad-CAM grounding loss)."""
        # cached features come as float16 and are cast here, in the graph (NumPy's cast
        # of a batch took 3 x longer than reading it)
        feats = model_bb(x, training=training) if cfg.finetune_backbone else tf.cast(x, tf.float32)
        if with_cam:
            # one grounded word per caption, at random: its Grad-CAM should fall on its object
            pick = pick_grounded_words(att)
            logits, alpha, cam = teacher_forcing_with_word_cam(model_dec, feats, tin, tgt, pick,
                                                               training)
        else:
            logits, alpha = model_dec((feats, tin), training=training)
        mask = tf.cast(tf.not_equal(tgt, vocab.pad_id), tf.float32)
        ce = keras.losses.sparse_categorical_crossentropy(tgt, logits, from_logits=True)
        if cfg.label_smoothing:
            smooth = -tf.reduce_mean(tf.nn.log_softmax(logits), -1)
            ce = (1 - cfg.label_smoothing) * ce + cfg.label_smoothing * smooth
        caption_loss = tf.reduce_sum(ce * mask) / tf.reduce_sum(mask)
        zero = tf.constant(0.0)
        if att is None:
            return caption_loss, zero, zero
        flat = tf.reshape(att, tf.shape(alpha))
        grounded_t = tf.cast(tf.reduce_sum(flat, -1) > 0, tf.float32)
        att_ce = -tf.reduce_sum(flat * tf.math.log(alpha + 1e-8), -1)
        att_loss = tf.reduce_sum(att_ce * grounded_t) / tf.maximum(tf.reduce_sum(grounded_t), 1.0)
        if not with_cam:
            return caption_loss, att_loss, zero
        inside = tf.cast(tf.reduce_sum(att * pick[:, :, None, None], 1) > 0, tf.float32)
        frac_in = tf.reduce_sum(cam * inside, [1, 2]) / (tf.reduce_sum(cam, [1, 2]) + 1e-6)
        has = tf.cast(tf.reduce_sum(inside, [1, 2]) > 0, tf.float32)
        cam_loss = -tf.reduce_sum(tf.math.log(frac_in + 1e-3) * has) / tf.maximum(tf.reduce_sum(has), 1.0)
        return caption_loss, att_loss, cam_loss

    use_cam = has_att and cfg.gradcam_weight > 0
    with scope():
        cam_weight = tf.Variable(0.0, trainable=False)

    def cam_weight_for(epoch: int) -> float:
        if epoch < cfg.gradcam_start_epoch:
            return 0.0
        ramp = (epoch - cfg.gradcam_start_epoch + 1) / max(cfg.gradcam_ramp_epochs, 1)
        return cfg.gradcam_weight * min(1.0, ramp)

    def replica_step(x, tin, tgt, tgt_h, tgt_v, att, with_cam=False):
        if cfg.finetune_backbone:
            x, tgt, att = augment(x, tgt, tgt_h, tgt_v, att)
        with tf.GradientTape() as tape:
            cap, attl, caml = losses(x, tin, tgt, att, True, with_cam=with_cam)
            loss = cap + cfg.attention_weight * attl + cam_weight * caml
            if replicas > 1:   # the optimizers sum the replicas' gradients
                loss = loss / replicas
        grads = tape.gradient(loss, dec_vars + bb_vars)
        dec_opt.apply_gradients(zip(grads[:len(dec_vars)], dec_vars))
        if bb_vars:
            bb_opt.apply_gradients(zip(grads[len(dec_vars):], bb_vars))
        return cap, attl, caml

    if not distributed:
        train_step = tf.function(replica_step, reduce_retracing=True)
    else:
        with scope():   # optimizer slots are created here, mirrored, not inside the step
            dec_opt.build(dec_vars)
            if bb_vars:
                bb_opt.build(bb_vars)
        per_replica = cfg.batch_size // replicas

        def split(batch):
            """One global batch -> this worker's replicas' slices (each worker draws
            the same global batches: same seed; every replica takes its own share)."""
            present = tuple(t for t in batch if t is not None)

            def value_fn(ctx):
                i = ctx.replica_id_in_sync_group
                return tuple(t[i * per_replica: (i + 1) * per_replica] for t in present)
            return strategy.experimental_distribute_values_from_function(value_fn)

        @tf.function(reduce_retracing=True)
        def distributed_step(batch, with_cam):
            def step(*b):
                return replica_step(*b, *(() if has_att else (None,)), with_cam=with_cam)
            out = strategy.run(step, args=batch)
            return tuple(strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for v in out)

        def train_step(*batch, with_cam=False):
            return distributed_step(split(batch), with_cam)

    @tf.function(reduce_retracing=True)
    def val_step(x, tin, tgt, att):
        if cfg.finetune_backbone:
            x = tf.cast(x, tf.float32)
        return losses(x, tin, tgt, att, False)[:2]

    def batches(samples: CaptionSamples, images, shuffle: bool, rng):
        order = rng.permutation(len(samples)) if shuffle else np.arange(len(samples))
        # Training drops the last partial batch: one input shape, no re-tracing.
        stop = len(order) - len(order) % cfg.batch_size if shuffle and len(order) >= cfg.batch_size else len(order)
        for s in range(0, stop, cfg.batch_size):
            idx = np.sort(order[s: s + cfg.batch_size])
            img = images[samples.image_index[idx]]
            att = samples.attention[idx] if has_att else None
            yield (tf.constant(img), tf.constant(samples.tokens_in[idx]),
                   tf.constant(samples.targets[idx]), tf.constant(samples.targets_hflip[idx]),
                   tf.constant(samples.targets_vflip[idx]),
                   None if att is None else tf.constant(att))

    ckpt = tf.train.Checkpoint(decoder=model_dec, backbone=model_bb, dec_opt=dec_opt,
                               epoch=tf.Variable(0), best=tf.Variable(np.inf),
                               **({"bb_opt": bb_opt} if bb_opt else {}))
    manager = tf.train.CheckpointManager(ckpt, save_dir / "checkpoints", max_to_keep=2)
    history = []
    if resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        history = (json.loads((save_dir / "history.json").read_text())
                   if (save_dir / "history.json").exists() else [])
        log.info("resumed from %s (epoch %d)", manager.latest_checkpoint, int(ckpt.epoch))
    rng = np.random.default_rng(cfg.seed + int(ckpt.epoch))
    stale = 0
    for epoch in range(int(ckpt.epoch), cfg.epochs):
        t0 = time.time()
        cam_weight.assign(cam_weight_for(epoch))
        bar = tqdm(batches(train_s, train_x, True, rng), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, unit="batch")
        cap_sum = att_sum = cam_sum = 0.0
        for n, (x, tin, tgt, th, tv, att) in enumerate(bar, 1):
            # the Grad-CAM loss is only computed in the epochs that weigh it (a second trace)
            cap, attl, caml = train_step(x, tin, tgt, th, tv, att,
                                         with_cam=use_cam and float(cam_weight) > 0)
            cap_sum += float(cap)
            att_sum += float(attl)
            cam_sum += float(caml)
            if n % 10 == 0:
                bar.set_postfix(loss=f"{cap_sum / n:.3f}", att=f"{att_sum / n:.3f}",
                                cam=f"{cam_sum / n:.3f}")
        val = [val_step(x, tin, tgt, att) for x, tin, tgt, _, _, att in
               batches(val_s, val_x, False, rng)]
        val_loss = float(np.mean([float(v[0]) for v in val])) if val else float("nan")
        record = {"epoch": epoch + 1, "loss": cap_sum / max(n, 1), "att_loss": att_sum / max(n, 1),
                  "gradcam_loss": cam_sum / max(n, 1),
                  "val_loss": val_loss, "seconds": round(time.time() - t0, 1)}
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, record)
        ckpt.epoch.assign(epoch + 1)
        if not val or val_loss < float(ckpt.best):
            ckpt.best.assign(val_loss if val else 0.0)
            model_dec.save_weights(str(save_dir / "best_decoder.weights.h5"))
            model_bb.save_weights(str(save_dir / "best_backbone.weights.h5"))
            stale = 0
        else:
            stale += 1
        manager.save()
        (save_dir / "history.json").write_text(json.dumps(history, indent=1))
        if stale >= cfg.patience:
            log.info("early stopping: validation loss has not improved for %d epochs", stale)
            break
    model_dec.cell_dtype = None
    if (save_dir / "best_decoder.weights.h5").exists():
        model_dec.load_weights(str(save_dir / "best_decoder.weights.h5"))
        model_bb.load_weights(str(save_dir / "best_backbone.weights.h5"))
    captioner.config.update({
        "training": dict(cfg.to_dict(), dataset=dataset.name, train_images=len(train_ids),
                         train_captions=len(train_s), epochs_run=len(history),
                         seconds=round(time.time() - t_start, 1), history=history,
                         **({"replicas": replicas} if distributed else {})),
        "backbone_trained": cfg.finetune_backbone,
        **({"glove": glove_card} if glove_card else {}),
        **(extra_card or {}),
    })
    if chief:
        captioner.save(out_dir)
    return captioner


def work_dir(out_dir) -> Path:
    """Where training a bundle into ``out_dir`` keeps its checkpoints and caches."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".work")


def pick_grounded_words(att):
    """att [B, T, h, w] (the named object's box per target word, zeros where a word
    names nothing) -> [B, T]: one grounded word per caption, at random, one-hot (a
    caption without one: zeros)."""
    grounded = tf.cast(tf.reduce_sum(att, [2, 3]) > 0, tf.float32)
    pick = tf.random.categorical(tf.math.log(grounded + 1e-9), 1)[:, 0]
    return tf.one_hot(pick, tf.shape(grounded)[1]) * grounded


def teacher_forcing_with_word_cam(decoder, feats, tin, tgt, pick, training, textbook=False):
    """Teacher forcing, and the textbook Grad-CAM of the picked words (pick [B, T], one-hot
    per caption), differentiable so that an outer tape can train on it:
    (logits [B, T, V], attention [B, T, N], cam [B, h, w]).

    Grad-CAM's channel weights are the cell mean of d s / d A. They are taken as the
    gradient with respect to the decoder's channel shift (a zero shift of every cell,
    see model/decoders.py), which is that sum, instead of d s / d A itself: the same
    weights, without a backward pass through every cell's layers (and through the
    ImageNet head per cell) in the first and the second derivative. ``textbook=True``
    takes d s / d A (the reference the tests and bench/train_step.py hold it to)."""
    shift = None if textbook else tf.zeros([tf.shape(feats)[0], feats.shape[-1]], feats.dtype)
    with tf.GradientTape(watch_accessed_variables=False) as inner:
        inner.watch(feats if textbook else shift)
        logits, alpha = decoder((feats, tin), training=training, channel_shift=shift)
        picked = tf.reduce_sum(token_logprobs(logits, tgt)[1] * pick)
    if textbook:
        weights = tf.reduce_mean(inner.gradient(picked, feats), [1, 2])
    else:
        cells = tf.cast(tf.shape(feats)[1] * tf.shape(feats)[2], feats.dtype)
        weights = inner.gradient(picked, shift) / cells
    cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", feats, weights))
    return logits, alpha, cam
