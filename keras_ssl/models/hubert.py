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

Each run's `prepare` step (`keras_ssl.models.hubert_targets`) fits the k-means
(scikit-learn's `MiniBatchKMeans`, seeded by `--seed`) on the training clips' frames and saves the `centroids`, every training clip's
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

The speech Transformer is `keras_ssl.speech_transformer` and what HuBERT shares with
wav2vec 2.0 (masks, penalty, representation, serving) `keras_ssl.models.speech_model`; the loss
`keras_ssl.losses.hubert`, the span mask `keras_ssl.data.masking.span_mask`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.errors import UserError
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.models.codebook import replica_sum
from keras_ssl.models.global_batch import split_data
from keras_ssl.models.hubert_targets import prepare_targets, split_targets
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.speech_model import (FEATURE_GRADIENT_SCALE, FEATURE_PENALTY, SpeechTransformerModel,
                                           SpeechTransformerOptions, build_speech_encoder, check_arguments)
from keras_ssl.speech_transformer import feature_frames, speech_features

HUBERT_MASK_PROB = 0.08  # Hsu et al. 2021: p = 8% of the frames start a span of l = 10


@dataclasses.dataclass
class HuBERTOptions(SpeechTransformerOptions):
    """HuBERT's hyper-parameters: the speech Transformer's (`SpeechTransformerOptions`: the
    paper's section "Implementation" takes wav2vec 2.0's) and these. Sources (Hsu et al.
    2021, the BASE model, unless said): span masks p = 8%; 100 k-means clusters of 39-d
    MFCC frames in the first iteration; the cosine logits' temperature tau = 0.1; the loss
    on masked frames only (alpha = 1). fairseq's `hubert_base_librispeech` config: the
    projection of the last layer and the cluster embeddings 256 wide (`final_dim`). Ours:
    100 clusters in both iterations (the paper: 500 in the second), so that their purities
    compare like with like."""

    mask_prob: float = option(HUBERT_MASK_PROB, "HuBERT: the probability that a frame starts a masked span (the "
                              "paper's p: 8%)", check=lambda v: 0 < v <= 1, requirement="in (0, 1]")
    num_clusters: int = option(100, "k-means clusters whose ids HuBERT predicts: of the MFCC frames (hubert; the "
                               "paper's first iteration: 100) or of the parent's frames (hubert_iter2; ours, the "
                               "paper: 500)", check=lambda v: v >= 2, requirement=">= 2")
    unmasked_weight: float = option(0.0, "HuBERT: weight of the mean cross-entropy of the unmasked frames beside "
                                    "the masked frames' (the paper's alpha = 1: 0; its ablation alpha = 0.5: 1)",
                                    check=lambda v: v >= 0, requirement=">= 0")


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
class HuBERT(SpeechTransformerModel):
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

    METHOD_LABEL = "HuBERT"
    SUB_MODELS = ("encoder", "head")
    TRACKED = ("loss", "masked_loss", "masked_accuracy", "unmasked_loss", "unmasked_accuracy", "feature_penalty",
               "masked_fraction")

    def __init__(self, encoder, head=None, num_clusters=HuBERTOptions.num_clusters, final_dim=HuBERTOptions.final_dim,
                 logit_temperature=HuBERTOptions.logit_temperature, unmasked_weight=HuBERTOptions.unmasked_weight,
                 feature_penalty=FEATURE_PENALTY, feature_gradient_scale=FEATURE_GRADIENT_SCALE,
                 mask_prob=HuBERTOptions.mask_prob, mask_span=HuBERTOptions.mask_span,
                 representation_layer=HuBERTOptions.representation_layer, num_samples=16000, seed=0, **kwargs):
        super().__init__(encoder, mask_prob, mask_span, feature_penalty, feature_gradient_scale, representation_layer,
                         num_samples, seed, **kwargs)
        check_arguments((("num_clusters", num_clusters, num_clusters >= 2, ">= 2"),
                         ("logit_temperature", logit_temperature, logit_temperature > 0, "> 0"),
                         ("unmasked_weight", unmasked_weight, unmasked_weight >= 0, ">= 0")))
        self.num_clusters, self.final_dim = int(num_clusters), int(final_dim)
        self.logit_temperature, self.unmasked_weight = float(logit_temperature), float(unmasked_weight)
        self.head = head if head is not None else keras.Sequential(
            [keras.Input((None, self.width)), keras.layers.Dense(self.final_dim, name="final_proj"),
             ClusterLogits(self.num_clusters, self.logit_temperature, name="cluster_logits")], name="head")
        self.build()

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
        return waveforms, self.checked_targets(y, self.frames_of(waveforms))

    # -- one masked pass ------------------------------------------------------------------

    def masked_pass(self, waveforms, targets, seed, training=False):
        """The masked prediction on (checked) float32 waveforms `[B, samples]` and int32
        `targets` `[B, T]`, the mask drawn for the global batch from `seed` (int `[2]`)
        and this replica's rows taken. A dict: `terms` (the cross-entropy per frame,
        float32 `[B, T]`), `correct` (the target is the argmax), `mask` (bool `[B, T]`),
        `features` (the conv output, float32)."""
        _, mask, _ = self.global_span_mask(waveforms, seed)
        out = speech_features(self.encoder, waveforms, masked=mask, training=training)
        logits = self.head(out.layers[-1], training=training)
        terms, correct = losses.hubert_cross_entropy_terms(logits, targets)
        return dict(terms=terms, correct=correct, mask=mask, features=tf.cast(out.features, tf.float32))

    def method_loss(self, data, training):
        waveforms, targets = self._inputs(data)
        step = self.masked_pass(waveforms, targets, self.step_seed(), training)
        masked = tf.cast(step["mask"], tf.float32)
        unmasked = 1.0 - masked
        terms, correct = step["terms"], tf.cast(step["correct"], tf.float32)
        local_masked, local_unmasked = tf.reduce_sum(masked), tf.reduce_sum(unmasked)
        global_masked, global_unmasked = replica_sum(local_masked), replica_sum(local_unmasked)
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        penalty, squares = self.feature_penalty_share(step["features"])
        loss = tf.reduce_sum(terms * masked) / tf.maximum(global_masked, 1.0)
        if self.unmasked_weight:
            loss += self.unmasked_weight * tf.reduce_sum(terms * unmasked) / tf.maximum(global_unmasked, 1.0)
        loss += penalty
        self.trackers["loss"].update_state(loss * replicas)  # the replicas' mean of R x theirs: the global loss
        for name, weights, count in (("masked", masked, local_masked), ("unmasked", unmasked, local_unmasked)):
            self.trackers[f"{name}_loss"].update_state(tf.reduce_sum(terms * weights) / tf.maximum(count, 1.0),
                                                       sample_weight=count)
            self.trackers[f"{name}_accuracy"].update_state(tf.reduce_sum(correct * weights) / tf.maximum(count, 1.0),
                                                           sample_weight=count)
        self.track_frames(squares, step["mask"])
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
            y = self.checked_targets(np.asarray(targets[start:start + batch_size]), self.frames_of(x))
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

    # -- what it computes -----------------------------------------------------------

    def predicted_clusters(self, waveforms):
        """The most likely cluster of every frame of the unmasked clips: int32 `[B, T]`."""
        out = speech_features(self.encoder, self.checked_inputs(waveforms))
        return tf.argmax(self.head(out.layers[-1]), axis=-1, output_type=tf.int32)


def _build(run, options, encoder, dataset, stage=None):
    """HuBERT with its own speech Transformer (the run's `--encoder` is not used), its
    widths times `--width_multiplier`; in the second iteration a new model, trained from
    scratch (the paper's)."""
    speech = build_speech_encoder(run, options, dataset, HuBERT)
    return HuBERT(speech, num_samples=dataset.num_samples, seed=run.seed, **option_arguments(options, HuBERT))


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
    options=HuBERTOptions, build=_build, training_data=_training_data, modality="audio", prepare=prepare_targets,
    run_defaults=dict(model_dir="runs/hubert", **_RUN_DEFAULTS),
    evaluations=("probe", "hubert_task"), smoke_options=_SMOKE,
))

register(Method(
    name="hubert_iter2", summary="HuBERT, iteration 2: masked prediction of k-means clusters of a finished hubert "
                                 "run's Transformer block (Hsu et al. 2021)",
    options=HuBERTIteration2Options, build=_build, training_data=_training_data, modality="audio", parent="hubert",
    prepare=prepare_targets, run_defaults=dict(model_dir="runs/hubert_iter2", **_RUN_DEFAULTS),
    evaluations=("probe", "hubert_task"), smoke_options=dict(_SMOKE, target_layer=1),
))
