"""wav2vec 2.0 (`--method=wav2vec2`; Baevski, Zhou, Mohamed, Auli 2020, "wav2vec 2.0: A
Framework for Self-Supervised Learning of Speech Representations"): raw audio -> a
convolutional feature encoder (a latent per 20 ms) -> span-masked latents -> a Transformer
context network; at every masked frame the context must pick the frame's quantised latent
out of K distractors quantised from other masked frames of the same utterance.

    keras-ssl-train --flagfile=flags/wav2vec2_spoken_digits.cfg
    keras-ssl-evaluate --model_dir=runs/wav2vec2_spoken_digits   # probes per layer vs MFCCs, the task's figures
    keras-ssl-export --model_dir=runs/wav2vec2_spoken_digits     # WAV -> frames of a layer, pooled embedding

The speech Transformer is `keras_ssl.speech_transformer` and what wav2vec 2.0 shares with
HuBERT (masks, penalty, representation, serving) `keras_ssl.models.speech_model`; the quantiser
`keras_ssl.gumbel_quantizer`, the losses `keras_ssl.losses.wav2vec2`, the span mask
`keras_ssl.data.masking.span_mask`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.masking import SPAN_MASK_PROB
from keras_ssl.errors import UserError
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.gumbel_quantizer import (ENTRIES, GROUPS, TEMPERATURE_END, TEMPERATURE_START, GumbelVectorQuantizer,
                                        gumbel_noise, gumbel_softmax, gumbel_temperature)
from keras_ssl.losses.replicas import gather_across_replicas
from keras_ssl.models.codebook import replica_sum
from keras_ssl.models.global_batch import split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.speech_model import (FEATURE_GRADIENT_SCALE, FEATURE_PENALTY, SpeechTransformerModel,
                                           SpeechTransformerOptions, build_speech_encoder, check_arguments)
from keras_ssl.speech_transformer import RECEPTIVE_FIELD, SPEECH_DROPOUT, speech_features


@dataclasses.dataclass
class Wav2Vec2Options(SpeechTransformerOptions):
    """wav2vec 2.0's hyper-parameters: the speech Transformer's (`SpeechTransformerOptions`)
    and these. Sources (Baevski et al. 2020, section 4.2, the BASE model, unless said):
    span masks p = 0.065; G = 2 groups of V = 320 entries; K = 100 distractors; logit
    temperature kappa = 0.1; diversity weight alpha = 0.1; the Gumbel temperature annealed
    from 2 to 0.5 by 0.999995 per update (over 400k updates: the end is reached after 69%
    of them; here, by default, after 69% of the run, whatever its length). fairseq's
    `wav2vec2_base` config: the quantised vectors and the projections 256 wide
    (`final_dim`)."""

    mask_prob: float = option(SPAN_MASK_PROB, "wav2vec2: the probability that a latent frame starts a masked span "
                              "(the paper's p: 0.065)", check=lambda v: 0 < v <= 1, requirement="in (0, 1]")
    codebook_groups: int = option(GROUPS, "codebook groups G of the product quantiser (wav2vec 2.0: 2)",
                                  check=lambda v: v >= 1, requirement=">= 1")
    codebook_entries: int = option(ENTRIES, "entries V per codebook group (wav2vec 2.0: 320)", check=lambda v: v >= 2,
                                   requirement=">= 2")
    code_dim: int = option(256, "width of a quantised vector, G entries of code_dim / G concatenated (fairseq's "
                           "wav2vec2_base: 256)", check=lambda v: v >= 1, requirement=">= 1")
    num_negatives: int = option(100, "distractors K per masked frame, from other masked frames of the same clip "
                                "(wav2vec 2.0: 100)", check=lambda v: v >= 1, requirement=">= 1")
    diversity_weight: float = option(0.1, "alpha, the weight of the codebook diversity loss (wav2vec 2.0: 0.1)",
                                     check=lambda v: v >= 0, requirement=">= 0")
    gumbel_temperature_start: float = option(TEMPERATURE_START, "Gumbel softmax temperature at the first step "
                                             "(wav2vec 2.0: 2)", check=lambda v: v > 0, requirement="> 0")
    gumbel_temperature_end: float = option(TEMPERATURE_END, "the lowest Gumbel softmax temperature (wav2vec 2.0: "
                                           "0.5)", check=lambda v: v > 0, requirement="> 0")
    gumbel_temperature_decay: float | None = option(None, "the Gumbel temperature's factor per step (wav2vec 2.0: "
                                                    "0.999995 over 400k updates); unset: reach the lowest after 69% "
                                                    "of the run, as the paper's schedule does of its updates",
                                                    check=lambda v: 0 < v <= 1, requirement="in (0, 1]")


@keras.saving.register_keras_serializable(package="keras_ssl")
class Wav2Vec2(SpeechTransformerModel):
    """wav2vec 2.0 (Baevski et al. 2020) on 16 kHz waveforms.

    The `encoder` (`keras_ssl.speech_transformer.speech_transformer`) maps a clip to
    latents `z_t` (`feature_encoder`, then LayerNorm; one per 20 ms) and, through a
    projection, the learned mask embedding at masked frames, the convolutional position
    embedding and the Transformer blocks, to the context `c_t`. Per clip, frames are
    masked in spans (`keras_ssl.data.masking.span_mask`: every frame starts a span of
    `mask_span` with probability `mask_prob`). The `quantizer`
    (`keras_ssl.gumbel_quantizer.GumbelVectorQuantizer`, its input the unmasked `z_t`
    after dropout) picks one of `codebook_entries` entries in each of `codebook_groups`
    groups by the straight-through Gumbel softmax at a temperature annealed per step
    (`gumbel_temperature`), giving `q_t`. The loss of the global batch (eq. 2):

        L = mean over masked frames t of L_t + alpha * L_d + lambda * mean(f^2)

    * L_t: the contrastive loss (eq. 3, `keras_ssl.losses.wav2vec2_contrastive_terms`):
      the cosine of `context_projection(c_t)` with `target_projection(q_t)` against K =
      `num_negatives` distractors `q` of other masked frames of the same clip
      (`keras_ssl.losses.sample_distractors`), over `logit_temperature` kappa; a
      distractor with the positive's codes in every group is left out (fairseq); a clip
      with fewer than 2 masked frames has no distractor and adds no term;
    * L_d: the codebook diversity (eq. 4, `keras_ssl.losses.codebook_diversity`) of the
      quantiser's softmax (no noise) averaged over the masked frames of the global batch,
      weight alpha = `diversity_weight`;
    * mean(f^2): fairseq's penalty on the feature encoder's output f (before its
      LayerNorm), weight lambda = `feature_penalty`.

    The feature encoder's gradients are multiplied by `feature_gradient_scale` (0.1), a
    parameter group of the method contract (`parameter_groups`; fairseq's
    `feature_grad_mult`, which scales the gradient at the encoder's output: the same
    parameter gradients, since the encoder's backward pass is linear in it).

    Replicas: the masks, the distractors and the Gumbel noise are drawn for the global
    batch from `(seed, step)` and each replica takes its rows; each replica returns
    `sum(its L_t) / N_global` (N_global: the masked frames with distractors of the global
    batch) + `(alpha L_d) / R` (L_d from the probabilities summed over the replicas by a
    differentiable all-gather) + its share of the penalty, so loss and gradients equal
    one device on the global batch.

    Metrics: `loss`, `contrastive_loss`, `contrastive_accuracy` (the positive above every
    distractor), `diversity` (L_d), `code_perplexity` (sum over groups of exp(entropy) of
    the argmax codes of the masked frames: fairseq's, up to G*V), `feature_penalty`,
    `gumbel_temperature`, `masked_fraction`.

    The representation (`predict`, the served `embedding`) is the mean over time of the
    frames of block `representation_layer` (0: the last, after the final LayerNorm) of
    the unmasked clip; `frames` gives those frames, `probe_frames` every block's and the
    latents. `fit()` takes waveform batches (float `[B, samples]` in [-1, 1], 16 kHz);
    targets are refused. In user code `total_steps` (set by keras-ssl-train) sets the
    temperature's schedule: `model.total_steps = steps` before `fit`, else the paper's
    0.999995 per step (or pass `gumbel_temperature_decay`). `dropout` is that of the
    quantiser's input (fairseq's `dropout_features`); the encoder has its own.
    `num_samples`: the clip length it is trained and served at.
    """

    METHOD_LABEL = "wav2vec 2.0"
    MIN_SAMPLES = RECEPTIVE_FIELD + 320  # two 20 ms frames: a masked frame and a distractor
    SUB_MODELS = ("encoder", "quantizer", "target_projection", "context_projection")
    TRACKED = ("loss", "contrastive_loss", "contrastive_accuracy", "diversity", "code_perplexity", "feature_penalty",
               "gumbel_temperature", "masked_fraction")

    def __init__(self, encoder, quantizer=None, target_projection=None, context_projection=None,
                 codebook_groups=Wav2Vec2Options.codebook_groups, codebook_entries=Wav2Vec2Options.codebook_entries,
                 code_dim=Wav2Vec2Options.code_dim, final_dim=Wav2Vec2Options.final_dim,
                 num_negatives=Wav2Vec2Options.num_negatives, logit_temperature=Wav2Vec2Options.logit_temperature,
                 diversity_weight=Wav2Vec2Options.diversity_weight, feature_penalty=FEATURE_PENALTY,
                 feature_gradient_scale=FEATURE_GRADIENT_SCALE, mask_prob=Wav2Vec2Options.mask_prob,
                 mask_span=Wav2Vec2Options.mask_span,
                 gumbel_temperature_start=Wav2Vec2Options.gumbel_temperature_start,
                 gumbel_temperature_end=Wav2Vec2Options.gumbel_temperature_end,
                 gumbel_temperature_decay=Wav2Vec2Options.gumbel_temperature_decay,
                 representation_layer=Wav2Vec2Options.representation_layer, dropout=SPEECH_DROPOUT,
                 num_samples=16000, seed=0, **kwargs):
        super().__init__(encoder, mask_prob, mask_span, feature_penalty, feature_gradient_scale, representation_layer,
                         num_samples, seed, **kwargs)
        check_arguments((("num_negatives", num_negatives, num_negatives >= 1, ">= 1"),
                         ("logit_temperature", logit_temperature, logit_temperature > 0, "> 0"),
                         ("gumbel_temperature_decay", gumbel_temperature_decay,
                          gumbel_temperature_decay is None or 0 < gumbel_temperature_decay <= 1, "in (0, 1]"),
                         ("dropout", dropout, 0 <= dropout < 1, "in [0, 1)")))
        self.codebook_groups, self.codebook_entries = int(codebook_groups), int(codebook_entries)
        self.code_dim, self.final_dim, self.num_negatives = int(code_dim), int(final_dim), int(num_negatives)
        self.logit_temperature, self.diversity_weight = float(logit_temperature), float(diversity_weight)
        self.gumbel_temperature_start, self.gumbel_temperature_end = (float(gumbel_temperature_start),
                                                                      float(gumbel_temperature_end))
        self.gumbel_temperature_decay = None if gumbel_temperature_decay is None else float(gumbel_temperature_decay)
        self.dropout = float(dropout)
        self.latent_dim = int(encoder.get_layer("feature_norm").output.shape[-1])
        if quantizer is None:
            latents = keras.Input((None, self.latent_dim), name="latents")
            quantizer = keras.Model(latents, GumbelVectorQuantizer(self.codebook_groups, self.codebook_entries,
                                                                   self.code_dim, name="gumbel")(latents),
                                    name="quantizer")
        self.quantizer = quantizer
        self.target_projection = target_projection if target_projection is not None else keras.Sequential(
            [keras.Input((None, self.code_dim)), keras.layers.Dense(self.final_dim, name="project_q")],
            name="target_projection")
        self.context_projection = context_projection if context_projection is not None else keras.Sequential(
            [keras.Input((None, self.width)), keras.layers.Dense(self.final_dim, name="final_proj")],
            name="context_projection")
        self.feature_dropout = keras.layers.Dropout(self.dropout, seed=self.seed)
        self.build()

    def _waveforms(self, data):
        x, y = split_data(data)
        if y is not None:
            raise UserError("wav2vec 2.0 learns from the waveforms alone and has no use for targets y (word or "
                            "speaker labels are for keras-ssl-evaluate's probes); fit on x only, e.g. "
                            "fit(waveform_batches(split, 32), ...)")
        return self.checked_inputs(x)

    def temperature(self):
        """The Gumbel softmax temperature at the optimizer's step (`gumbel_temperature`)."""
        optimizer = getattr(self, "optimizer", None)
        step = optimizer.iterations if optimizer is not None else 0
        return gumbel_temperature(step, self.total_steps, self.gumbel_temperature_start, self.gumbel_temperature_end,
                                  self.gumbel_temperature_decay)

    # -- one masked pass ------------------------------------------------------------------

    def masked_pass(self, waveforms, seed, training=False):
        """The masked prediction task on (checked) float32 waveforms `[B, samples]`, the
        mask, distractors and Gumbel noise drawn for the global batch from `seed` (int
        `[2]`) and this replica's rows taken; Gumbel noise only when `training` (else each
        group's argmax). A dict: `losses`, `correct`, `valid`, `mask` `[B, T]`,
        `probabilities` `[B, T, G, V]` (softmax of the logits), `codes` `[B, T, G]` (the
        logits' argmax), `features` (the conv output, float32)."""
        n_local = tf.shape(waveforms)[0]
        mask_seed, distractor_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        global_mask, mask, first = self.global_span_mask(waveforms, mask_seed)
        n_global = tf.shape(global_mask)[0]
        distractors = losses.sample_distractors(global_mask, self.num_negatives, distractor_seed)[first:first + n_local]
        out = speech_features(self.encoder, waveforms, masked=mask, training=training)
        gumbel = self.quantizer.get_layer("gumbel")
        logits = gumbel.logits(self.feature_dropout(tf.cast(out.latents, tf.float32), training=training))
        codes = tf.argmax(logits, axis=-1, output_type=tf.int32)
        if training:
            shape = tf.concat([[n_global], tf.shape(logits)[1:]], 0)
            noise = gumbel_noise(shape, noise_seed)[first:first + n_local]
            one_hots = gumbel_softmax(logits, noise, self.temperature())
            selected = tf.argmax(one_hots, axis=-1, output_type=tf.int32)
        else:
            one_hots, selected = tf.one_hot(codes, self.codebook_entries, dtype=tf.float32), codes
        targets = self.target_projection(gumbel.lookup(one_hots), training=training)
        context = self.context_projection(out.layers[-1], training=training)
        terms, correct, valid = losses.wav2vec2_contrastive_terms(context, targets, distractors, mask,
                                                                  self.logit_temperature, selected)
        return dict(losses=terms, correct=correct, valid=valid, mask=mask, probabilities=tf.nn.softmax(logits),
                    codes=codes, features=tf.cast(out.features, tf.float32))

    def _global_code_statistics(self, step):
        """`(mean probabilities [G, V] over the global batch's valid frames (differentiable),
        code perplexity, valid frames of the global batch)`."""
        valid = tf.cast(step["valid"], tf.float32)
        sums, _ = gather_across_replicas(tf.einsum("bt,btgv->gv", valid, step["probabilities"])[None])
        count = replica_sum(tf.reduce_sum(valid))
        mean = tf.reduce_sum(sums, axis=0) / tf.maximum(count, 1.0)
        hard = tf.einsum("bt,btgv->gv", valid, tf.one_hot(step["codes"], self.codebook_entries, dtype=tf.float32))
        hard = replica_sum(hard)
        perplexity = losses.codebook_perplexity(hard / tf.maximum(tf.reduce_sum(hard, axis=-1, keepdims=True), 1.0))
        return mean, perplexity, count

    def method_loss(self, data, training):
        waveforms = self._waveforms(data)
        step = self.masked_pass(waveforms, self.step_seed(), training)
        mean_probabilities, perplexity, count = self._global_code_statistics(step)
        diversity = losses.wav2vec2.diversity_of_mean(mean_probabilities) * tf.cast(count > 0, tf.float32)
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        penalty, squares = self.feature_penalty_share(step["features"])
        contrastive = tf.reduce_sum(step["losses"]) / tf.maximum(count, 1.0)
        loss = contrastive + self.diversity_weight * diversity / replicas + penalty
        valid_local = tf.reduce_sum(tf.cast(step["valid"], tf.float32))
        self.trackers["loss"].update_state(loss * replicas)  # the replicas' mean of R x theirs: the global loss
        self.trackers["contrastive_loss"].update_state(tf.reduce_sum(step["losses"]) / tf.maximum(valid_local, 1.0),
                                                       sample_weight=valid_local)
        hits = tf.reduce_sum(tf.cast(step["correct"], tf.float32))
        self.trackers["contrastive_accuracy"].update_state(hits / tf.maximum(valid_local, 1.0),
                                                           sample_weight=valid_local)
        self.trackers["diversity"].update_state(diversity)  # of the global batch: the same on every replica
        self.trackers["code_perplexity"].update_state(perplexity)
        self.trackers["gumbel_temperature"].update_state(self.temperature())
        self.track_frames(squares, step["mask"])
        return loss

    def task_metrics(self, waveforms, batch_size=32):
        """The masked prediction task on numpy clips `[N, samples]` without Gumbel noise, in
        batches of `batch_size` (the last partial batch dropped), batch i masked with seed
        `(0, i)`: `{"contrastive_accuracy", "contrastive_loss"` (means over the masked
        frames with distractors), `"code_perplexity"`, `"diversity"`, `"codes_used"` (the
        share of the G*V entries picked by some masked frame; over all the clips),
        `"masked_fraction"`, `"masked_frames"}`."""
        batch_size = min(int(batch_size), len(waveforms))
        if batch_size < 1:
            raise UserError("the task metrics need at least one clip")
        fn = tf.function(lambda x, s: self.masked_pass(x, s, training=False), reduce_retracing=True)
        total = correct = count = masked = frames = 0.0
        probabilities = np.zeros((self.codebook_groups, self.codebook_entries))
        hard = np.zeros_like(probabilities)
        for i, start in enumerate(range(0, len(waveforms) - batch_size + 1, batch_size)):
            x = self.checked_inputs(np.asarray(waveforms[start:start + batch_size], np.float32))
            step = {k: v.numpy() for k, v in fn(x, tf.constant([0, i], tf.int32)).items() if k != "features"}
            valid = step["valid"]
            total += float(step["losses"][valid].sum())
            correct += float(step["correct"][valid].sum())
            count += float(valid.sum())
            masked += float(step["mask"].sum())
            frames += float(step["mask"].size)
            probabilities += step["probabilities"][valid].sum(axis=0)
            hard += np.eye(self.codebook_entries)[step["codes"][valid]].sum(axis=0)
        mean = probabilities / max(count, 1.0)
        usage = hard / np.maximum(hard.sum(axis=-1, keepdims=True), 1.0)
        return {"contrastive_accuracy": correct / max(count, 1.0), "contrastive_loss": total / max(count, 1.0),
                "code_perplexity": float(losses.codebook_perplexity(usage)),
                "diversity": float(losses.wav2vec2.diversity_of_mean(mean)) if count else 0.0,
                "codes_used": float((hard > 0).mean()), "masked_fraction": masked / max(frames, 1.0),
                "masked_frames": int(count)}


# -- its evaluation ----------------------------------------------------------------------------


def _contrastive_task(context):
    """wav2vec 2.0's own task on the test clips (`Wav2Vec2.task_metrics`)."""
    return context.model.task_metrics(context.dataset.test.waveforms, min(context.config.batch_size, 32))


CONTRASTIVE_TASK = register_evaluation(Evaluation(
    "wav2vec2_task", "wav2vec 2.0's masked contrastive task on the test clips: accuracy, loss, code perplexity, "
    "diversity, codes used", _contrastive_task,
    ("contrastive_accuracy", "contrastive_loss", "code_perplexity", "diversity", "codes_used", "masked_fraction"),
    needs_labels=False))


def _build(run, options, encoder, dataset, stage=None):
    """wav2vec 2.0 with its own speech Transformer (the run's `--encoder` is not used),
    its widths times `--width_multiplier`."""
    speech = build_speech_encoder(run, options, dataset, Wav2Vec2)
    return Wav2Vec2(speech, num_samples=dataset.num_samples, seed=run.seed, **option_arguments(options, Wav2Vec2))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data.sequences import waveform_batches

    return TrainingData(waveform_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="wav2vec2", summary="wav2vec 2.0: masked spans of speech latents, contrastive against Gumbel-quantised "
                             "targets (Baevski et al. 2020)",
    options=Wav2Vec2Options, build=_build, training_data=_training_data, modality="audio",
    # Adam with decoupled weight decay 0.01 (fairseq's wav2vec2_base) and a peak of 5e-4 (the paper's BASE),
    # warmed up over the first epoch (the paper: the first 8% of the updates); batch 32 clips (ours, CPU)
    run_defaults=dict(model_dir="runs/wav2vec2", dataset="folder:data/spoken_digits", optimizer="adamw",
                      learning_rate=5e-4, lr_scaling="none", warmup_epochs=1.0, weight_decay=0.01, batch_size=32),
    evaluations=("probe", "wav2vec2_task"),
    # the chirps' 0.25 s (12 frames: denser, shorter spans than the paper's so that most clips mask two or more
    # frames), a tiny network, no dropout (one device and two replicas must take the same step)
    smoke_options=dict(batch_size=8, audio_seconds=0.25, conv_width=16, transformer_layers=2, transformer_width=32,
                       transformer_heads=2, position_kernel=8, position_groups=4, dropout=0.0, mask_prob=0.3,
                       mask_span=3, codebook_entries=16, code_dim=16, final_dim=16, num_negatives=8),
))
