"""An autoregressive prior over a frozen VQ-VAE's codes (van den Oord, Vinyals,
Kavukcuoglu 2017, sec. 3.3 and 4): a gated PixelCNN (van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders") over the grid of code indices
of a finished `vqvae` run, a second stage:

    keras-ssl-train --flagfile=flags/vqvae_fashion_mnist.cfg
    keras-ssl-train --flagfile=flags/vqvae_prior_fashion_mnist.cfg   # --parent_run=runs/vqvae_fashion_mnist

With the prior, VQ-VAE is a generative model: codes drawn from the prior, decoded by
the parent's decoder, and a bound on -log p(x) in bits/dim (`prior_likelihood`).
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.layers_masked import GatedActivation, MaskedConv2D
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

# The first layer's kernel (7x7 vertical, 1x7 horizontal, mask A): PixelCNN's (van den Oord
# et al. 2016, "Pixel Recurrent Neural Networks", table 4); later gated layers: 3x3 (and 1x3).
FIRST_KERNEL = 7
GATED_KERNEL = 3
# Images per call when the parent encodes a split (prepare, evaluation).
ENCODE_BATCH = 256


@dataclasses.dataclass
class VQVAEPriorOptions:
    """The prior's hyper-parameters. Sources: a small gated PixelCNN, ours, sized for
    a 7x7 grid on a CPU: 64 channels and 5 gated layers (with the 7x7 first layer the
    receptive field covers the whole 7x7 grid: 3 + 5 rows above, 3 + 5 columns left);
    the paper's (van den Oord et al. 2016) has 15 gated layers of 384 channels for
    ImageNet, the keras.io VQ-VAE example's PixelCNN prior (Paul 2021) 128 filters,
    2 residual blocks and 2 masked layers. Sampling temperature 1: ancestral sampling
    from the model's own distribution (below 1 sharpens it)."""

    prior_channels: int = option(64, "channels of the gated PixelCNN prior (ours, for CPU; the gated PixelCNN "
                                 "paper: 384)", check=lambda v: v >= 1, requirement=">= 1")
    prior_layers: int = option(5, "gated layers after the first masked layer (ours; the paper: 15)",
                               check=lambda v: v >= 1, requirement=">= 1")
    sampling_temperature: float = option(1.0, "the prior's logits are divided by this when sampling (1: the "
                                         "model's distribution)", check=lambda v: v > 0, requirement="> 0")


def gated_pixelcnn(grid_shape, codebook_size, channels=VQVAEPriorOptions.prior_channels,
                   layers=VQVAEPriorOptions.prior_layers, name="prior"):
    """A gated PixelCNN over `[h, w]` int code grids -> float32 logits `[h, w, K]`.

    An embedding of the K codes (`channels` wide); a first layer with mask A
    (vertical 7x7, horizontal 1x7: a position never sees itself); then `layers`
    gated layers (van den Oord et al. 2016, fig. 2, without conditioning):

        v_f = MaskedConv_v(v)                     (k x k, mask B, 2C channels)
        h_f = MaskedConv_h(h) + Conv1x1(v_f)      (1 x k, mask B, 2C channels)
        v <- tanh(v_f[:C]) * sigmoid(v_f[C:])
        h <- h + Conv1x1(tanh(h_f[:C]) * sigmoid(h_f[C:]))   (residual)

    then ReLU, a 1x1 convolution (C, ReLU) and a 1x1 convolution to K logits (float32).
    Logits at (i, j) depend on the codes at positions before (i, j) in row-major order
    only (`keras_ssl.layers_masked`; checked by tests/test_vqvae_prior.py)."""
    (h, w), k, c = grid_shape, int(codebook_size), int(channels)
    codes = keras.Input((h, w), dtype="int32", name="codes")
    x = keras.layers.Embedding(k, c, name="embedding")(codes)
    v = MaskedConv2D(c, FIRST_KERNEL, stack="vertical", mask_type="A", name="vertical0")(x)
    hs = MaskedConv2D(c, (1, FIRST_KERNEL), stack="horizontal", mask_type="A", name="horizontal0")(x)
    for i in range(1, int(layers) + 1):
        v_features = MaskedConv2D(2 * c, GATED_KERNEL, stack="vertical", name=f"vertical{i}")(v)
        h_features = MaskedConv2D(2 * c, (1, GATED_KERNEL), stack="horizontal", name=f"horizontal{i}")(hs)
        h_features = keras.layers.Add(name=f"vertical_to_horizontal{i}")(
            [h_features, keras.layers.Conv2D(2 * c, 1, name=f"vertical_link{i}")(v_features)])
        v = GatedActivation(name=f"vertical_gate{i}")(v_features)
        gated = GatedActivation(name=f"horizontal_gate{i}")(h_features)
        hs = keras.layers.Add(name=f"residual{i}")([hs, keras.layers.Conv2D(c, 1, name=f"horizontal_out{i}")(gated)])
    y = keras.layers.ReLU(name="relu")(hs)
    y = keras.layers.Conv2D(c, 1, activation="relu", name="head")(y)
    logits = keras.layers.Conv2D(k, 1, dtype="float32", name="logits")(y)
    return keras.Model(codes, logits, name=name)


def code_cross_entropy(logits, codes):
    """-log p(codes) per grid, in nats: the categorical cross-entropy of `codes`
    `[B, h, w]` under `logits` `[B, h, w, K]`, summed over the positions: float32 `[B]`."""
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(codes, tf.int32),
                                                         logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(nll, axis=[1, 2])


@keras.saving.register_keras_serializable(package="keras_ssl")
class VQVAEPrior(MethodModel):
    """A gated PixelCNN prior p(c) over the code grids of a frozen VQ-VAE.

    `vqvae` is the parent run's `VQVAE` (a copy of its weights, frozen: nothing of it
    trains); `prior` the gated PixelCNN (`gated_pixelcnn`). With `c` the parent's codes
    of an image (`VQVAE.encode_codes`), the loss per grid, in nats, is

        L(c) = -sum_{i,j} log p(c_ij | c_<ij)      (row-major order)

    the categorical cross-entropy of each position's K logits, summed over the h x w
    positions. Each replica returns `sum(its L) / B_global`, so the sum over replicas
    is the global batch's mean. Metrics: `loss` (nats per grid), `bits_per_code`
    (`loss / (h w ln 2)`) and `accuracy` (top-1 of the next code).

    `fit()` takes int code grids `[B, h, w]` (the stage's `training_data`). The model's
    own inputs otherwise are the parent's images: `predict` (and `encoder.keras`, the
    linear probe) give the parent's frozen encoder features, since the prior has no
    image encoder of its own. Sampling (`sample_codes`) is ancestral, position by
    position; the export serves `serving_default` = `sample` (seeds -> uint8 `images`
    through the parent's decoder, and the `codes`), `log_prob` (row-major codes as
    `tokens` -> `nats`, -log p(c)) and `decode` (codes -> uint8 images).
    """

    SUB_MODELS = ("vqvae", "prior")
    TRACKED = ("loss", "bits_per_code", "accuracy")

    def __init__(self, vqvae, prior=None, prior_channels=VQVAEPriorOptions.prior_channels,
                 prior_layers=VQVAEPriorOptions.prior_layers,
                 sampling_temperature=VQVAEPriorOptions.sampling_temperature, **kwargs):
        super().__init__(**kwargs)
        for name, value, ok, requirement in (("prior_channels", prior_channels, prior_channels >= 1, ">= 1"),
                                             ("prior_layers", prior_layers, prior_layers >= 1, ">= 1"),
                                             ("sampling_temperature", sampling_temperature,
                                              sampling_temperature > 0, "> 0")):
            if not ok:
                raise UserError(f"{name} must be {requirement}, got {value!r}")
        self.vqvae = vqvae
        self.vqvae.trainable = False
        self.prior_channels, self.prior_layers = int(prior_channels), int(prior_layers)
        self.sampling_temperature = float(sampling_temperature)
        self.grid_shape = tuple(int(d) for d in vqvae.grid_shape)
        self.codebook_size = int(vqvae.codebook_size)
        self.prior = prior if prior is not None else gated_pixelcnn(self.grid_shape, self.codebook_size,
                                                                    self.prior_channels, self.prior_layers)
        object.__setattr__(self, "_compiled_sampler", None)  # a tf.function for eager calls, made when first used
        self.build()

    @property
    def encoder(self):
        """The parent's image encoder (frozen): what `encoder.keras` keeps and the probe reads."""
        return self.vqvae.encoder

    @property
    def image_shape(self):
        return self.vqvae.image_shape

    @property
    def positions(self):
        """h * w, the codes of a grid."""
        return self.grid_shape[0] * self.grid_shape[1]

    def representation(self, images, training=False):
        """The parent's frozen encoder features: `[B, D]`."""
        return self.vqvae.encoder(self.input_modality().as_model_input(images), training=False)

    # -- the prior ------------------------------------------------------------

    def _code_grid(self, codes):
        """int32 `[B, h, w]` of codes, checked as the parent checks them (`VQVAE.code_grid`)."""
        return self.vqvae.code_grid(codes)

    def code_logits(self, codes, training=False):
        """The prior's logits, float32 `[B, h, w, K]`: position (i, j) from the codes before it."""
        return tf.cast(self.prior(self._code_grid(codes), training=training), tf.float32)

    def code_nll(self, codes):
        """-log p(codes) per grid in nats, float32 `[B]` (`code_cross_entropy`)."""
        grid = self._code_grid(codes)
        return code_cross_entropy(self.code_logits(grid), grid)

    def method_loss(self, data, training):
        codes, labels = split_data(data)
        if labels is not None or isinstance(codes, (tuple, list)):
            raise UserError("VQVAEPrior trains on batches of code grids [batch, h, w] (no labels)")
        (h, w) = self.grid_shape
        codes = tf.convert_to_tensor(codes)
        if codes.dtype.is_floating or codes.shape.rank != 3 or tuple(codes.shape[1:]) != (h, w):
            raise UserError(f"VQVAEPrior trains on int code grids [batch, {h}, {w}], got {codes.dtype.name} "
                            f"{tuple(codes.shape)}")
        codes = tf.cast(codes, tf.int32)
        logits = self.code_logits(codes, training)
        nll = code_cross_entropy(logits, codes)
        n_local = tf.shape(codes)[0]
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), codes), tf.float32)
        weight = tf.cast(n_local, tf.float32)
        mean_nll = tf.reduce_mean(nll)
        for name, value in (("loss", mean_nll), ("bits_per_code", mean_nll / (self.positions * math.log(2.0))),
                            ("accuracy", tf.reduce_mean(correct))):
            self.trackers[name].update_state(value, sample_weight=weight)
        return tf.reduce_sum(nll) / n_global

    # -- sampling -------------------------------------------------------------------

    def sample_codes(self, seeds):
        """Codes drawn from the prior, int32 `[B, h, w]`, one grid per seed: ancestral
        sampling in row-major order (h * w passes), position p's code drawn by
        `tf.random.stateless_categorical` of its logits / `sampling_temperature`, seeded
        by `(seed, p)`: a seed always gives the same codes, whatever else is in the batch."""
        if tf.executing_eagerly():
            if self._compiled_sampler is None:
                object.__setattr__(self, "_compiled_sampler", tf.function(
                    self._sample_codes, input_signature=[tf.TensorSpec([None], tf.int64)]))
            return self._compiled_sampler(tf.cast(tf.reshape(seeds, [-1]), tf.int64))
        return self._sample_codes(seeds)

    def _sample_codes(self, seeds):
        (h, w), k = self.grid_shape, self.codebook_size
        seeds = tf.cast(tf.reshape(seeds, [-1]), tf.int64)
        batch = tf.shape(seeds)[0]
        rows = tf.range(batch)

        def draw(p, codes):
            i, j = p // w, p % w
            logits = self.code_logits(codes)[:, i, j, :] / self.sampling_temperature
            drawn = tf.map_fn(
                lambda a: tf.random.stateless_categorical(a[0][None], 1, tf.stack([a[1], tf.cast(p, tf.int64)]),
                                                          dtype=tf.int32)[0, 0],
                (logits, seeds), fn_output_signature=tf.int32)
            at = tf.stack([rows, tf.fill([batch], i), tf.fill([batch], j)], axis=1)
            return p + 1, tf.tensor_scatter_nd_update(codes, at, drawn)

        _, codes = tf.while_loop(lambda p, _: p < h * w, draw,
                                 (tf.constant(0), tf.zeros(tf.stack([batch, h, w]), tf.int32)))
        return tf.ensure_shape(codes, [None, h, w])

    def decode_images(self, codes):
        """uint8 `[B, H, W, C]`: the parent decoder's mean at `codes`, rounded."""
        return self.vqvae.to_uint8(self.vqvae.decode_codes(self._code_grid(codes)))

    def sample_images(self, seeds):
        """uint8 `[B, H, W, C]`: `decode_images(sample_codes(seeds))`."""
        return self.decode_images(self.sample_codes(seeds))

    # -- likelihood -----------------------------------------------------------------

    def nll_terms(self, images):
        """`(prior NLL of the codes, decoder NLL of the image given them)` per image, in
        nats, float32 `[B]` each; their sum bounds -log p(x) (`prior_likelihood_metrics`)."""
        codes, reconstruction = self.vqvae.encode_and_score(images)
        return self.code_nll(codes), reconstruction

    # -- what it serves -------------------------------------------------------------

    def serving_endpoints(self, image_shape, threshold=None):
        """`serving_default` and `sample` (seeds -> uint8 `images` and int32 `codes`
        `[h, w]`), `log_prob` (row-major codes `[h * w]` as `tokens` -> `nats`, the
        prior's -log p(codes)) and `decode` (codes as `tokens` -> uint8 `images`). No
        embedding signature."""
        if threshold is not None:
            raise UserError(f"a threshold only applies to models with a verify signature, not {type(self).__name__}")
        (h, w), k = self.grid_shape, self.codebook_size
        images = ServingOutput("images", "uint8", self.image_shape,
                               "codes drawn from the prior, decoded: the parent decoder's mean, rounded")
        drawn = ServingOutput("codes", "int32", (h, w), f"the codes drawn (of {k}), row by row")
        tokens = ServingInput("codes", "tokens", shape=(h * w,), vocabulary_size=k)

        def sample(seeds):
            codes = self.sample_codes(seeds)
            return {"images": self.decode_images(codes), "codes": codes}

        seeds = (ServingInput("seeds", "seeds"),)
        return [
            Endpoint("serving_default", seeds, (images, drawn), sample),
            Endpoint("sample", seeds, (images, drawn), sample),
            Endpoint("log_prob", (tokens,),
                     (ServingOutput("nats", "float32", (), "-log p(codes) under the prior, in nats"),),
                     lambda c: {"nats": self.code_nll(c)}),
            Endpoint("decode", (tokens,), (ServingOutput("images", "uint8", self.image_shape,
                                                         "the parent decoder's mean, rounded"),),
                     lambda c: {"images": self.decode_images(c)}),
        ]


# -- the stage ---------------------------------------------------------------------------


def encode_split(parent, images, batch_size=ENCODE_BATCH):
    """The parent's codes of `images` (uint8 `[N, H, W, C]`), int32 `[N, h, w]`, in batches."""
    if tuple(images.shape[1:]) != tuple(parent.image_shape):
        raise UserError(f"the parent VQ-VAE takes {parent.image_shape} images, this run's are "
                        f"{tuple(images.shape[1:])}: train the prior at the parent's --image_size")
    encode = tf.function(parent.encode_codes, input_signature=[tf.TensorSpec([None, *images.shape[1:]],
                                                                             tf.as_dtype(images.dtype))])
    grid = tuple(parent.grid_shape)
    parts = [np.asarray(encode(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, *grid), np.int32)


def _prepare(run, options, split, parent):
    """`codes`: the parent's codes of every training image, int32 `[N, h, w]` (its
    encoder and nearest codes: deterministic)."""
    return {"codes": encode_split(parent, split.images)}


def _build(run, options, encoder, dataset, stage=None):
    """The prior over a copy of the parent VQ-VAE made here, inside the strategy's scope
    (the parent is loaded outside it), with the parent's weights; the run's own
    `encoder` is unused (the parent's is kept)."""
    from keras_ssl.models.vqvae import VQVAE

    parent = stage.parent
    if tuple(dataset.image_shape) != tuple(parent.image_shape):
        raise UserError(f"the parent VQ-VAE ({run.parent_run}) takes {parent.image_shape} images, this run's are "
                        f"{tuple(dataset.image_shape)}: train the prior at the parent's --image_size")
    vqvae = VQVAE.from_config(parent.get_config())
    vqvae.set_weights(parent.get_weights())
    return VQVAEPrior(vqvae, **option_arguments(options, VQVAEPrior))


def _training_data(run, options, split, stage=None):
    """Shuffled batches of code grids, int32 `[B, h, w]`: the prepared `codes` for the
    training split, the parent's codes of any other split (evaluation)."""
    codes = stage.artefacts["codes"]
    if len(codes) != len(split):
        codes = encode_split(stage.parent, split.images)
    data = (tf.data.Dataset.from_tensor_slices(codes).shuffle(len(codes), seed=run.seed).repeat()
            .batch(run.batch_size, drop_remainder=True).prefetch(2))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


# -- its evaluation -----------------------------------------------------------------------


def prior_likelihood_metrics(model, images, batch_size=ENCODE_BATCH):
    """The test likelihood of VQ-VAE + prior, averaged over the 8-bit `images`:

    * `prior_nats_per_grid`, `prior_bits_per_code`: -log p(c) of the codes c = q(x)
      of each image (the parent's nearest codes), in nats per grid and in bits per
      code (`nats / (h w ln 2)`);
    * `recon_nll_nats`: -log p(x | c), the parent decoder's discretised-logistic NLL;
    * `test_nats`, `test_bits_per_dim`: their sum, `(-log p(c) - log p(x | c)) / (H W C ln 2)`
      in bits/dim. Since the codes are a deterministic function of x, this is
      -log p(x, c(x)) >= -log sum_c p(x, c) = -log p(x): an upper bound on the image's
      NLL (the VAE's bound with a point-mass posterior, KL = -log p(c)), comparable with
      the VAE's `test_bits_per_dim`.
    """
    score = tf.function(model.nll_terms, input_signature=[tf.TensorSpec([None, *images.shape[1:]],
                                                                        tf.as_dtype(images.dtype))])
    prior, reconstruction = [], []
    for start in range(0, len(images), batch_size):
        p, r = score(images[start:start + batch_size])
        prior.append(np.asarray(p, np.float64))
        reconstruction.append(np.asarray(r, np.float64))
    prior, reconstruction = np.concatenate(prior), np.concatenate(reconstruction)
    dims = float(np.prod(images.shape[1:]))
    total = prior + reconstruction
    return {"prior_nats_per_grid": float(np.mean(prior)),
            "prior_bits_per_code": float(np.mean(prior)) / (model.positions * math.log(2.0)),
            "recon_nll_nats": float(np.mean(reconstruction)),
            "test_nats": float(np.mean(total)),
            "test_bits_per_dim": float(np.mean(total)) / (dims * math.log(2.0))}


def _prior_likelihood(context):
    """VQ-VAE + prior's bound on the test NLL (`prior_likelihood_metrics`)."""
    return prior_likelihood_metrics(context.model, context.dataset.test.images)


register_evaluation(Evaluation(
    "prior_likelihood", "a VQ-VAE prior's code NLL (nats, bits/code) and VQ-VAE + prior bits/dim",
    _prior_likelihood, ("prior_nats_per_grid", "prior_bits_per_code", "recon_nll_nats", "test_nats",
                        "test_bits_per_dim"), needs_labels=False))


register(Method(
    name="vqvae_prior", summary="gated PixelCNN prior over a finished VQ-VAE run's codes (van den Oord et al. 2016, "
                                "2017)",
    options=VQVAEPriorOptions, build=_build, training_data=_training_data, parent="vqvae", prepare=_prepare,
    # Adam at 1e-3 without decay or warmup, batch 128: the keras.io VQ-VAE example's PixelCNN prior
    # (Paul 2021: Adam's default 1e-3, batch 128); no augmentation (the codes are the data)
    run_defaults=dict(model_dir="runs/vqvae_prior", optimizer="adam", learning_rate=1e-3, lr_scaling="none",
                      warmup_epochs=0.0, weight_decay=0.0, augment="none", batch_size=128),
    evaluations=("probe", "prior_likelihood", "samples", "sample_score"),
    smoke_options=dict(augment="none", batch_size=16, prior_channels=16, prior_layers=2),
))
