"""What wav2vec 2.0 (`keras_ssl.models.wav2vec2`) and HuBERT (`keras_ssl.models.hubert`)
share: a speech Transformer (`keras_ssl.speech_transformer`) on raw 16 kHz audio whose
latent frames (one per 20 ms) are masked in spans, the options that build it, and what a
trained one computes and serves.

* `SpeechTransformerOptions`: the options both methods declare (the network's sizes, the
  span length, fairseq's feature penalty and feature-encoder gradient scale, the served
  block); each method's options dataclass extends it;
* `SpeechTransformerModel`: the base of both models: the checked waveforms, the frame
  count, the span mask of the global batch split over replicas, the feature penalty, the
  feature encoder's parameter group, and the representation (the mean over time of one
  Transformer block's frames), the frozen-feature probes' frames and the serving
  signatures (WAV bytes or float32 samples -> `embedding`, `frames`);
* `build_speech_encoder`: the network a run's options and `--width_multiplier` give.
"""

import dataclasses

import tensorflow as tf

from keras_ssl.data.masking import SPAN_LENGTH, span_mask
from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import rows_of_this_replica
from keras_ssl.models.hooks import ParameterGroup
from keras_ssl.models.method_model import MethodModel
from keras_ssl.options import option
from keras_ssl.speech_transformer import (RECEPTIVE_FIELD, conv_norm_option, conv_width_option, dropout_option,
                                          feature_encoder_variables, feature_frames, heads_option, layers_option,
                                          position_groups_option, position_kernel_option, scaled_width,
                                          speech_features, speech_transformer, transformer_blocks, width_option)

FEATURE_PENALTY = 10.0  # fairseq's wav2vec2_base and hubert_base: loss_weights [.., 10] on mean(f^2)
FEATURE_GRADIENT_SCALE = 0.1  # wav2vec 2.0 and HuBERT: the feature encoder's gradients times 0.1


@dataclasses.dataclass
class SpeechTransformerOptions:
    """The options of both speech methods. Sources: wav2vec 2.0 (Baevski et al. 2020,
    section 4.2) and HuBERT (Hsu et al. 2021), the BASE models: spans of M = l = 10
    frames, the feature encoder's gradient scaled by 0.1, dropout 0.1, the position
    convolution's kernel 128 in 16 groups; fairseq's configs: the penalty weight 10 on the
    feature encoder's squared output, the projections before the cosine logits 256 wide, their
    temperature 0.1. Ours, for 2 CPU cores: a 128-channel feature encoder
    (512 in the papers) and 4 Transformer blocks of width 256 with 4 heads (BASE: 12 of
    768, 12 heads); the last block served."""

    conv_width: int = conv_width_option()
    conv_norm: str = conv_norm_option()
    transformer_layers: int = layers_option()
    transformer_width: int = width_option()
    transformer_heads: int = heads_option()
    position_kernel: int = position_kernel_option()
    position_groups: int = position_groups_option()
    dropout: float = dropout_option()
    mask_span: int = option(SPAN_LENGTH, "frames a masked span covers (wav2vec 2.0: M = 10; HuBERT: l = 10)",
                            check=lambda v: v >= 1, requirement=">= 1")
    feature_penalty: float = option(FEATURE_PENALTY, "weight of the mean squared feature-encoder output in the loss "
                                    "(fairseq's wav2vec2_base and hubert_base: 10)", check=lambda v: v >= 0,
                                    requirement=">= 0")
    feature_gradient_scale: float = option(FEATURE_GRADIENT_SCALE, "factor of the feature encoder's gradients "
                                           "(wav2vec 2.0, HuBERT: 0.1)", check=lambda v: v >= 0, requirement=">= 0")
    final_dim: int = option(256, "width the last block's frames and the targets (wav2vec 2.0's quantised vectors, "
                            "HuBERT's cluster embeddings) are projected to before their cosine (fairseq's "
                            "wav2vec2_base and hubert_base: 256)", check=lambda v: v >= 1, requirement=">= 1")
    logit_temperature: float = option(0.1, "the temperature of the cosine logits (wav2vec 2.0's kappa, HuBERT's "
                                      "tau: 0.1)", check=lambda v: v > 0, requirement="> 0")
    representation_layer: int = option(0, "the Transformer block whose frames are served and mean-pooled into the "
                                       "representation, 1..transformer_layers; 0: the last, after the final "
                                       "LayerNorm (ours)", check=lambda v: v >= 0, requirement=">= 0")


def _frames(count):
    return f"{count} frame{'' if count == 1 else 's'} of 20 ms"


def build_speech_encoder(run, options, dataset, model_class):
    """The speech Transformer of `options` (a `SpeechTransformerOptions`), its widths times
    the run's `--width_multiplier` (the Transformer's rounded to a multiple of the heads
    and position groups); clips shorter than `model_class.MIN_SAMPLES` are refused in a
    `UserError` naming the method, before the run directory is claimed."""
    least = model_class.MIN_SAMPLES
    if dataset.num_samples < least:
        raise UserError(f"clips of {dataset.num_samples} samples give {_frames(feature_frames(dataset.num_samples))}; "
                        f"{model_class.METHOD_LABEL} needs at least {least} samples ({_frames(feature_frames(least))}); "
                        "raise --audio_seconds")
    heads = options.transformer_heads
    width = scaled_width(options.transformer_width, heads, options.position_groups, run.width_multiplier)
    conv_width = max(1, int(round(options.conv_width * run.width_multiplier)))
    return speech_transformer(conv_width, width, options.transformer_layers, heads, options.dropout,
                              options.position_kernel, options.position_groups, options.conv_norm)


def check_arguments(checks):
    """Raises `UserError("<name> must be <requirement>, got <value>")` for the first
    `(name, value, ok, requirement)` whose `ok` is false."""
    for name, value, ok, requirement in checks:
        if not ok:
            raise UserError(f"{name} must be {requirement}, got {value!r}")


class SpeechTransformerModel(MethodModel):
    """The base of wav2vec 2.0 and HuBERT: a `speech_transformer` `encoder` on float32
    waveforms `[B, samples]` in [-1, 1] at 16 kHz, trained and served at clips of
    `num_samples`, its latent frames masked in spans of `mask_span`.

    A subclass sets `METHOD_LABEL` (its name in messages) and `MIN_SAMPLES` (the shortest
    clip it trains on), keeps its own settings, and writes `method_loss`; it uses
    `global_span_mask` (the mask drawn for the global batch and this replica's rows),
    `feature_penalty_share` (this replica's share of lambda * mean(f^2)) and
    `step_seed`, and `track_frames` for the `feature_penalty` and `masked_fraction`
    metrics. What both compute and serve:

    * `frames(waveforms)`: the frames of block `representation_layer` (0: the last, after
      the final LayerNorm) of the unmasked clips, `[B, T, D]`; `layer_frames(waveforms,
      layer)` any block's; `representation` their mean over time;
    * `probe_frames(waveforms)`: every block's frames and the latents, from one pass
      (what `keras_ssl.evaluation.audio` pools);
    * `serving_endpoints`: `serving_default` (WAV bytes) and `embed_waveforms` (float32
      samples) -> `embedding` (the representation, L2-normalised) and `frames`;
    * `parameter_groups`: the feature encoder's gradients times `feature_gradient_scale`
      (fairseq's `feature_grad_mult`, which scales the gradient at the encoder's output:
      the same parameter gradients, since its backward pass is linear in it).
    """

    MODALITY = "audio"  # waveform batches [batch, samples]: checked by keras_ssl.modalities.audio
    METHOD_LABEL = "the speech model"
    MIN_SAMPLES = RECEPTIVE_FIELD  # one 20 ms frame

    def __init__(self, encoder, mask_prob, mask_span, feature_penalty, feature_gradient_scale, representation_layer,
                 num_samples, seed, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_blocks = len(transformer_blocks(encoder))
        check_arguments((
            ("num_samples", num_samples, num_samples >= self.MIN_SAMPLES,
             f">= {self.MIN_SAMPLES} ({_frames(feature_frames(self.MIN_SAMPLES))})"),
            ("mask_prob", mask_prob, 0 < mask_prob <= 1, "in (0, 1]"),
            ("mask_span", mask_span, mask_span >= 1, ">= 1"),
            ("representation_layer", representation_layer, 0 <= representation_layer <= self.num_blocks,
             f"in 0..{self.num_blocks} (the encoder's blocks; 0: the last)")))
        self.mask_prob, self.mask_span = float(mask_prob), int(mask_span)
        self.feature_penalty, self.feature_gradient_scale = float(feature_penalty), float(feature_gradient_scale)
        self.representation_layer = int(representation_layer)
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.frame_count = feature_frames(self.num_samples)
        self.width = int(encoder.output_shape[-1])

    def checked_inputs(self, x):
        """`x` as float32 `[batch, samples]` if `check_batch` accepts it."""
        return tf.cast(super().checked_inputs(x), tf.float32)

    def frames_of(self, waveforms):
        """The frame count of `waveforms` `[B, samples]`: an int when the length is static."""
        samples = waveforms.shape[1]
        return feature_frames(int(samples) if samples is not None else tf.shape(waveforms)[1])

    # -- the hooks of the method contract -------------------------------------------

    def parameter_groups(self):
        """The online probe's (none here) and the feature encoder's, its gradients scaled by
        `feature_gradient_scale`."""
        return self.probe_parameter_groups() + [ParameterGroup(
            "feature_encoder", tuple(feature_encoder_variables(self.encoder)), self.feature_gradient_scale)]

    def step_seed(self):
        """int32 `[2]`: `(seed, the optimizer's step)`, what a step's random draws are keyed by."""
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int32)
        return tf.stack([tf.constant(self.seed, tf.int32), step])

    # -- the parts of a step -----------------------------------------------------------

    def global_span_mask(self, waveforms, seed):
        """`(mask of the global batch bool [N_global, T], this replica's rows of it [B, T],
        its first row)`: every frame starts a span of `mask_span` with probability
        `mask_prob` (`span_mask`), drawn for the global batch from `seed` so that one
        device and R replicas mask the same frames of the same clip."""
        n_local = tf.shape(waveforms)[0]
        n_global, first = rows_of_this_replica(n_local)
        mask = span_mask(n_global, self.frames_of(waveforms), self.mask_prob, self.mask_span, seed)
        return mask, mask[first:first + n_local], first

    def track_frames(self, squares, mask):
        """Updates the `feature_penalty` (mean(f^2) per clip, `squares` [B]) and
        `masked_fraction` (of the bool `mask` [B, T]) trackers, weighted by this replica's clips."""
        weight = tf.cast(tf.shape(mask)[0], tf.float32)
        self.trackers["feature_penalty"].update_state(tf.reduce_mean(squares), sample_weight=weight)
        self.trackers["masked_fraction"].update_state(tf.reduce_mean(tf.cast(mask, tf.float32)), sample_weight=weight)

    def feature_penalty_share(self, features):
        """`(this replica's share of lambda * mean(f^2), mean(f^2) per clip [B])` for the
        feature encoder's output `features` `[B, T, C]`: fairseq's penalty, averaged over
        the clips of the global batch so that the replicas' shares sum to it."""
        squares = tf.reduce_mean(tf.square(tf.cast(features, tf.float32)), axis=[1, 2])
        n_global, _ = rows_of_this_replica(tf.shape(features)[0])
        return self.feature_penalty * tf.reduce_sum(squares) / tf.cast(n_global, tf.float32), squares

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

    def probe_frames(self, waveforms):
        """What the frozen-feature probes pool over time (`keras_ssl.evaluation.audio`), from
        one pass: `layer<k>` for the representation's block first, then every other block
        in order (`layer<L>` after the final LayerNorm), and `latent` (the feature
        encoder's LayerNorm output; wav2vec 2.0's quantiser input): each `[B, T, D]`."""
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
                            f"{self.METHOD_LABEL}")
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
