"""HuBERT (`--method=hubert`, then `--method=hubert_iter2`; Hsu, Bolte, Tsai, Lakhotia,
Salakhutdinov, Mohamed 2021, "HuBERT: Self-Supervised Speech Representation Learning by
Masked Prediction of Hidden Units"): raw audio -> the speech Transformer of wav2vec 2.0
with span-masked frames -> at every masked frame, a distribution over C clusters; the
targets ("hidden units") are k-means cluster ids of frame features, made once before
training:

* iteration 1 (`hubert`): k-means of the 39-d MFCC frames (13 coefficients, deltas,
  delta-deltas) at the encoder's 20 ms frames (`keras_ssl.data.mfcc_targets`);
* iteration 2 (`hubert_iter2`, a stage: `--parent_run` names a finished `hubert` run):
  k-means of the frames of one Transformer block (`--target_layer`) of the parent; a new
  model trains from scratch on them.

    keras-ssl-train --flagfile=flags/hubert_spoken_digits.cfg         # iteration 1
    keras-ssl-train --flagfile=flags/hubert_iter2_spoken_digits.cfg   # iteration 2 (--parent_run: the run above)
    keras-ssl-evaluate --model_dir=runs/hubert_iter2_spoken_digits    # probes per layer vs MFCCs; task, purity
    keras-ssl-export --model_dir=runs/hubert_iter2_spoken_digits      # WAV -> frames of a layer, pooled embedding

Each run's `prepare` step fits the k-means (scikit-learn's `MiniBatchKMeans`, seeded by
`--seed`) on the training clips' frames and saves the `centroids`, every training clip's
`targets` (int32 `[clips, frames]`) and, for a labelled dataset, the targets' `purity`
and `pnmi` against the word labels in the run's `prepared.npz`; training reads the
(waveform, targets) pairs. In user code:

    from keras_ssl.data.mfcc_targets import mfcc_frames, batched_frames, fit_kmeans, assign_clusters
    from keras_ssl.models.hubert import HuBERT
    from keras_ssl.speech_transformer import speech_transformer
    frames = batched_frames(mfcc_frames, waveforms)              # [N, 49, 39] for 1 s clips
    targets = assign_clusters(frames, fit_kmeans(frames, 100, seed=0))
    model = HuBERT(speech_transformer(), num_clusters=100, num_samples=waveforms.shape[1])
    model.compile(optimizer="adam")
    model.fit(waveforms, targets, batch_size=32, epochs=10)

The speech Transformer is `keras_ssl.speech_transformer` (wav2vec 2.0's too), the loss
`keras_ssl.losses.hubert`, the span mask `keras_ssl.data.masking.span_mask`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.masking import SPAN_LENGTH, span_mask
from keras_ssl.errors import UserError
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.models.codebook import replica_sum
from keras_ssl.models.global_batch import split_data
from keras_ssl.models.hooks import ParameterGroup
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.vae import _rows_of_this_replica
from keras_ssl.speech_transformer import (RECEPTIVE_FIELD, SPEECH_DROPOUT, conv_norm_option, conv_width_option,
                                          feature_encoder_variables, feature_frames, heads_option, layers_option,
                                          position_groups_option, position_kernel_option, scaled_width,
                                          speech_features, speech_transformer, transformer_blocks, width_option)

HUBERT_MASK_PROB = 0.08  # Hsu et al. 2021: p = 8% of the frames start a span of l = 10
FRAMES_BATCH = 64  # clips per forward pass when a parent's frames are computed (prepare, evaluation)


@dataclasses.dataclass
class HuBERTOptions:
    """HuBERT's hyper-parameters. Sources (Hsu et al. 2021, the BASE model, unless said):
    span masks p = 8%, l = 10; 100 k-means clusters of 39-d MFCC frames in the first
    iteration; the cosine logits' temperature tau = 0.1; the loss on masked frames only
    (alpha = 1); the speech Transformer of wav2vec 2.0 (section "Implementation"), the
    feature encoder's gradient scaled by 0.1; dropout 0.1. fairseq's
    `hubert_base_librispeech` config: the projection of the last layer and the cluster
    embeddings 256 wide (`final_dim`), the feature penalty weight 10 (`loss_weights
    [10]`), `feature_grad_mult` 0.1. Ours, for 2 CPU cores: a 128-channel feature encoder
    (512 in the paper), 4 Transformer blocks of width 256 with 4 heads (BASE: 12 of 768,
    12 heads); 100 clusters in both iterations (the paper: 500 in the second), so that
    their purities compare like with like."""

    conv_width: int = conv_width_option()
    conv_norm: str = conv_norm_option()
    transformer_layers: int = layers_option()
    transformer_width: int = width_option()
    transformer_heads: int = heads_option()
    position_kernel: int = position_kernel_option()
    position_groups: int = position_groups_option()
    dropout: float = option(SPEECH_DROPOUT, "HuBERT: dropout of the speech Transformer's input, attention weights and "
                            "residual branches (HuBERT BASE: 0.1)", check=lambda v: 0 <= v < 1,
                            requirement="in [0, 1)")
    mask_prob: float = option(HUBERT_MASK_PROB, "HuBERT: the probability that a frame starts a masked span (the "
                              "paper's p: 8%)", check=lambda v: 0 < v <= 1, requirement="in (0, 1]")
    mask_span: int = option(SPAN_LENGTH, "frames a masked span covers (HuBERT: l = 10)", check=lambda v: v >= 1,
                            requirement=">= 1")
    num_clusters: int = option(100, "k-means clusters whose ids HuBERT predicts: of the MFCC frames (hubert; the "
                               "paper's first iteration: 100) or of the parent's frames (hubert_iter2; ours, the "
                               "paper: 500)", check=lambda v: v >= 2, requirement=">= 2")
    final_dim: int = option(256, "width the last layer and the cluster embeddings are projected to before their "
                            "cosine (fairseq's hubert_base: 256)", check=lambda v: v >= 1, requirement=">= 1")
    logit_temperature: float = option(0.1, "tau, the temperature of the cosine logits (wav2vec 2.0, HuBERT: 0.1)",
                                      check=lambda v: v > 0, requirement="> 0")
    unmasked_weight: float = option(0.0, "HuBERT: weight of the mean cross-entropy of the unmasked frames beside "
                                    "the masked frames' (the paper's alpha = 1: 0; its ablation alpha = 0.5: 1)",
                                    check=lambda v: v >= 0, requirement=">= 0")
    feature_penalty: float = option(10.0, "weight of the mean squared feature-encoder output in the loss (fairseq's "
                                    "wav2vec2_base and hubert_base: 10)", check=lambda v: v >= 0, requirement=">= 0")
    feature_gradient_scale: float = option(0.1, "factor of the feature encoder's gradients (wav2vec 2.0, HuBERT: "
                                           "0.1)", check=lambda v: v >= 0, requirement=">= 0")
    representation_layer: int = option(0, "the Transformer block whose frames are served and mean-pooled into the "
                                       "representation, 1..transformer_layers; 0: the last, after the final "
                                       "LayerNorm (ours)", check=lambda v: v >= 0, requirement=">= 0")


@dataclasses.dataclass
class HuBERTIteration2Options(HuBERTOptions):
    """HuBERT's second iteration: HuBERT's options, and which block of the parent (the
    first iteration's model) is clustered. Source of the default: ours, for the 4-block
    model (the paper clusters block 6 of BASE's 12, the middle of the network)."""

    target_layer: int = option(2, "hubert_iter2: the parent's Transformer block whose frames are clustered into "
                               "the targets, 1..its blocks (ours, of 4; the paper: block 6 of BASE's 12)",
                               check=lambda v: v >= 1, requirement=">= 1")


@keras.saving.register_keras_serializable(package="keras_ssl")
class ClusterLogits(keras.layers.Layer):
    """Projected frames `[..., D]` -> float32 logits `[..., clusters]`: the cosine with a
    learned embedding per cluster (fairseq's `label_embs_concat`, initialised U(0, 1)),
    over `temperature` (`keras_ssl.losses.hubert_logits`)."""

    def __init__(self, clusters, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self.clusters, self.temperature = int(clusters), float(temperature)

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="cluster_embeddings", shape=(self.clusters, int(input_shape[-1])),
                                          initializer=keras.initializers.RandomUniform(0.0, 1.0))
        self.built = True

    def call(self, x):
        return losses.hubert_logits(x, self.embeddings, self.temperature)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.clusters)

    def compute_output_spec(self, x):
        return keras.KerasTensor((*x.shape[:-1], self.clusters), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(clusters=self.clusters, temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class HuBERT(MethodModel):
    """HuBERT (Hsu et al. 2021) on 16 kHz waveforms, trained on given frame targets.

    The `encoder` (`keras_ssl.speech_transformer.speech_transformer`) maps a clip to a
    frame every 20 ms (`feature_frames(samples)`: 49 for 1 s); per clip, frames are
    masked in spans (`keras_ssl.data.masking.span_mask`: every frame starts a span of
    `mask_span` with probability `mask_prob`) and replaced by the learned mask embedding
    after the projection. The `head` projects the last block's output o_t to
    `final_dim` (`final_proj`) and scores it against an embedding e_c per cluster
    (`ClusterLogits`): logits `cos(A o_t, e_c) / logit_temperature`. With `targets`
    z_t (int cluster ids `[B, T]`, given with the waveforms), the loss of the global batch:

        L = mean over masked frames of CE_t + w * mean over unmasked frames of CE_t
            + lambda * mean(f^2)

    CE_t = -log softmax(logits_t)[z_t] (`keras_ssl.losses.hubert_loss`), w =
    `unmasked_weight` (0: the paper's masked-only loss), and fairseq's penalty on the
    feature encoder's output f (before its LayerNorm), lambda = `feature_penalty`. The
    feature encoder's gradients are multiplied by `feature_gradient_scale` (a parameter
    group, as in wav2vec 2.0).

    Replicas: the mask is drawn for the global batch from `(seed, step)` and each replica
    takes its rows; each replica returns the sum of its masked terms over the masked
    frames of the global batch (a sum over replicas), likewise for the unmasked ones,
    plus its share of the penalty, so loss and gradients equal one device's on the
    global batch.

    Metrics: `loss`, `masked_loss` and `masked_accuracy` (the target is the argmax, over
    the masked frames), `unmasked_loss`, `unmasked_accuracy`, `feature_penalty`,
    `masked_fraction`.

    The representation (`predict`, the served `embedding`) is the mean over time of the
    frames of block `representation_layer` (0: the last, after the final LayerNorm) of
    the unmasked clip; `frames` gives those frames, `layer_frames` any block's (what a
    second iteration clusters), `probe_frames` every block's and the latents. `fit()`
    takes `(waveforms, targets)`: float `[B, samples]` in [-1, 1] at 16 kHz and int
    `[B, feature_frames(samples)]` in `[0, num_clusters)` (see the module docstring).
    `num_samples`: the clip length it is trained and served at.
    """

    MODALITY = "audio"  # waveform batches [batch, samples]: checked by keras_ssl.modalities.audio
    SUB_MODELS = ("encoder", "head")
    TRACKED = ("loss", "masked_loss", "masked_accuracy", "unmasked_loss", "unmasked_accuracy", "feature_penalty",
               "masked_fraction")

    def __init__(self, encoder, head=None, num_clusters=HuBERTOptions.num_clusters, final_dim=HuBERTOptions.final_dim,
                 logit_temperature=HuBERTOptions.logit_temperature, unmasked_weight=HuBERTOptions.unmasked_weight,
                 feature_penalty=HuBERTOptions.feature_penalty,
                 feature_gradient_scale=HuBERTOptions.feature_gradient_scale, mask_prob=HuBERTOptions.mask_prob,
                 mask_span=HuBERTOptions.mask_span, representation_layer=HuBERTOptions.representation_layer,
                 num_samples=16000, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_blocks = len(transformer_blocks(encoder))
        checks = (("num_samples", num_samples, num_samples >= RECEPTIVE_FIELD, f">= {RECEPTIVE_FIELD} (one 20 ms "
                   "frame)"),
                  ("num_clusters", num_clusters, num_clusters >= 2, ">= 2"),
                  ("mask_prob", mask_prob, 0 < mask_prob <= 1, "in (0, 1]"),
                  ("mask_span", mask_span, mask_span >= 1, ">= 1"),
                  ("logit_temperature", logit_temperature, logit_temperature > 0, "> 0"),
                  ("unmasked_weight", unmasked_weight, unmasked_weight >= 0, ">= 0"),
                  ("representation_layer", representation_layer, 0 <= representation_layer <= self.num_blocks,
                   f"in 0..{self.num_blocks} (the encoder's blocks; 0: the last)"))
        for name, value, ok, requirement in checks:
            if not ok:
                raise UserError(f"{name} must be {requirement}, got {value!r}")
        self.num_clusters, self.final_dim = int(num_clusters), int(final_dim)
        self.logit_temperature, self.unmasked_weight = float(logit_temperature), float(unmasked_weight)
        self.feature_penalty, self.feature_gradient_scale = float(feature_penalty), float(feature_gradient_scale)
        self.mask_prob, self.mask_span = float(mask_prob), int(mask_span)
        self.representation_layer = int(representation_layer)
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.frame_count = feature_frames(self.num_samples)
        self.width = int(encoder.output_shape[-1])
        self.head = head if head is not None else keras.Sequential(
            [keras.Input((None, self.width)), keras.layers.Dense(self.final_dim, name="final_proj"),
             ClusterLogits(self.num_clusters, self.logit_temperature, name="cluster_logits")], name="head")
        self.build()

    def checked_inputs(self, x):
        """`x` as float32 `[batch, samples]` if `check_batch` accepts it."""
        return tf.cast(super().checked_inputs(x), tf.float32)

    def check_targets(self, shape, dtype, frames=None):
        """A `UserError` unless `shape`/`dtype` (a `tf.TensorShape` and a dtype; None:
        no targets) can be cluster ids `[clips, frames]` for clips of `frames` frames (an
        int, or None when not known yet)."""
        if shape is None:
            raise UserError("HuBERT predicts a k-means cluster id per 20 ms frame: fit on (waveforms, targets), "
                            "targets int [clips, frames] (keras_ssl.data.mfcc_targets: fit_kmeans, "
                            "assign_clusters)")
        if not tf.as_dtype(dtype).is_integer:
            raise UserError(f"HuBERT's targets are int cluster ids [clips, frames], got {tf.as_dtype(dtype).name}")
        shape = tf.TensorShape(shape)
        if shape.rank is not None and shape.rank != 2:
            raise UserError(f"HuBERT's targets are cluster ids [clips, frames], got shape {shape}")
        if shape.rank == 2 and shape[1] is not None and isinstance(frames, int) and shape[1] != frames:
            raise UserError(f"HuBERT's targets have {shape[1]} frames per clip; the clips give {frames} (one per "
                            "20 ms: keras_ssl.speech_transformer.feature_frames)")

    def checked_targets(self, targets, frames):
        """int32 `[B, frames]` cluster ids (`check_targets`; a frame count known only when
        the step runs is asserted there)."""
        if targets is None:
            self.check_targets(None, None)
        targets = tf.convert_to_tensor(targets)
        self.check_targets(targets.shape, targets.dtype, frames)
        if targets.shape[1] is None or not isinstance(frames, int):
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(targets)[1], frames, message="HuBERT's targets need one cluster id per 20 ms frame "
                    "of the clips (keras_ssl.speech_transformer.feature_frames)")]):
                targets = tf.identity(targets)
        return tf.cast(targets, tf.int32)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras's `fit` on `(waveforms, targets)`: arrays `x`, `y`, or a `tf.data` of such
        pairs; targets missing, or of the wrong dtype, rank or frame count (or, in an array,
        out of range), are refused here in one `UserError`, before Keras traces its step."""
        spec_x, spec_y = x, y
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec_x, spec_y = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, None)
        shape_x = getattr(spec_x, "shape", None)
        if shape_x is not None and (spec_y is None or hasattr(spec_y, "shape")):
            samples = tuple(shape_x)[-1] if len(shape_x) == 2 else None
            self.check_targets(None if spec_y is None else spec_y.shape, None if spec_y is None else spec_y.dtype,
                               feature_frames(int(samples)) if samples is not None else None)
        if isinstance(y, np.ndarray) and y.size and (y.min() < 0 or y.max() >= self.num_clusters):
            raise UserError(f"HuBERT's targets are cluster ids in 0..{self.num_clusters - 1} (num_clusters="
                            f"{self.num_clusters}), got ids from {y.min()} to {y.max()}")
        return super().fit(x, y, *args, **kwargs)

    def _inputs(self, data):
        x, y = split_data(data)
        waveforms = self.checked_inputs(x)
        return waveforms, self.checked_targets(y, self._frames_of(waveforms))

    def _frames_of(self, waveforms):
        samples = waveforms.shape[1]
        if samples is not None:
            return feature_frames(int(samples))
        return feature_frames(tf.shape(waveforms)[1])

    # -- the hooks of the method contract -------------------------------------------

    def parameter_groups(self):
        """The online probe's (none here) and the feature encoder's, its gradients scaled by
        `feature_gradient_scale`."""
        return self.probe_parameter_groups() + [ParameterGroup(
            "feature_encoder", tuple(feature_encoder_variables(self.encoder)), self.feature_gradient_scale)]

    def _step_seed(self):
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int32)
        return tf.stack([tf.constant(self.seed, tf.int32), step])

    # -- one masked pass ------------------------------------------------------------------

    def masked_pass(self, waveforms, targets, seed, training=False):
        """The masked prediction on (checked) float32 waveforms `[B, samples]` and int32
        `targets` `[B, T]`, the mask drawn for the global batch from `seed` (int `[2]`)
        and this replica's rows taken. A dict: `terms` (the cross-entropy per frame,
        float32 `[B, T]`), `correct` (the target is the argmax), `mask` (bool `[B, T]`),
        `features` (the conv output, float32)."""
        n_local = tf.shape(waveforms)[0]
        n_global, first = _rows_of_this_replica(n_local)
        mask = span_mask(n_global, self._frames_of(waveforms), self.mask_prob, self.mask_span, seed)
        mask = mask[first:first + n_local]
        out = speech_features(self.encoder, waveforms, masked=mask, training=training)
        logits = self.head(out.layers[-1], training=training)
        terms, correct = losses.hubert_cross_entropy_terms(logits, targets)
        return dict(terms=terms, correct=correct, mask=mask, features=tf.cast(out.features, tf.float32))

    def method_loss(self, data, training):
        waveforms, targets = self._inputs(data)
        step = self.masked_pass(waveforms, targets, self._step_seed(), training)
        masked = tf.cast(step["mask"], tf.float32)
        unmasked = 1.0 - masked
        terms, correct = step["terms"], tf.cast(step["correct"], tf.float32)
        local_masked, local_unmasked = tf.reduce_sum(masked), tf.reduce_sum(unmasked)
        global_masked, global_unmasked = replica_sum(local_masked), replica_sum(local_unmasked)
        n_local = tf.shape(waveforms)[0]
        n_global, _ = _rows_of_this_replica(n_local)
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        squares = tf.reduce_mean(tf.square(step["features"]), axis=[1, 2])  # per clip
        loss = tf.reduce_sum(terms * masked) / tf.maximum(global_masked, 1.0)
        if self.unmasked_weight:
            loss += self.unmasked_weight * tf.reduce_sum(terms * unmasked) / tf.maximum(global_unmasked, 1.0)
        loss += self.feature_penalty * tf.reduce_sum(squares) / tf.cast(n_global, tf.float32)
        self.trackers["loss"].update_state(loss * replicas)  # the replicas' mean of R x theirs: the global loss
        for name, weights, count in (("masked", masked, local_masked), ("unmasked", unmasked, local_unmasked)):
            self.trackers[f"{name}_loss"].update_state(tf.reduce_sum(terms * weights) / tf.maximum(count, 1.0),
                                                       sample_weight=count)
            self.trackers[f"{name}_accuracy"].update_state(tf.reduce_sum(correct * weights) / tf.maximum(count, 1.0),
                                                           sample_weight=count)
        weight = tf.cast(n_local, tf.float32)
        self.trackers["feature_penalty"].update_state(tf.reduce_mean(squares), sample_weight=weight)
        self.trackers["masked_fraction"].update_state(tf.reduce_mean(masked), sample_weight=weight)
        return loss

    def task_metrics(self, waveforms, targets, batch_size=32):
        """The masked prediction on numpy clips `[N, samples]` and their `targets` `[N, T]`
        without dropout, in batches of `batch_size` (the last partial batch dropped),
        batch i masked with seed `(0, i)`: `{"masked_accuracy", "masked_loss",
        "unmasked_accuracy", "unmasked_loss"` (means over those frames),
        `"masked_fraction", "masked_frames"}`."""
        batch_size = min(int(batch_size), len(waveforms))
        if batch_size < 1:
            raise UserError("the task metrics need at least one clip")
        fn = tf.function(lambda x, y, s: self.masked_pass(x, y, s, training=False), reduce_retracing=True)
        sums = dict(masked_loss=0.0, masked_accuracy=0.0, unmasked_loss=0.0, unmasked_accuracy=0.0)
        masked_frames = frames = 0.0
        for i, start in enumerate(range(0, len(waveforms) - batch_size + 1, batch_size)):
            x = self.checked_inputs(np.asarray(waveforms[start:start + batch_size], np.float32))
            y = self.checked_targets(np.asarray(targets[start:start + batch_size]), self._frames_of(x))
            step = {k: v.numpy() for k, v in fn(x, y, tf.constant([0, i], tf.int32)).items() if k != "features"}
            for name, where in (("masked", step["mask"]), ("unmasked", ~step["mask"])):
                sums[f"{name}_loss"] += float(step["terms"][where].sum())
                sums[f"{name}_accuracy"] += float(step["correct"][where].sum())
            masked_frames += float(step["mask"].sum())
            frames += float(step["mask"].size)
        counts = dict(masked=masked_frames, unmasked=frames - masked_frames)
        result = {k: v / max(counts[k.split("_")[0]], 1.0) for k, v in sums.items()}
        result.update(masked_fraction=masked_frames / max(frames, 1.0), masked_frames=int(masked_frames))
        return result

    # -- what it computes and serves -----------------------------------------------------

    def _layer_index(self):
        return (self.representation_layer or self.num_blocks) - 1

    def layer_frames(self, waveforms, layer, training=False):
        """The frames of Transformer block `layer` (1..blocks; the last after the final
        LayerNorm) of the unmasked clips: `[B, T, D]`."""
        if not 1 <= int(layer) <= self.num_blocks:
            raise UserError(f"layer must be in 1..{self.num_blocks} (the encoder's Transformer blocks), got {layer}")
        return speech_features(self.encoder, self.checked_inputs(waveforms), training=training).layers[int(layer) - 1]

    def frames(self, waveforms, training=False):
        """The frames of block `representation_layer` of the unmasked clips: `[B, T, D]`."""
        return self.layer_frames(waveforms, self._layer_index() + 1, training=training)

    def representation(self, waveforms, training=False):
        """The mean over time of `frames`: `[B, D]`."""
        return tf.reduce_mean(self.frames(waveforms, training=training), axis=1)

    def representation_dim(self, input_shape=None):
        return self.width

    def predicted_clusters(self, waveforms):
        """The most likely cluster of every frame of the unmasked clips: int32 `[B, T]`."""
        out = speech_features(self.encoder, self.checked_inputs(waveforms))
        return tf.argmax(self.head(out.layers[-1]), axis=-1, output_type=tf.int32)

    def probe_frames(self, waveforms):
        """What the frozen-feature probes pool over time (`keras_ssl.evaluation.audio`), from
        one pass: `layer<k>` for the representation's block first, then every other block
        in order (`layer<L>` after the final LayerNorm), and `latent` (the feature
        encoder's LayerNorm output): each `[B, T, D]`."""
        out = speech_features(self.encoder, self.checked_inputs(waveforms))
        chosen = self._layer_index()
        order = [chosen] + [i for i in range(self.num_blocks) if i != chosen]
        frames = {f"layer{i + 1}": out.layers[i] for i in order}
        frames["latent"] = out.latents
        return frames

    def serving_endpoints(self, input_shape=None, threshold=None):
        """`serving_default` (WAV bytes) and `embed_waveforms` (float32 samples), both ->
        `embedding` (the mean over time of block `representation_layer`'s frames,
        L2-normalised) and `frames` (those frames, one per 20 ms), at the clip length
        `input_shape = (samples,)` (default: the training clip length)."""
        from keras_ssl.models.endpoints import ServingOutput, audio_endpoints

        if threshold is not None:
            raise UserError("a threshold only applies to models with a verify signature (Siamese, triplet), not "
                            "HuBERT")
        samples = int(input_shape[0]) if input_shape else self.num_samples
        layer = self._layer_index() + 1
        which = f"Transformer block {layer}" + (" (after the final LayerNorm)" if layer == self.num_blocks else "")

        def serve(waveforms):
            frames = tf.cast(self.frames(waveforms), tf.float32)
            return {"embedding": tf.math.l2_normalize(tf.reduce_mean(frames, axis=1), axis=-1), "frames": frames}

        outputs = (ServingOutput("embedding", "float32", (self.width,), f"the clip's representation: mean over time "
                                 f"of the frames of {which}, L2-normalised"),
                   ServingOutput("frames", "float32", (feature_frames(samples), self.width),
                                 f"the output of {which} every 20 ms (not L2-normalised)"))
        return audio_endpoints(outputs, serve)


# -- the targets -----------------------------------------------------------------------------


def parent_frames(parent, waveforms, layer):
    """float32 `[N, T, D]`: block `layer`'s frames of the `parent` HuBERT for numpy clips."""
    from keras_ssl.data.mfcc_targets import batched_frames

    if not 1 <= int(layer) <= parent.num_blocks:
        raise UserError(f"--target_layer={layer}, but the parent has {parent.num_blocks} Transformer blocks; give "
                        f"one in 1..{parent.num_blocks}")
    return batched_frames(lambda x: parent.layer_frames(x, layer), waveforms, FRAMES_BATCH)


def target_features(options, waveforms, parent=None):
    """What a run's targets cluster, float32 `[N, T, D]`: the MFCC frames of the clips
    (iteration 1, no parent) or block `options.target_layer` of the parent (iteration 2)."""
    from keras_ssl.data.mfcc_targets import batched_frames, mfcc_frames

    if parent is None:
        return batched_frames(mfcc_frames, waveforms)
    return parent_frames(parent, waveforms, options.target_layer)


def _prepare(run, options, split, parent):
    """The k-means targets of the training clips (deterministic for a seed: the features
    are, and the k-means is seeded with `--seed`): `centroids` float32 `[C, D]`, `targets`
    int32 `[clips, frames]` and, with word labels, their `purity` and `pnmi`."""
    from keras_ssl.data.mfcc_targets import assign_clusters, cluster_purity, fit_kmeans, pnmi

    features = target_features(options, split.waveforms, parent)
    centroids = fit_kmeans(features, options.num_clusters, seed=run.seed)
    targets = assign_clusters(features, centroids)
    artefacts = {"centroids": centroids, "targets": targets}
    if split.labels is not None:
        artefacts["purity"] = np.float64(cluster_purity(targets, split.labels, options.num_clusters))
        artefacts["pnmi"] = np.float64(pnmi(targets, split.labels, options.num_clusters))
    return artefacts


def split_targets(options, split, stage):
    """int32 `[clips, frames]`: the prepared targets for the training split, the nearest
    prepared centroid of each frame's features for any other split."""
    from keras_ssl.data.mfcc_targets import assign_clusters

    targets = stage.artefacts["targets"]
    if len(targets) == len(split) and targets.shape[1] == feature_frames(split.waveforms.shape[1]):
        return targets
    return assign_clusters(target_features(options, split.waveforms, stage.parent), stage.artefacts["centroids"])


def _speech_encoder(run, options, dataset):
    if dataset.num_samples < RECEPTIVE_FIELD:  # refused before the run directory is claimed
        raise UserError(f"clips of {dataset.num_samples} samples give no 20 ms frame; HuBERT needs at least 400 "
                        "samples; raise --audio_seconds")
    heads = options.transformer_heads
    width = scaled_width(options.transformer_width, heads, options.position_groups, run.width_multiplier)
    conv_width = max(1, int(round(options.conv_width * run.width_multiplier)))
    return speech_transformer(conv_width, width, options.transformer_layers, heads, options.dropout,
                              options.position_kernel, options.position_groups, options.conv_norm)


def _build(run, options, encoder, dataset, stage=None):
    """HuBERT with its own speech Transformer (the run's `--encoder` is not used), its
    widths times `--width_multiplier`; in the second iteration a new model, trained from
    scratch (the paper's)."""
    return HuBERT(_speech_encoder(run, options, dataset), num_samples=dataset.num_samples, seed=run.seed,
                  **option_arguments(options, HuBERT))


def _training_data(run, options, split, stage=None):
    """Shuffled batches of `(waveforms float32 [B, samples], targets int32 [B, frames])`."""
    targets = split_targets(options, split, stage)
    data = tf.data.Dataset.from_tensor_slices((tf.constant(split.waveforms, tf.float32), tf.constant(targets)))
    data = (data.shuffle(len(split), seed=run.seed, reshuffle_each_iteration=True).repeat()
            .batch(run.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


# -- its evaluation ----------------------------------------------------------------------------


def hubert_task_metrics(context):
    """HuBERT's own task on the test clips (`HuBERT.task_metrics`, their targets the
    nearest prepared centroids of their features), the share of the clusters the test
    targets use, and the targets' purity and PNMI against the words (the training
    clips' from `prepare`, the test clips'), when the dataset has labels."""
    from keras_ssl.data.mfcc_targets import cluster_purity, pnmi
    from keras_ssl.run_setup import run_stage

    config, test = context.config, context.dataset.test
    options = config.options
    stage = run_stage(config, context.dataset)
    targets = split_targets(options, test, stage)
    result = context.model.task_metrics(test.waveforms, targets, min(config.batch_size, 32))
    result["clusters_used"] = float(len(np.unique(targets)) / options.num_clusters)
    for name in ("purity", "pnmi"):
        if name in stage.artefacts:
            result[f"target_{name}_train"] = float(stage.artefacts[name])
    if test.labels is not None:
        result["target_purity_test"] = cluster_purity(targets, test.labels, options.num_clusters)
        result["target_pnmi_test"] = pnmi(targets, test.labels, options.num_clusters)
    return result


HUBERT_TASK = register_evaluation(Evaluation(
    "hubert_task", "HuBERT's masked prediction on the test clips (accuracy, loss, masked and unmasked frames), the "
    "clusters used, the targets' purity and PNMI against the words", hubert_task_metrics,
    ("masked_accuracy", "masked_loss", "unmasked_accuracy", "masked_fraction", "clusters_used"),
    needs_labels=False))

# Adam with decoupled weight decay 0.01 and a peak of 5e-4 (fairseq's hubert_base_librispeech),
# warmed up over the first epoch (the paper: 8% of the updates); batch 32 clips (ours, CPU)
_RUN_DEFAULTS = dict(dataset="folder:data/spoken_digits", optimizer="adamw", learning_rate=5e-4, lr_scaling="none",
                     warmup_epochs=1.0, weight_decay=0.01, batch_size=32)
# one-second clips (the chirps, zero-padded), the paper's masks, a tiny network and few clusters
_SMOKE = dict(batch_size=8, audio_seconds=1.0, conv_width=16, transformer_layers=2, transformer_width=32,
              transformer_heads=2, position_kernel=16, position_groups=4, dropout=0.0, num_clusters=8, final_dim=16)

register(Method(
    name="hubert", summary="HuBERT, iteration 1: masked prediction of k-means clusters of MFCC frames (Hsu et al. "
                           "2021)",
    options=HuBERTOptions, build=_build, training_data=_training_data, modality="audio", prepare=_prepare,
    run_defaults=dict(model_dir="runs/hubert", **_RUN_DEFAULTS),
    evaluations=("probe", "hubert_task"), smoke_options=_SMOKE,
))

register(Method(
    name="hubert_iter2", summary="HuBERT, iteration 2: masked prediction of k-means clusters of a finished hubert "
                                 "run's Transformer block (Hsu et al. 2021)",
    options=HuBERTIteration2Options, build=_build, training_data=_training_data, modality="audio", parent="hubert",
    prepare=_prepare, run_defaults=dict(model_dir="runs/hubert_iter2", **_RUN_DEFAULTS),
    evaluations=("probe", "hubert_task"), smoke_options=dict(_SMOKE, target_layer=1),
))
