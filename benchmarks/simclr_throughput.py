"""SimCLR training throughput (images/s, both views counted).

    python benchmarks/simclr_throughput.py --encoder=small_cnn --image_size=28 --channels=1 \
        --batch=256 --steps=20 --dtype_policy=auto --nojit_compile --pipeline

    # the speed-ups of keras_ssl/__init__.py and keras_ssl/layers.py, undone one by one:
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/simclr_throughput.py --nopipeline --nofused_batch_norm
    python benchmarks/simclr_throughput.py --nopipeline --nofused_batch_norm

Measures `steps` training steps after `warmup` untimed ones. With
`--pipeline` batches come from the real input pipeline (in-memory
Fashion-MNIST resized/converted to the requested shape -> shuffle -> batch ->
two augmented views per image -> prefetch); with `--nopipeline` one fixed
batch of views is fed repeatedly, so only the model step is timed. The last
line printed is `images_per_second=<float>`. `--optimizer=sgd` is lightly's
(momentum 0.9, weight decay 5e-4), for benchmarks/compare_lightly.py.
"""

import os
import time

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_string("encoder", "small_cnn", "small_cnn, resnet18, resnet34 or resnet50")
flags.DEFINE_integer("image_size", 28, "image side in pixels")
flags.DEFINE_integer("channels", 1, "1 or 3")
flags.DEFINE_integer("batch", 256, "batch size (images; each gives two views)")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps first (tracing, allocator)")
flags.DEFINE_float("width_multiplier", 1.0, "encoder width multiplier")
flags.DEFINE_enum("dtype_policy", "auto", ["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy (auto: keras_ssl.precision.resolve_dtype_policy)")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the train step")
flags.DEFINE_boolean("pipeline", True, "feed from the real input pipeline")
flags.DEFINE_enum("optimizer", "lars", ["lars", "adam", "sgd"], "optimizer")
flags.DEFINE_boolean("fused_batch_norm", True,
                     "keras_ssl's FusedBatchNormalization; --nofused_batch_norm: Keras's own layer (to compare)")
flags.DEFINE_string("augment", None, "augmentation preset (default: fashion_mnist for 1 channel, cifar for 3)")
FLAGS = flags.FLAGS


def forward_flops(model):
    """Multiply-adds x 2 of the Conv2D and Dense layers of one image's forward pass."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ssl.data import load_source, simclr_augment, simclr_views
    from keras_ssl.encoders import build_encoder
    from keras_ssl.heads import projection_head
    from keras_ssl.layers import with_keras_batch_norm
    from keras_ssl.models import SimCLR
    from keras_ssl.optimizers import LARS
    from keras_ssl.precision import cpu_summary, onednn_enabled, resolve_dtype_policy

    policy = resolve_dtype_policy(FLAGS.dtype_policy)
    keras.mixed_precision.set_global_policy(policy)
    augment = FLAGS.augment or ("fashion_mnist" if FLAGS.channels == 1 else "cifar")
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    encoder = build_encoder(FLAGS.encoder, shape, FLAGS.width_multiplier, cifar_stem=True)
    projector = None
    if not FLAGS.fused_batch_norm:
        encoder = with_keras_batch_norm(encoder)
        projector = with_keras_batch_norm(projection_head(int(encoder.output_shape[-1])))
    model = SimCLR(encoder, projector=projector, augment=augment)
    if FLAGS.optimizer == "lars":
        optimizer = LARS(0.3)
    elif FLAGS.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(0.06, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, jit_compile=FLAGS.jit_compile)
    n_batches = FLAGS.steps + FLAGS.warmup
    if FLAGS.pipeline:
        ds = load_source("fashion_mnist", image_size=shape[:2], channels=shape[2])
        data = simclr_views(ds.train, FLAGS.batch, augment, with_labels=False)
    else:
        images = np.random.default_rng(0).integers(0, 256, (FLAGS.batch,) + shape, dtype=np.uint8)
        a = simclr_augment(images, tf.constant([0, 0], tf.int64), augment)
        b = simclr_augment(images, tf.constant([0, 1], tf.int64), augment)
        data = tf.data.Dataset.from_tensors((a, b)).repeat()

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == FLAGS.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.elapsed = time.perf_counter() - self.start

    timer = Timer()
    model.fit(data, steps_per_epoch=n_batches, epochs=1, verbose=0, callbacks=[timer])
    step_s = timer.elapsed / FLAGS.steps
    ips = 2 * FLAGS.batch / step_s
    # backward ~ 2x forward: a training step is ~3x the forward FLOPs per view
    gflops = 3 * (forward_flops(encoder) + forward_flops(model.projector)) * ips / 1e9
    print(f"cpu={cpu_summary()} tensorflow={tf.__version__} onednn={onednn_enabled()}")
    print(f"encoder={FLAGS.encoder} shape={shape} batch={FLAGS.batch} dtype_policy={policy} "
          f"optimizer={FLAGS.optimizer} fused_batch_norm={FLAGS.fused_batch_norm} jit_compile={FLAGS.jit_compile} pipeline={FLAGS.pipeline} "
          f"params={encoder.count_params()} step_ms={1000 * step_s:.1f} achieved_gflops={gflops:.1f} "
          f"threads={os.cpu_count()}")
    print(f"images_per_second={ips:.1f}")


if __name__ == "__main__":
    app.run(main)
