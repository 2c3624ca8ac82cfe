"""Variational autoencoder (Kingma & Welling 2014) on 8-bit images, with a
discretised logistic likelihood so that its bound is in bits/dim of the image."""

import dataclasses
import math

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.losses import bits_per_dim, discretized_logistic_nll, gaussian_kl
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import rows_of_this_replica, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

_LOG_2PI = math.log(2.0 * math.pi)
# The decoder's log-scale starts here (a logistic scale of 0.14 on [0, 1] intensities), ours:
# measured after 200 Fashion-MNIST steps, 4.44 bits/dim against 4.58 from 0 and 4.44 from -3.
INITIAL_LOG_SCALE = -2.0


@dataclasses.dataclass
class VAEOptions:
    """The VAE's hyper-parameters. Sources: 50 latent dimensions, the single
    stochastic layer whose test likelihoods Burda et al. 2016 (sec. 5) report on
    MNIST (Kingma & Welling 2014, fig. 2, try 3 to 200); beta = 1, the plain
    VAE whose loss is the negative ELBO (beta-VAE, Higgins et al. 2017, weighs
    the KL by beta > 1 for disentangling)."""

    latent_dim: int = option(50, "latent dimensions (Burda et al. 2016: 50)", check=lambda v: v >= 1,
                             requirement=">= 1")
    beta: float = option(1.0, "weight of the KL term (1: the ELBO; beta-VAE, Higgins et al. 2017: > 1)",
                         check=lambda v: v >= 0, requirement=">= 0")


def eight_bit(images):
    """The 8-bit values of images, float32 in {0, ..., 255}: uint8 as they are,
    floats in [0, 1] as `round(x * 255)` (clipped first)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32)
    return tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0)


def to_uint8(intensities):
    """Float intensities in [0, 1] -> uint8 images, rounded (clipped first)."""
    return tf.cast(tf.round(tf.clip_by_value(tf.cast(intensities, tf.float32), 0.0, 1.0) * 255.0), tf.uint8)


def posterior_head(grid_shape, latent_dim, name="posterior"):
    """q(z|x)'s parameters from the encoder's last grid `[h, w, C]` (before its
    global pooling, so the latent can keep where things are): flattened, then
    two Dense layers to the `mean` and `log_variance` of a diagonal Gaussian
    (Kingma & Welling 2014, appendix C.2), in float32 (exp of the log-variance)."""
    grid = keras.Input(tuple(grid_shape), name="grid")
    flat = keras.layers.Flatten(name="flatten")(grid)
    mean = keras.layers.Dense(int(latent_dim), dtype="float32", name="mean")(flat)
    log_variance = keras.layers.Dense(int(latent_dim), dtype="float32", name="log_variance")(flat)
    return keras.Model(grid, [mean, log_variance], name=name)


def pixel_decoder(latent_dim, image_shape, width_multiplier=1.0, name="decoder"):
    """p(x|z)'s parameters: a Dense layer to a grid of a quarter of the image's
    side, two stride-2 Conv2DTranspose (64 and 32 channels times
    `width_multiplier`, ReLU; the small CNN encoder's widths mirrored), a 3x3
    convolution to 2C channels (per pixel: the logistic mean's logit and its
    log-scale, in float32), cropped to the image's `(H, W)`: any image size."""
    height, width, channels = (int(d) for d in image_shape)
    wide, narrow = (max(8, int(round(w * width_multiplier))) for w in (64, 32))
    grid_h, grid_w = -(-height // 4), -(-width // 4)
    latent = keras.Input((int(latent_dim),), name="latent")
    x = keras.layers.Dense(grid_h * grid_w * wide, activation="relu", name="project")(latent)
    x = keras.layers.Reshape((grid_h, grid_w, wide), name="grid")(x)
    x = keras.layers.Conv2DTranspose(wide, 3, strides=2, padding="same", activation="relu", name="up1")(x)
    x = keras.layers.Conv2DTranspose(narrow, 3, strides=2, padding="same", activation="relu", name="up2")(x)
    start = keras.initializers.Constant([0.0] * channels + [INITIAL_LOG_SCALE] * channels)
    x = keras.layers.Conv2D(2 * channels, 3, padding="same", bias_initializer=start, dtype="float32",
                            name="pixels")(x)
    x = keras.layers.Cropping2D(((0, 4 * grid_h - height), (0, 4 * grid_w - width)), dtype="float32",
                                name="crop")(x)
    return keras.Model(latent, x, name=name)


def _unpooled_grid(encoder):
    """A function images -> the encoder's grid before its global pooling (shared
    weights). Kept in a closure, so that Keras does not track the encoder's
    layers twice (the encoder alone is saved)."""
    from keras_ssl.encoders import with_unpooled

    model = with_unpooled(encoder)
    if len(model.output["unpooled"].shape) != 4:
        raise UserError(f"the VAE needs an image encoder with a spatial grid, got {encoder.name} with output "
                        f"{model.output['unpooled'].shape}")

    def grid(images, training=False):
        return model(images, training=training)["unpooled"]

    return grid, tuple(model.output["unpooled"].shape[1:])


def gaussian_log_density(z, mean, log_variance):
    """log N(z; mean, exp(log_variance)) summed over the last axis."""
    return -0.5 * tf.reduce_sum(_LOG_2PI + log_variance + tf.square(z - mean) * tf.exp(-log_variance), axis=-1)


@keras.saving.register_keras_serializable(package="keras_ssl")
class VAE(MethodModel):
    """Variational autoencoder (Kingma & Welling 2014) of 8-bit images.

    q(z|x) = N(mean(x), diag(exp(log_variance(x)))) from the `encoder`'s last
    grid (`posterior_head`); z = mean + exp(log_variance / 2) * eps,
    eps ~ N(0, I) (the reparameterisation trick, sec. 2.4); p(z) = N(0, I);
    p(x|z) a discretised logistic per pixel value (`pixel_decoder`: mean
    sigmoid(logit), log-scale per pixel). Loss per image, in nats:

        L(x) = -log p(x|z) + beta * KL(q(z|x) || N(0, I))

    `discretized_logistic_nll` (Salimans et al. 2017, eq. 2) and the analytic
    `gaussian_kl` (Kingma & Welling 2014, appendix B); with beta = 1 this is
    the negative ELBO, an upper bound on -log p(x). The likelihood is of the
    8-bit values: every value 0..255 gets the logistic's mass on its bin, so
    p(x|z) sums to one over the 256^(HWC) images and the bound in bits/dim
    compares with VQ-VAE + prior, PixelCNN and published numbers. A Bernoulli
    on intensities in [0, 1] is no likelihood of 8-bit data (it sums to one
    over binary images), and a Gaussian on [0, 1] a density, not a probability.

    `fit()` takes image batches `x` (uint8, or floats in [0, 1], read as
    `round(x * 255)`); labels are refused (no online probe). eps is drawn
    statelessly from `seed`, the step counter and the example's row in the
    global batch (one draw for the global batch, each replica taking its rows),
    so one device and R replicas give the same loss and gradients. Each replica
    returns `sum(local L) / N_global`. Metrics: `loss` (L, nats per image),
    `reconstruction` (-log p(x|z)), `kl`, `elbo` (-(reconstruction + kl),
    whatever beta) and `bits_per_dim` (-elbo / (HWC ln 2)).

    Evaluation: `negative_elbo`, `importance_weighted_nll` (Burda et al. 2016),
    `reconstruct`, `sample_images`, `latent_activity`, `traverse`. Serves the
    posterior mean as `embedding` (L2-normalised), `encode`, `decode` (latent ->
    uint8 images) and `sample` (seeds -> uint8 images and their latents).
    """

    SUB_MODELS = ("encoder", "posterior", "decoder")
    TRACKED = ("loss", "reconstruction", "kl", "elbo", "bits_per_dim")

    def __init__(self, encoder, image_shape=None, latent_dim=VAEOptions.latent_dim, beta=VAEOptions.beta,
                 width_multiplier=1.0, seed=0, posterior=None, decoder=None, **kwargs):
        """`image_shape` (H, W, C): what the decoder makes (default: the encoder's
        input shape); `width_multiplier` scales the decoder's widths; `seed`
        seeds the training noise."""
        super().__init__(**kwargs)
        if int(latent_dim) < 1 or float(beta) < 0:
            raise UserError(f"the VAE needs latent_dim >= 1 and beta >= 0, got {latent_dim} and {beta}")
        self.encoder = encoder
        image_shape = tuple(image_shape or encoder.input_shape[1:])
        if len(image_shape) != 3 or None in image_shape:
            raise UserError(f"the VAE needs a fixed image shape (H, W, C), got {image_shape}; pass image_shape=")
        self.image_shape = tuple(int(d) for d in image_shape)
        self.latent_dim = int(latent_dim)
        self.beta = float(beta)
        self.width_multiplier = float(width_multiplier)
        self.seed = int(seed)
        self._grid, grid_shape = _unpooled_grid(encoder)
        self.posterior = posterior if posterior is not None else posterior_head(grid_shape, self.latent_dim)
        self.decoder = decoder if decoder is not None else pixel_decoder(self.latent_dim, self.image_shape,
                                                                         self.width_multiplier)
        self.build()

    # -- the distributions -------------------------------------------------------

    def posterior_parameters(self, pixels, training=False):
        """q(z|x) of 8-bit values `pixels` (`eight_bit`): `(mean, log_variance)`, float32 `[B, D]`."""
        mean, log_variance = self.posterior(self._grid(pixels / 255.0, training=training), training=training)
        return tf.cast(mean, tf.float32), tf.cast(log_variance, tf.float32)

    def pixel_distribution(self, z, training=False):
        """p(x|z): the logistic's `(mean in (0, 1), log_scale)`, float32 `[B, H, W, C]` each."""
        logit, log_scale = tf.split(tf.cast(self.decoder(z, training=training), tf.float32), 2, axis=-1)
        return tf.sigmoid(logit), log_scale

    def _terms(self, pixels, noise, training=False):
        """`(-log p(x|z), KL(q(z|x) || p(z)))` per image, float32 `[B]` each, with
        z = mean + exp(log_variance / 2) * noise."""
        mean, log_variance = self.posterior_parameters(pixels, training)
        z = mean + tf.exp(0.5 * log_variance) * noise
        pixel_mean, log_scale = self.pixel_distribution(z, training)
        return discretized_logistic_nll(pixels, pixel_mean, log_scale), gaussian_kl(mean, log_variance)

    def _training_noise(self, n_local):
        """eps `[n_local, D]`: this replica's rows of one draw for the global batch,
        seeded by `seed` and the step counter."""
        n_global, first = rows_of_this_replica(n_local)
        optimizer = getattr(self, "optimizer", None)  # none before compile()
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int64)
        noise = tf.random.stateless_normal([n_global, self.latent_dim], tf.stack([tf.constant(self.seed, tf.int64),
                                                                                 step]))
        return noise[first:first + n_local], n_global

    def method_loss(self, data, training):
        x, y = split_data(data)
        self.refuse_labels_without_probe(y, "learns without labels")
        pixels = eight_bit(self.checked_inputs(x))
        n_local = tf.shape(pixels)[0]
        noise, n_global = self._training_noise(n_local)
        reconstruction, kl = self._terms(pixels, noise, training)
        losses = reconstruction + self.beta * kl
        nelbo = reconstruction + kl
        weight = tf.cast(n_local, tf.float32)
        for name, values in (("loss", losses), ("reconstruction", reconstruction), ("kl", kl), ("elbo", -nelbo),
                             ("bits_per_dim", bits_per_dim(nelbo, self.dimensions))):
            self.trackers[name].update_state(tf.reduce_mean(values), sample_weight=weight)
        return tf.reduce_sum(losses) / tf.cast(n_global, tf.float32)

    @property
    def dimensions(self):
        """Values per image, H * W * C (bits/dim's denominator)."""
        return math.prod(self.image_shape)

    # -- likelihood bounds ------------------------------------------------------

    def negative_elbo(self, images, seed=0):
        """-ELBO per image in nats, float32 `[B]`: `-log p(x|z) + KL` with one z per
        image drawn with `seed` (int or `[2]` ints) and the analytic KL (beta = 1,
        whatever the training beta): an upper bound on -log p(x) in expectation."""
        pixels = eight_bit(tf.convert_to_tensor(images))
        noise = self._evaluation_noise(1, tf.shape(pixels)[0], seed)[0]
        reconstruction, kl = self._terms(pixels, noise)
        return reconstruction + kl

    def importance_weighted_nll(self, images, k, seed=0):
        """The importance-weighted bound (Burda et al. 2016, sec. 3) per image in nats,
        float32 `[B]`:

            -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

        an upper bound on -log p(x) that tightens as `k` grows (k = 1: the ELBO,
        its KL estimated by the same sample). Decodes k * B images at once."""
        pixels = eight_bit(tf.convert_to_tensor(images))
        batch = tf.shape(pixels)[0]
        mean, log_variance = self.posterior_parameters(pixels)
        noise = self._evaluation_noise(k, batch, seed)
        z = mean[None] + tf.exp(0.5 * log_variance)[None] * noise  # [k, B, D]
        flat = tf.reshape(z, [-1, self.latent_dim])
        pixel_mean, log_scale = self.pixel_distribution(flat)
        repeated = tf.reshape(tf.tile(pixels[None], [k, 1, 1, 1, 1]), tf.shape(pixel_mean))
        log_likelihood = -tf.reshape(discretized_logistic_nll(repeated, pixel_mean, log_scale), [k, batch])
        log_prior = gaussian_log_density(z, 0.0, 0.0)
        log_posterior = gaussian_log_density(z, mean[None], log_variance[None])
        log_weights = log_likelihood + log_prior - log_posterior
        return -(tf.reduce_logsumexp(log_weights, axis=0) - math.log(k))

    def _evaluation_noise(self, k, batch, seed):
        """eps `[k, batch, D]` drawn with `seed`: an int (read as `(seed, 0)`) or two ints."""
        seed = (seed, 0) if isinstance(seed, int) else seed
        return tf.random.stateless_normal(tf.stack([k, batch, self.latent_dim]), tf.cast(seed, tf.int64))

    # -- what it computes ---------------------------------------------------------

    def representation(self, images, training=False):
        """The posterior mean, `[B, latent_dim]`: what `predict` returns and the embedding."""
        return self.posterior_parameters(eight_bit(images), training)[0]

    def reconstruct(self, images):
        """The decoder's mean at the posterior mean: float32 `[B, H, W, C]` in [0, 1]."""
        return self.pixel_distribution(self.representation(images))[0]

    def decode_images(self, latents):
        """uint8 `[B, H, W, C]`: the decoder's mean at `latents`, rounded."""
        return to_uint8(self.pixel_distribution(tf.cast(latents, tf.float32))[0])

    def sample_latents(self, seeds):
        """z ~ N(0, I) per seed (`tf.random.stateless_normal` seeded by `(seed, 0)`): float32 `[B, D]`."""
        seeds = tf.cast(tf.convert_to_tensor(seeds), tf.int32)
        return tf.map_fn(lambda s: tf.random.stateless_normal([self.latent_dim], tf.stack([s, 0])), seeds,
                         fn_output_signature=tf.float32)

    def sample_images(self, seeds):
        """uint8 `[B, H, W, C]` decoded from `sample_latents(seeds)`: a seed always gives the same image."""
        return self.decode_images(self.sample_latents(seeds))

    def latent_activity(self, images):
        """Per latent dimension, the variance over `images` of the posterior mean,
        float32 `[D]`; a dimension is active above 0.01 (Burda et al. 2016, sec. 5)."""
        return tf.math.reduce_variance(self.representation(images), axis=0)

    def traverse(self, image, dimensions, values):
        """uint8 `[len(dimensions), len(values), H, W, C]`: `image`'s posterior mean with
        one dimension set to each of `values` per row (Higgins et al. 2017 traverse -3..3)."""
        mean = self.representation(tf.convert_to_tensor(image)[None])[0]
        values = tf.constant(values, tf.float32)
        rows = []
        for d in dimensions:
            latents = tf.tile(mean[None], [len(values), 1])
            rows.append(self.decode_images(tf.tensor_scatter_nd_update(
                latents, tf.stack([tf.range(len(values)), tf.fill([len(values)], int(d))], 1), values)))
        return tf.stack(rows)

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures (the posterior mean, L2-normalised), `encode`
        (images -> `mean`, `log_variance`), `decode` (latent -> uint8 `images`) and
        `sample` (seeds -> uint8 `images` and the `latent` drawn)."""
        images = ServingOutput("images", "uint8", self.image_shape, "the decoder's mean, rounded to 8 bits")
        latent = ServingOutput("latent", "float32", (self.latent_dim,), "z ~ N(0, I) drawn with the seed")

        def encode(x):
            mean, log_variance = self.posterior_parameters(eight_bit(x))
            return {"mean": mean, "log_variance": log_variance}

        def sample(seeds):
            z = self.sample_latents(seeds)
            return {"images": self.decode_images(z), "latent": z}

        return super().serving_endpoints(image_shape, threshold) + [
            Endpoint("encode", (ServingInput("images"),),
                     (ServingOutput("mean", "float32", (self.latent_dim,), "q(z|x)'s mean"),
                      ServingOutput("log_variance", "float32", (self.latent_dim,), "q(z|x)'s log-variance")),
                     encode),
            Endpoint("decode", (ServingInput("latent", "latent", shape=(self.latent_dim,)),), (images,),
                     lambda z: {"images": self.decode_images(z)}),
            Endpoint("sample", (ServingInput("seeds", "seeds"),), (images, latent), sample),
        ]


def _build(run, options, encoder, dataset, stage=None):
    return VAE(encoder, image_shape=dataset.image_shape, width_multiplier=run.width_multiplier, seed=run.seed,
               **option_arguments(options, VAE))


def _training_data(run, options, split, stage=None):
    """Shuffled image batches (uint8): the noise is drawn in the step."""
    from keras_ssl.data.views import image_batches

    return TrainingData(image_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="vae", summary="variational autoencoder, discretised logistic likelihood (Kingma & Welling 2014)",
    options=VAEOptions, build=_build, training_data=_training_data,
    # Adam at 1e-3, no weight decay: Kingma & Welling 2014 (sec. 5) train with Adagrad; Adam is
    # what later VAEs use (Burda et al. 2016: Adam, 1e-3 first). Batch 128 is ours (CPU).
    run_defaults=dict(model_dir="runs/vae", optimizer="adam", learning_rate=1e-3, lr_scaling="none",
                      warmup_epochs=0.0, weight_decay=0.0, augment="none", batch_size=128),
    evaluations=("probe", "likelihood", "reconstruction", "samples", "sample_score"),
    smoke_options=dict(augment="none", batch_size=16, latent_dim=8),
))
