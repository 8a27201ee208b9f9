"""Caption decoders: GloVe-embedded LSTMs that read the backbone's feature map.

Both decoders expose the same three calls, so decoding and every explainer work
with either:

* ``encode(feature_map, channel_shift=None)`` -> ``memory`` (what the decoder keeps of
  the image; ``memory_from(cell_parts(feature_map))``, the two halves apart so that the
  search and the explainers share the costly first),
* ``initial_state(memory)`` -> LSTM state ``(h, c)``,
* ``step(tokens, state, memory)`` -> ``(logits, state, attention)`` for one token.

``call((feature_map, tokens_in))`` runs teacher forcing over a whole caption
prefix and returns per-step logits and attention weights.

``channel_shift`` [B, C] (zeros) exists for its gradient: encoding with it equals
encoding ``feature_map + shift`` on every cell, so d s / d shift is the sum over cells
of d s / d A, which is what Grad-CAM's channel weights need. The shift enters after
the layers that read each cell (its share goes through their kernels once, not once
per cell), so that gradient costs a fraction of the whole d s / d A.

An attention decoder with the ImageNet head can also add an ImageNet noun prior to
its logits (``set_noun_prior``): for each noun that names ImageNet classes, the
ImageNet evidence for those classes beyond their uniform share (log ratio, never
negative, capped) times a weight. The evidence is the head's on the whole frame
(pooling "frame": the same bias at every step) or on the cells the step attends
(pooling "attention": while the decoder says the second object's noun, the evidence
is the second object's, so one object's class is not lent to both). It agrees with
the article (``articles``): after "a" or "an" only the nouns taking that article get
the prior, and where an article may come next the article of the noun the prior
favours most keeps its score while the other is lowered by the difference, so the
prior never turns "an orange" into "an ball" (and never raises any token for it).
It is part of the model's scores, so search, teacher forcing and every gradient see
the same probabilities.

``merge`` is the classic captioner: pooled image vector -> dropout -> dense,
caption prefix -> embedding -> dropout -> LSTM, added, dense, softmax.
``attention`` is Show, Attend and Tell (Xu et al. 2015): soft attention over
the grid at every step with a deep output layer; a learned position embedding
is added to the projected cells so spatial words ("left of") can be read; the
deep output is a ReLU layer over the word, the LSTM state and the context.
"""
from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf
from keras import layers

DECODER_KINDS = ("merge", "attention")
PRIOR_EPS = 1e-3      # keeps log(q / r) finite; below it ImageNet evidence counts as none
PRIOR_CAP = 5.0       # nats: the prior alone never outweighs everything the decoder read
PRIOR_POOLINGS = ("frame", "attention")   # where the prior's ImageNet evidence is read


class CaptionDecoder(keras.Model):
    def __init__(self, vocab_size: int, kind: str = "attention", grid_cells: int = 1,
                 embed_dim: int = 100, units: int = 256, dropout: float = 0.3,
                 embedding_matrix: np.ndarray | None = None, train_embedding: bool = False,
                 imagenet_head: int = 0, **kwargs):
        super().__init__(**kwargs)
        if kind not in DECODER_KINDS:
            raise ValueError(f"decoder kind must be one of {DECODER_KINDS}, got {kind!r}")
        self.kind, self.vocab_size, self.grid_cells = kind, vocab_size, grid_cells
        self.units, self.embed_dim = units, embed_dim
        if embedding_matrix is not None:
            if embedding_matrix.shape != (vocab_size, embed_dim):
                raise ValueError(f"embedding matrix shape {embedding_matrix.shape} != "
                                 f"({vocab_size}, {embed_dim})")
            init = keras.initializers.Constant(embedding_matrix)
            trainable = train_embedding
        else:  # no GloVe file: the embedding is learned from scratch
            init, trainable = "uniform", True
        self.embedding = layers.Embedding(vocab_size, embed_dim, embeddings_initializer=init,
                                          trainable=trainable, name="embedding")
        self.embed_dropout = layers.Dropout(dropout)
        self.cell = layers.LSTMCell(units, name="lstm")
        self.out_dropout = layers.Dropout(dropout)
        self.logits_layer = layers.Dense(vocab_size, name="logits")
        self.imagenet_head = self.noun_prior = self.prior_articles = None   # set_noun_prior
        # The dtype of the per-cell products' inputs (cell_parts): None (float32), or
        # bfloat16 while training where the hardware multiplies it fast (they are most
        # of a training step); always float32 when the bundle serves.
        self.cell_dtype = None
        if kind == "merge":
            self.image_dropout = layers.Dropout(dropout)
            self.image_dense = layers.Dense(units, activation="relu", name="image_dense")
            self.merge_dense = layers.Dense(units, activation="relu", name="merge_dense")
        else:
            # Optional per-cell ImageNet evidence: the backbone's own frozen classifier
            # applied to every cell, its class scores read beside the features.
            # It carries what ImageNet taught (a cat is a cat) into a decoder trained
            # on synthetic scenes only.
            self.imagenet_head = (layers.Dense(imagenet_head, trainable=False, name="imagenet_head")
                                  if imagenet_head else None)
            # A ReLU layer per grid cell: its unit selectivity keeps word gradients
            # specific to the attended object's features.
            self.cell_proj = layers.Dense(units, activation="relu", name="cell_proj")
            self.position = self.add_weight(shape=(grid_cells, units), name="position",
                                            initializer=keras.initializers.RandomNormal(stddev=0.02))
            self.att_keys = layers.Dense(units, use_bias=False, name="att_keys")
            self.att_query = layers.Dense(units, name="att_query")
            self.att_score = layers.Dense(1, name="att_score")
            self.init_h = layers.Dense(units, activation="tanh", name="init_h")
            self.init_c = layers.Dense(units, activation="tanh", name="init_c")
            # Deep output: a ReLU layer over [word, state, context]. Its gating makes
            # each word's gradient depend on what is attended, not only on the word.
            self.deep = layers.Dense(units, activation="relu", name="deep_output")

    # -- the ImageNet noun prior -------------------------------------------------
    def set_noun_prior(self, class_tokens: np.ndarray | None, weight: float = 0.0,
                       pooling: str = "frame", articles=None):
        """class_tokens [classes, V]: 1 where an ImageNet class names a vocabulary token
        (None or weight 0: no prior); pooling: one of PRIOR_POOLINGS; articles: (article
        token ids [A], [A, V] with 1 where a noun takes that article) or None (no
        agreement). Compiled functions built before keep the old prior."""
        if pooling not in PRIOR_POOLINGS:
            raise ValueError(f"prior pooling must be one of {PRIOR_POOLINGS}, got {pooling!r}")
        if class_tokens is None or not weight or self.imagenet_head is None:
            self.noun_prior = self.prior_articles = None
            return
        m = np.asarray(class_tokens, np.float32)
        self.noun_prior = (tf.constant(m), tf.constant(m.mean(0)), float(weight), pooling)
        if articles is None or not len(articles[0]):
            self.prior_articles = None
            return
        ids, nouns = np.asarray(articles[0], np.int32), np.asarray(articles[1], np.float32)
        # (ids, nouns of each article, any article's nouns, one-hot rows of the articles):
        # constants of every step, made once here
        self.prior_articles = (tf.constant(ids), tf.constant(nouns), tf.constant(nouns.max(0)),
                               tf.constant(np.eye(self.vocab_size, dtype=np.float32)[ids]))

    def _agree_with_articles(self, bias, tokens):
        """bias [B, V] (the prior, >= 0) after the previous tokens [B]: nouns whose article
        is not the previous token's lose it; each article gets the largest bias of its
        nouns minus the largest of all (<= 0: the favoured noun's article is untouched)."""
        ids, nouns, any_noun, one_hot = self.prior_articles
        prev = tf.cast(tf.equal(tokens[:, None], ids[None]), bias.dtype)          # [B, A]
        bias *= (1.0 - tf.reduce_sum(prev, 1, keepdims=True) * any_noun
                 + tf.matmul(prev, nouns))
        best = tf.reduce_max(bias[:, None, :] * nouns[None], axis=-1)              # [B, A]
        shift = best - tf.reduce_max(best, axis=-1, keepdims=True)
        return bias + tf.matmul(shift, one_hot)

    def _noun_bias(self, pooled_logits):
        """pooled_logits [B, classes] (the head's logits on pooled features: the frame's
        mean, or the attention-weighted mean, of its cell logits, the head being linear;
        a constant per row changes nothing) -> [B, V]:
        weight * min(CAP, max(0, log(q / r))), q the ImageNet probability of a token's
        classes, r their uniform share; 0 for tokens with no class."""
        matrix, share, weight, _ = self.noun_prior
        probs = tf.nn.softmax(pooled_logits, axis=-1)
        q = tf.matmul(probs, matrix)
        ratio = tf.math.log((q + PRIOR_EPS) / (share + PRIOR_EPS))
        return weight * tf.clip_by_value(ratio, 0.0, PRIOR_CAP)

    # -- the three calls shared by decoding and explanations -------------------
    def encode(self, feature_map, training=False, channel_shift=None):
        """feature_map [B, h, w, C] -> memory (a tuple of tensors); channel_shift [B, C]:
        as if added to every cell of feature_map (see the module docstring)."""
        return self.memory_from(self.cell_parts(feature_map), channel_shift, training)

    def cell_parts(self, feature_map) -> tuple:
        """What encoding reads of the cells, before any channel shift: the per-cell
        products that cost (searching and the explainers' channel pass share them).
        merge: (pooled features,); attention: (cells @ their rows of cell_proj's kernel,)
        and with the ImageNet head (centred class logits [B, N, K], their variance
        [B, N], their projection by their rows of the kernel, pooled logits [B, K])."""
        if self.kind == "merge":
            return (tf.reduce_mean(feature_map, axis=[1, 2]),)
        shape = tf.shape(feature_map)
        channels = feature_map.shape[-1]
        cells = tf.reshape(feature_map, [shape[0], shape[1] * shape[2], channels])
        if not self.cell_proj.built:    # its kernel is read directly
            head = self.imagenet_head.units if self.imagenet_head is not None else 0
            self.cell_proj.build((None, None, channels + head))
        if self.imagenet_head is not None and not self.imagenet_head.built:
            self.imagenet_head.build((None, None, channels))
        parts = (_per_cell(cells, self.cell_proj.kernel[:channels], self.cell_dtype),)
        if self.imagenet_head is None:
            return parts
        # Class scores standardised per cell (log-probabilities would bring values near
        # -20 beside features in [0, 6], and training stalls on that scale).
        logits = (_per_cell(cells, self.imagenet_head.kernel, self.cell_dtype)
                  + self.imagenet_head.bias)                                 # [B, N, K]
        centred = logits - tf.reduce_mean(logits, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.square(centred), axis=-1)              # [B, N]
        return parts + (centred, variance,
                        _per_cell(centred, self.cell_proj.kernel[channels:], self.cell_dtype),
                        tf.reduce_mean(logits, axis=1))

    def cell_class_logits(self, parts):
        """The ImageNet head's logits of each cell, centred per cell, from ``cell_parts``
        ([B, N, K]); None for a decoder without the head."""
        return parts[1] if self.kind != "merge" and self.imagenet_head is not None else None

    def gate_cells(self, parts, gate) -> tuple:
        """cell_parts of the feature map with every cell n scaled by gate [B, N] (1: as
        it is), made from the parts: each is linear in a cell's features but for the
        ImageNet head's bias b, so with bc = b centred, a cell's centred logits become
        g (c - bc) + bc, their projection g (s - bc W) + bc W and the variance follows.
        The frame's pooled logits keep only what softmax reads (a constant per row is
        dropped). d s_t / d g_n at 1 is sum_c ds_t/dA_nc A_nc: the cell's gradient x
        activation, which ACE's segment importance sums, at the channel pass's cost.
        An attention decoder's alone (a merge decoder's parts are already pooled)."""
        if self.kind == "merge":
            raise ValueError("a merge decoder pools its cells first: no cell to gate")
        g = gate[..., None]
        gated = (parts[0] * g,)
        if self.imagenet_head is None:
            return gated
        centred, _, scores, _ = parts[1:]
        channels = self.cell_proj.kernel.shape[0] - self.imagenet_head.units
        bc = self.imagenet_head.bias - tf.reduce_mean(self.imagenet_head.bias)
        bc_scores = tf.linalg.matvec(self.cell_proj.kernel[channels:], bc, transpose_a=True)
        centred = g * (centred - bc) + bc
        return gated + (centred, tf.reduce_mean(tf.square(centred), axis=-1),
                        g * (scores - bc_scores) + bc_scores, tf.reduce_mean(centred, axis=1))

    def memory_from(self, parts, channel_shift=None, training=False) -> tuple:
        """cell_parts -> memory, the channel shift [B, C] added to every cell on the way.

        cell_proj (a ReLU layer) reads [cell, standardised class scores]. The shift meets
        its kernel and the head's once, not once per cell, so its gradient stays cheap:
        with u = shift @ head kernel, centred, and c a cell's centred logits, the shifted
        cell's scores project to (c W + u W) / sd, sd^2 = mean(c^2) + 2 mean(c u) + mean(u^2)."""
        if self.kind == "merge":
            pooled = parts[0] if channel_shift is None else parts[0] + channel_shift
            return (self.image_dense(self.image_dropout(pooled, training=training)),)
        channels = self.cell_proj.kernel.shape[0] - (
            self.imagenet_head.units if self.imagenet_head is not None else 0)
        projected = parts[0]
        if channel_shift is not None:
            projected += tf.matmul(channel_shift, self.cell_proj.kernel[:channels])[:, None]
        bias = ()
        if self.imagenet_head is not None:
            centred, variance, scores, pooled = parts[1:]
            if channel_shift is not None:
                u = tf.matmul(channel_shift, self.imagenet_head.kernel)         # [B, K]
                pooled += u
                u -= tf.reduce_mean(u, axis=-1, keepdims=True)
                variance += (2.0 * tf.einsum("bnk,bk->bn", centred, u) / float(u.shape[-1])
                             + tf.reduce_mean(tf.square(u), axis=-1, keepdims=True))
                scores += tf.matmul(u, self.cell_proj.kernel[channels:])[:, None]
            projected += scores * tf.math.rsqrt(variance + 1e-6)[..., None]
            if self.noun_prior is not None and self.noun_prior[3] == "attention":
                # each cell's class logits (the shift's share added): the step pools them
                bias = (centred if channel_shift is None else centred + u[:, None],)
            elif self.noun_prior is not None:
                bias = (self._noun_bias(pooled),)
        values = tf.nn.relu(projected + self.cell_proj.bias) + self.position
        return (values, self.att_keys(values)) + bias

    def initial_state(self, memory):
        if self.kind == "merge":
            zeros = tf.zeros([tf.shape(memory[0])[0], self.units])
            return zeros, zeros
        mean = tf.reduce_mean(memory[0], axis=1)
        return self.init_h(mean), self.init_c(mean)

    def step(self, tokens, state, memory, training=False):
        """One decoding step. tokens [B] int -> logits [B, V], new state, attention [B, N]."""
        emb = self.embed_dropout(self.embedding(tokens), training=training)
        h, c = state
        if self.kind == "merge":
            out, (h, c) = self.cell(emb, [h, c], training=training)
            merged = self.merge_dense(memory[0] + out)
            logits = self.logits_layer(self.out_dropout(merged, training=training))
            attention = tf.zeros([tf.shape(tokens)[0], self.grid_cells])
            return logits, (h, c), attention
        values, keys = memory[:2]
        scores = self.att_score(tf.tanh(keys + self.att_query(h)[:, None, :]))[..., 0]
        attention = tf.nn.softmax(scores, axis=-1)
        context = tf.einsum("bn,bnu->bu", attention, values)
        out, (h, c) = self.cell(tf.concat([emb, context], -1), [h, c], training=training)
        deep = self.deep(tf.concat([emb, out, context], -1))
        logits = self.logits_layer(self.out_dropout(deep, training=training))
        if len(memory) > 2:                           # the ImageNet noun prior
            bias = (self._noun_bias(tf.einsum("bn,bnk->bk", attention, memory[2]))
                    if self.noun_prior[3] == "attention" else memory[2])
            if self.prior_articles is not None:
                bias = self._agree_with_articles(bias, tokens)
            logits = logits + tf.cast(bias, logits.dtype)
        return logits, (h, c), attention

    def call(self, inputs, training=False, channel_shift=None):
        """Teacher forcing. inputs = (feature_map, tokens_in [B, T]) ->
        (logits [B, T, V], attention [B, T, N])."""
        feature_map, tokens_in = inputs
        memory = self.encode(feature_map, training=training, channel_shift=channel_shift)
        return self.teacher_forcing(memory, tokens_in, training)

    def teacher_forcing(self, memory, tokens_in, training=False):
        """memory, tokens_in [B, T] -> (logits [B, T, V], attention [B, T, N])."""
        state = self.initial_state(memory)
        if tokens_in.shape[1] is None:   # a graph built for captions of any length
            return self._teacher_forcing_loop(tokens_in, state, memory, training)
        logits, attention = [], []
        for t in range(tokens_in.shape[1]):
            step_logits, state, step_att = self.step(tokens_in[:, t], state, memory, training)
            logits.append(step_logits)
            attention.append(step_att)
        return tf.stack(logits, axis=1), tf.stack(attention, axis=1)

    def _teacher_forcing_loop(self, tokens_in, state, memory, training):
        """Teacher forcing as a tf.while_loop, for a length known only at run time: one
        compiled graph (and one copy of its cached buffers) then serves every length."""
        steps = tf.shape(tokens_in)[1]
        dtype = self.logits_layer.compute_dtype
        logits = tf.TensorArray(dtype, size=steps, element_shape=[None, self.vocab_size])
        attention = tf.TensorArray(dtype, size=steps, element_shape=[None, self.grid_cells])

        def body(t, state, logits, attention):
            step_logits, state, step_att = self.step(tokens_in[:, t], state, memory, training)
            return t + 1, state, logits.write(t, step_logits), attention.write(t, step_att)

        _, _, logits, attention = tf.while_loop(lambda t, *_: t < steps, body,
                                                (tf.constant(0), state, logits, attention))
        return (tf.transpose(logits.stack(), [1, 0, 2]),
                tf.transpose(attention.stack(), [1, 0, 2]))

    def build_for(self, feature_shape, max_len: int):
        """Create all weights by running once on zeros of the given feature shape."""
        self((tf.zeros((1,) + tuple(feature_shape)), tf.zeros((1, max_len), tf.int32)))
        return self


def _per_cell(cells, kernel, dtype=None):
    """cells [B, N, K] @ kernel [K, U] -> [B, N, U] float32, as one 2-D matmul (a rank-3 by
    rank-2 batch matmul crashed inside TensorFlow's vectorised Jacobian); dtype: the
    product's inputs cast to it (bfloat16 while training, see cell_dtype)."""
    shape = tf.shape(cells)
    flat = tf.reshape(cells, [-1, cells.shape[-1]])
    if dtype is not None:
        flat, kernel = tf.cast(flat, dtype), tf.cast(kernel, dtype)
    flat = tf.cast(tf.matmul(flat, kernel), tf.float32)
    return tf.reshape(flat, [shape[0], shape[1], kernel.shape[-1]])
