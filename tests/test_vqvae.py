"""VQ-VAE (keras_ssl.models.vqvae): the step's loss and the codebook updates against
NumPy on a tiny model, the straight-through gradient, EMA and restarts on two replicas,
and the binaries with the SavedModel served without keras (issue 32)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.losses import discretized_logistic_nll
from keras_ssl.models.vqvae import EMA_EPSILON, VQVAE
from tests.helpers import BLOCK_KERAS

SEED = 3
K, D = 16, 2  # codes of the tiny model; a 2x2 grid of 4 px images: 4 vectors per image


def tiny_model(**options):
    """4x4x1 images -> a 2x2 conv (stride 2, linear) -> a 2x2x3 grid -> 1x1 conv to D -> K codes;
    decoder: nearest-neighbour upsampling x2 and a 1x1 conv to the mean logit and log-scale."""
    keras.utils.set_random_seed(SEED)
    images = keras.Input((4, 4, 1))
    grid = keras.layers.Conv2D(3, 2, strides=2, name="grid")(images)
    encoder = keras.Model(images, keras.layers.GlobalAveragePooling2D()(grid), name="tiny_encoder")
    quantized = keras.Input((2, 2, D))
    up = keras.layers.UpSampling2D(2)(quantized)
    decoder = keras.Model(quantized, keras.layers.Conv2D(2, 1, dtype="float32", name="pixels")(up), name="decoder")
    return VQVAE(encoder, decoder=decoder, codebook_size=K, code_dim=D, seed=SEED, **options)


def batch(n=4, seed=SEED):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)


def numpy_forward(model, x):
    """An independent float64 forward pass: `(z [N, D], codes [N], nll per image, mean, log-scale)`."""
    (w1, b1), (wp, bp) = model.encoder.get_weights(), model.pre_quantizer.get_weights()
    wd, bd = model.decoder.get_weights()
    codebook = model.codebook.numpy().astype(np.float64)
    n = len(x)
    patches = (x / 255.0).reshape(n, 2, 2, 2, 2, 1).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2, 2, 4)
    z = (patches @ w1.reshape(4, 3) + b1) @ wp.reshape(3, D) + bp
    flat = z.reshape(-1, D)
    codes = np.argmin(((flat[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    e = codebook[codes].reshape(n, 2, 2, D)
    out = np.repeat(np.repeat(e, 2, axis=1), 2, axis=2) @ wd.reshape(D, 2) + bd
    mean, log_scale = 1.0 / (1.0 + np.exp(-out[..., :1])), out[..., 1:]

    def cdf(v):
        return 1.0 / (1.0 + np.exp(-(v - mean) / np.exp(log_scale)))

    k = x.astype(np.float64)
    p = np.where(k == 0, cdf(0.5 / 255), np.where(k == 255, 1.0 - cdf(254.5 / 255),
                                                   cdf((k + 0.5) / 255) - cdf((k - 0.5) / 255)))
    return flat, codes, -np.log(p).reshape(n, -1).sum(1), mean, log_scale


def _fit_one_step(model, x, learning_rate=0.1, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():  # the optimizer's variables mirrored with the model's
        model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return {k: v[0] for k, v in model.fit(tf.data.Dataset.from_tensors(x), epochs=1, verbose=0).history.items()}


def test_a_whole_step_matches_numpy():
    """The step's loss and metrics, and the codebook after one SGD step, from NumPy."""
    model, x = tiny_model(), batch()
    z, codes, nll, _, _ = numpy_forward(model, x)
    codebook = model.codebook.numpy().astype(np.float64)
    e = codebook[codes]
    codebook_loss = np.mean((e - z) ** 2)
    logs = _fit_one_step(model, x, learning_rate=0.1)
    np.testing.assert_allclose(logs["reconstruction"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["codebook_loss"], codebook_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["commitment_loss"], 0.25 * codebook_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], nll.mean() / 16 + 1.25 * codebook_loss, rtol=1e-5)
    counts = np.bincount(codes, minlength=K)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(logs["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)
    np.testing.assert_allclose(logs["codes_used"], np.mean(counts > 0), rtol=1e-6)
    # the codebook moves by the codebook loss alone: d/de_k mean((e - z)^2) = 2 sum_{i: k} (e_k - z_i) / (N D)
    gradient = np.zeros_like(codebook)
    np.add.at(gradient, codes, 2.0 * (e - z) / z.size)
    np.testing.assert_allclose(model.codebook.numpy(), codebook - 0.1 * gradient, rtol=1e-5, atol=1e-6)


def test_uint8_and_float_images_give_the_same_loss():
    model, x = tiny_model(), batch()
    as_uint8 = float(model.method_loss(x, training=False))
    assert float(model.method_loss((x / 255.0).astype(np.float32), training=False)) == pytest.approx(as_uint8,
                                                                                                    rel=1e-5)


def test_the_straight_through_gradient_reaches_the_encoder():
    """With no commitment loss the encoder learns only through the decoder: the gradient at
    `z_e` is the decoder's gradient at the quantised vectors, copied."""
    model, x = tiny_model(commitment_cost=0.0), batch()
    z = model.encode_grid(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        quantized, codes, _, _ = model.quantize_grid(z)
        e = tf.gather(model.codebook.value, codes)
        tape.watch(e)

        def nll(q):
            return tf.reduce_sum(discretized_logistic_nll(x, *model.pixel_parameters(q)))

        through, direct = nll(quantized), nll(e)
    np.testing.assert_allclose(tape.gradient(through, z), tape.gradient(direct, e), rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = model.method_loss(x, training=True)
    kernel = model.encoder.get_layer("grid").kernel
    gradient = tape.gradient(loss, kernel.value)
    assert gradient is not None and np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0


def test_the_ema_update_matches_numpy():
    """Decay g: N <- g N + (1 - g) n, m <- g m + (1 - g) s, e = m / N~ (Laplace-smoothed)."""
    decay = 0.9
    model, x = tiny_model(codebook_ema=True, codebook_ema_decay=decay), batch()
    assert not model.codebook.trainable and id(model.codebook) not in map(id, model.trainable_variables)
    z, codes, nll, _, _ = numpy_forward(model, x)
    codebook = model.codebook.numpy().astype(np.float64)
    logs = _fit_one_step(model, x)
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    sums = np.zeros((K, D))
    np.add.at(sums, codes, z)
    count = decay * 1.0 + (1 - decay) * counts  # both start as the initial codes, counted once
    total = decay * codebook + (1 - decay) * sums
    smoothed = (count + EMA_EPSILON) / (count.sum() + K * EMA_EPSILON) * count.sum()
    np.testing.assert_allclose(model.ema_count.numpy(), count, rtol=1e-6)
    np.testing.assert_allclose(model.ema_sum.numpy(), total, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.codebook.numpy(), total / smoothed[:, None], rtol=1e-5, atol=1e-6)
    # the codebook loss is reported but not optimised: the loss is reconstruction + commitment
    np.testing.assert_allclose(logs["loss"], nll.mean() / 16 + logs["commitment_loss"], rtol=1e-5)


def test_dead_code_restarts_replace_exactly_the_unused_codes():
    x = batch(2)  # 8 vectors for 16 codes: at least 8 unused
    plain, restarting = tiny_model(), tiny_model(dead_code_steps=1)
    z, codes, _, _, _ = numpy_forward(restarting, x)
    unused = np.bincount(codes, minlength=K) == 0
    assert unused.sum() >= K - len(z)
    _fit_one_step(plain, x)
    _fit_one_step(restarting, x)
    after, stepped = restarting.codebook.numpy(), plain.codebook.numpy()
    np.testing.assert_array_equal(after[~unused], stepped[~unused])  # used codes: the gradient step only
    for row in after[unused]:  # each restarted code is one of the batch's encoder outputs
        assert np.min(np.abs(z - row).max(axis=1)) < 1e-5, (row, z)
    assert not np.any(np.all(np.isclose(after[unused][:, None], stepped[unused][None]), axis=-1))
    assert restarting.unused_steps.numpy().tolist() == [0] * K
    waiting = tiny_model(dead_code_steps=2)  # unused once: counted, not yet restarted
    before = waiting.codebook.numpy()
    _fit_one_step(waiting, x)
    np.testing.assert_array_equal(waiting.codebook.numpy()[unused], before[unused])
    assert waiting.unused_steps.numpy().tolist() == unused.astype(int).tolist()


def test_ema_and_restarts_on_two_replicas_equal_one_device(two_cpu_strategy):
    """The code counts and sums are summed over the replicas and the restart draws from the
    gathered global batch: two replicas write the one device's codebook and moving averages."""
    x = batch(4, seed=SEED + 1)  # 16 vectors, 2 images a replica
    options = dict(codebook_ema=True, codebook_ema_decay=0.8, dead_code_steps=1)
    one = tiny_model(**options)
    start = one.get_weights()
    logs_one = _fit_one_step(one, x)
    with two_cpu_strategy.scope():
        two = tiny_model(**options)
        two.set_weights(start)
    logs_two = _fit_one_step(two, x, strategy=two_cpu_strategy)
    for a, b, v in zip(one.get_weights(), two.get_weights(), one.weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=v.path)
    assert np.any(one.codebook.numpy() != start[[v.path for v in one.weights].index(one.codebook.path)])
    for name in ("loss", "reconstruction", "perplexity", "codes_used"):
        np.testing.assert_allclose(logs_two[name], logs_one[name], rtol=1e-5, err_msg=name)


def test_decode_refuses_codes_outside_the_codebook_and_reconstruct_round_trips():
    model, x = tiny_model(), batch()
    codes = model.encode_codes(x)
    assert codes.shape == (4, 2, 2) and codes.dtype == tf.int32
    np.testing.assert_array_equal(model.decode_codes(tf.reshape(codes, [4, -1])), model.reconstruct(x))
    with pytest.raises(UserError, match=rf"codes must be in \[0, {K}\), got values from 0 to {K}"):
        model.decode_codes(tf.constant([[0, 1, 2, K]]))
    with pytest.raises(UserError, match=r"codes must be \[batch, 2, 2\] or row-major \[batch, 4\], got shape"):
        model.decode_codes(np.zeros((1, 5), np.int32))


SERVE = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    images = np.load(sys.argv[2])
    png = tf.stack([tf.io.encode_png(i) for i in images])
    codes = m.signatures["encode"](images=png)["codes"]
    decoded = m.signatures["decode"](codes=tf.reshape(tf.cast(codes, tf.int64), [len(images), -1]))["images"]
    again = m.signatures["reconstruct"](images=png)["images"]
    try:
        outside = tf.fill([1, int(np.prod(codes.shape[1:]))], tf.constant(int(sys.argv[3]), tf.int64))
        m.signatures["decode"](codes=outside)
        refused = None
    except Exception as e:
        refused = str(e)
    print(json.dumps({"codes": codes.numpy().tolist(), "decoded": decoded.numpy().tolist(),
                      "reconstructed": again.numpy().tolist(), "refused": refused,
                      "keras_loaded": "keras" in sys.modules or "keras_ssl" in sys.modules}))
''')


def test_binaries_train_and_export_digits_at_16px_served_without_keras(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    model_dir, codebook_size = str(tmp_path / "run"), 32
    run("keras_ssl.bin.train", "--method=vqvae", "--dataset=digits", "--image_size=16", "--epochs=1",
        "--steps_per_epoch=3", "--batch_size=32", "--width_multiplier=0.25", f"--codebook_size={codebook_size}",
        "--code_dim=8", "--decoder_hidden_dim=16", "--dtype_policy=float32", "--verbose=0", f"--model_dir={model_dir}")
    training = json.load(open(os.path.join(model_dir, "training.json")))
    assert {"reconstruction", "perplexity", "codes_used"} <= set(training["final_metrics"])
    proc = run("keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={tmp_path / 'exports'}")
    path = proc.stdout.strip().splitlines()[-1].split("exported: ")[-1]
    from keras_ssl.data import load_source

    images = load_source("digits", image_size=(16, 16)).test.images[:6]
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", SERVE, path, str(tmp_path / "images.npy"), str(codebook_size)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not served["keras_loaded"]
    assert np.asarray(served["codes"]).shape == (6, 4, 4)  # 16 px through the small CNN: a 4x4 grid
    decoded = np.asarray(served["decoded"])
    assert decoded.shape == (6, 16, 16, 1)
    assert decoded.tolist() == served["reconstructed"]
    assert served["refused"] and f"token ids must be in [0, {codebook_size})" in served["refused"]


def test_the_codebook_evaluation_matches_numpy(tmp_path):
    import types

    from keras_ssl.evaluation.codebook import evaluate_codebook

    model, x = tiny_model(), batch(40)
    _, codes, nll, _, _ = numpy_forward(model, x)
    report = evaluate_codebook(model, types.SimpleNamespace(images=x), str(tmp_path), batch_size=16)
    counts = np.bincount(codes, minlength=K)
    p = counts[counts > 0] / counts.sum()
    assert report["codebook_perplexity"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-6)
    assert report["codes_used"] == np.mean(counts > 0) and report["codebook_size"] == K
    assert report["recon_bits_per_dim"] == pytest.approx(nll.mean() / (16 * np.log(2)), rel=1e-5)
    assert os.path.getsize(report["codebook_usage_plot"]) > 1000
    assert evaluate_codebook(model, types.SimpleNamespace(images=x))["codebook_usage_plot"] is None
