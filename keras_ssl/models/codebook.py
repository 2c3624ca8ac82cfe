"""The VQ-VAE codebook, shared by every vector-quantised model (`VQVAE` on images,
`VQVAEAudio` on log-mel frames): its options, its weights, the quantisation step's
code-usage metrics, the EMA updates and the dead-code restarts, and their handling
across replicas.

A model mixes `Codebook` in before `MethodModel` (`class VQVAE(Codebook, MethodModel)`),
calls `init_codebook(...)` in its constructor (checks and keeps the settings),
`build_codebook()` once its sub-models exist (the weights), `quantize_vectors(z)` and
`codebook_step(...)` in its `method_loss`; `after_apply` (the EMA and restarts) is the
mixin's. The formulas are in `Codebook`'s docstring; `tests/test_vqvae.py` checks them
against NumPy on one device and on two replicas.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.losses.generative import vector_quantize
from keras_ssl.losses.replicas import gather_across_replicas
from keras_ssl.options import option

# Laplace smoothing of the EMA code counts, Sonnet's VectorQuantizerEMA `epsilon`: an unused
# code's count stays positive, so its mean never divides by zero.
EMA_EPSILON = 1e-5


@dataclasses.dataclass
class CodebookOptions:
    """The codebook's hyper-parameters, shared by the VQ-VAEs (a subclass re-declares a
    field to give it its own default). Sources: beta = 0.25 (van den Oord et al. 2017,
    sec. 3.2 and 4.1); 128 codes of 16 dimensions, the keras.io MNIST VQ-VAE example's
    (Paul 2021; the paper's ImageNet model: K = 512, Sonnet's example: K = 512, D = 64);
    EMA codebook updates with decay 0.99 (the paper's appendix A.1, Sonnet's
    VectorQuantizerEMA) and dead-code restarts (Jukebox's random restarts, Dhariwal et al.
    2020) are off by default, as in the paper's main experiments."""

    codebook_size: int = option(128, "codes in the codebook, K (keras.io MNIST example: 128; the paper's ImageNet "
                                "model: 512)",
                                check=lambda v: v >= 2, requirement=">= 2")
    code_dim: int = option(16, "dimensions of a code vector, D (keras.io MNIST example: 16; Sonnet's example: 64)",
                           check=lambda v: v >= 1, requirement=">= 1")
    commitment_cost: float = option(0.25, "beta, the weight of the commitment loss (the paper: 0.25)",
                                    check=lambda v: v >= 0, requirement=">= 0")
    codebook_ema: bool = option(False, "update the codebook by moving averages of its encoder outputs instead of "
                                "the codebook loss's gradient (the paper's appendix A.1)")
    codebook_ema_decay: float = option(0.99, "decay of the codebook moving averages (the paper: 0.99)",
                                       check=lambda v: 0 < v < 1, requirement="in (0, 1)")
    dead_code_steps: int = option(0, "restart a code unused for this many steps at a random encoder output of the "
                                  "batch (0: never)", check=lambda v: v >= 0, requirement=">= 0")


def replica_sum(t):
    """`t` summed over the replicas of the current replica context (itself on one device)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return t
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, t)


def code_usage(counts):
    """`(perplexity, fraction used)` of code counts `[K]`: `exp(-sum_k p_k log p_k)` with
    `p = counts / sum(counts)` (K when every code is used equally, 1 when one code is), and
    the fraction of the K codes with a count."""
    counts = tf.cast(counts, tf.float32)
    p = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
    entropy = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p))
    return tf.exp(entropy), tf.reduce_mean(tf.cast(counts > 0, tf.float32))


class Codebook:
    """A mixin of `MethodModel`s: a codebook of `codebook_size` x `code_dim` vectors.

    `quantize_vectors(z)` replaces each vector of `z_e` by its nearest code with the
    straight-through gradient (`keras_ssl.losses.vector_quantize`): codebook loss
    `mean((e - sg[z_e])^2)`, commitment loss `beta * mean((z_e - sg[e])^2)`.
    `codebook_step` reports the step's code usage: `perplexity` (exp of the entropy of
    the global batch's code counts) and `codes_used` (the fraction of the K codes it
    uses), and returns the quantisation term of the loss (both terms; the commitment
    term alone with EMA).

    With `codebook_ema`, the codebook is no trainable weight and the codebook loss
    leaves the loss (it is still reported); after every step (`after_apply`), with
    `n_k` the vectors of the global batch assigned to code k and `s_k` their sum,
    decay `g` (the paper's appendix A.1, eqs. 6-8; Sonnet's VectorQuantizerEMA):

        N_k <- g N_k + (1 - g) n_k        m_k <- g m_k + (1 - g) s_k
        e_k <- m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j

    (Laplace smoothing, eps = 1e-5), starting from `N_k = 1`, `m_k = e_k` (each
    initial code counted once, so an unused code keeps its vector; Sonnet starts at
    zero with a bias correction). With `dead_code_steps = N > 0`, a code unused by
    the global batch for N steps in a row is re-initialised to an encoder output of
    the batch drawn at random (seeded by `seed` and the step; with EMA its `N_k = 1`,
    `m_k` the new vector), as Jukebox's random restarts (Dhariwal et al. 2020). The
    counts and sums are summed over the replicas (`all_reduce`) and the restart
    draws from the gathered global batch with the same seed on every replica, so
    every replica writes the same codebook, the one device's.
    """

    CODEBOOK_TRACKED = ("codebook_loss", "commitment_loss", "perplexity", "codes_used")

    def init_codebook(self, codebook_size, code_dim, commitment_cost, codebook_ema, codebook_ema_decay,
                      dead_code_steps, seed):
        """Checks and keeps the codebook's settings (each under its own name, so that the
        model's config saves them); the weights come with `build_codebook`."""
        for name, value, ok, requirement in (
                ("codebook_size", codebook_size, codebook_size >= 2, ">= 2"),
                ("code_dim", code_dim, code_dim >= 1, ">= 1"),
                ("commitment_cost", commitment_cost, commitment_cost >= 0, ">= 0"),
                ("codebook_ema_decay", codebook_ema_decay, 0 < codebook_ema_decay < 1, "in (0, 1)"),
                ("dead_code_steps", dead_code_steps, dead_code_steps >= 0, ">= 0")):
            if not ok:
                raise UserError(f"{name} must be {requirement}, got {value!r}")
        self.codebook_size, self.code_dim = int(codebook_size), int(code_dim)
        self.commitment_cost = float(commitment_cost)
        self.codebook_ema, self.codebook_ema_decay = bool(codebook_ema), float(codebook_ema_decay)
        self.dead_code_steps, self.seed = int(dead_code_steps), int(seed)
        # each replica's vectors and codes of the step, from method_loss to after_apply (the replicas
        # of a MirroredStrategy step run in threads on this one object: keyed by replica context)
        object.__setattr__(self, "_step_codes", {})

    def build_codebook(self):
        """The codebook (Sonnet's initialiser: VarianceScaling(distribution="uniform"),
        fan-in D), and with EMA its counts and sums, with restarts each code's unused steps."""
        limit = math.sqrt(3.0 / self.code_dim)
        state = dict(trainable=False, autocast=False, aggregation="only_first_replica")
        self.codebook = self.add_weight(shape=(self.codebook_size, self.code_dim), dtype="float32",
                                        initializer=keras.initializers.RandomUniform(-limit, limit), name="codebook",
                                        **dict(state, trainable=not self.codebook_ema))
        if self.codebook_ema:
            self.ema_count = self.add_weight(shape=(self.codebook_size,), dtype="float32", initializer="ones",
                                             name="ema_count", **state)
            self.ema_sum = self.add_weight(shape=(self.codebook_size, self.code_dim), dtype="float32",
                                           initializer="zeros", name="ema_sum", **state)
            self.ema_sum.assign(self.codebook.value)
        if self.dead_code_steps:
            self.unused_steps = self.add_weight(shape=(self.codebook_size,), dtype="int32", initializer="zeros",
                                                name="unused_steps", **state)

    def quantize_vectors(self, z):
        """`(quantized, codes, codebook_loss, commitment_loss)` of `z` (`vector_quantize`)."""
        return vector_quantize(z, self.codebook.value, self.commitment_cost)

    def lookup_codes(self, codes):
        """The code vectors of int codes `[...]`: float32 `[..., code_dim]` (unchecked)."""
        return tf.gather(self.codebook.value, tf.cast(codes, tf.int32))

    def codebook_step(self, z, codes, codebook_loss, commitment_loss, weight, training):
        """The quantisation term of this replica's loss (its mean terms; the caller scales it
        by its share of the global batch), after updating the `codebook_loss`,
        `commitment_loss` (weighted by `weight`, the local batch size), `perplexity` and
        `codes_used` trackers, and keeping the step's vectors `z` and `codes` for
        `after_apply` when training with EMA or restarts."""
        flat_codes = tf.reshape(codes, [-1])
        counts = replica_sum(tf.math.unsorted_segment_sum(tf.ones_like(flat_codes, tf.float32), flat_codes,
                                                          self.codebook_size))
        perplexity, used = code_usage(counts)
        for name, value in (("codebook_loss", codebook_loss), ("commitment_loss", commitment_loss)):
            self.trackers[name].update_state(value, sample_weight=weight)
        self.trackers["perplexity"].update_state(perplexity)  # of the global batch: the same on every replica
        self.trackers["codes_used"].update_state(used)
        if training and (self.codebook_ema or self.dead_code_steps):  # for after_apply, in this step
            self._step_codes[id(tf.distribute.get_replica_context())] = (
                tf.stop_gradient(tf.reshape(z, [-1, self.code_dim])), flat_codes, counts)
        return commitment_loss if self.codebook_ema else codebook_loss + commitment_loss

    def after_apply(self):
        """The EMA codebook update and the dead-code restarts (see the class docstring), from
        the vectors and codes of this step's global batch."""
        step = self._step_codes.pop(id(tf.distribute.get_replica_context()), None)
        if step is None:
            return
        z, codes, counts = step
        if self.codebook_ema:
            decay = self.codebook_ema_decay
            sums = replica_sum(tf.math.unsorted_segment_sum(z, codes, self.codebook_size))
            count = decay * self.ema_count + (1.0 - decay) * counts
            total = decay * self.ema_sum + (1.0 - decay) * sums
            self.ema_count.assign(count)
            self.ema_sum.assign(total)
            n = tf.reduce_sum(count)
            smoothed = (count + EMA_EPSILON) / (n + self.codebook_size * EMA_EPSILON) * n
            self.codebook.assign(total / smoothed[:, None])
        if self.dead_code_steps:
            unused = tf.where(counts > 0, 0, self.unused_steps + 1)
            dead = unused >= self.dead_code_steps
            rows, _ = gather_across_replicas(z)  # the global batch's vectors, in replica order
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
            drawn = tf.gather(rows, tf.random.stateless_uniform([self.codebook_size], seed, 0, tf.shape(rows)[0],
                                                                dtype=tf.int32))
            self.codebook.assign(tf.where(dead[:, None], drawn, self.codebook))
            if self.codebook_ema:
                self.ema_sum.assign(tf.where(dead[:, None], drawn, self.ema_sum))
                self.ema_count.assign(tf.where(dead, 1.0, self.ema_count))
            self.unused_steps.assign(tf.where(dead, 0, unused))
