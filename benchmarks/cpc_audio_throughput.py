"""CPC audio training throughput (clips/s) of each audio encoder, back to back in one process.

    python benchmarks/cpc_audio_throughput.py --encoders=cpc_conv,cpc_conv_plain --rounds=3
    python benchmarks/cpc_audio_throughput.py --encoders=cpc_conv --dtype_policies=float32,mixed_bfloat16

Random one-second clips (the step's cost does not depend on what they hold),
the model of `flags/cpc_spoken_digits.cfg` (512 x 0.25 channels, GRU 256,
K = 12, 128 negatives, batch 32, Adam). For each encoder and dtype policy
(`auto` picks one for this CPU as the binaries do; an emulated 16-bit policy
gets the binaries' warning): `warmup` untimed
steps, then `rounds` rounds of `steps` timed steps; the rounds alternate
between the models, so a machine whose speed drifts affects all alike.
Prints one line per model (median clips/s over the rounds) and the ratio
to the first one. Compare encoders only within one run: this project's
CPUs differ from session to session.
"""

import time

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_list("encoders", ["cpc_conv", "cpc_conv_plain"], "audio encoders to compare")
flags.DEFINE_list("dtype_policies", ["float32"], "dtype policies to compare (float32, mixed_bfloat16, auto, ...)")
flags.DEFINE_float("width_multiplier", 0.25, "encoder width: 512 x this")
flags.DEFINE_integer("batch", 32, "clips per step")
flags.DEFINE_float("seconds", 1.0, "clip length")
flags.DEFINE_integer("steps", 10, "timed steps per round")
flags.DEFINE_integer("rounds", 3, "timed rounds per encoder, alternating")
flags.DEFINE_integer("warmup", 3, "untimed steps first (tracing, allocator)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import keras
    import tensorflow as tf

    from keras_ssl.audio_encoders import build_audio_encoder
    from keras_ssl.models import CPC
    from keras_ssl.precision import cpu_summary, resolve_dtype_policy, slow_policy_warning

    samples = int(16000 * FLAGS.seconds)
    clips = np.random.default_rng(0).uniform(-0.5, 0.5, (FLAGS.batch, samples)).astype(np.float32)
    batch = tf.constant(clips)
    policies = {}  # as given -> resolved
    for given in FLAGS.dtype_policies:
        policies[given] = resolve_dtype_policy(given)
        warning = slow_policy_warning(policies[given])
        if warning:
            print(warning)
    if len(set(policies.values())) < len(FLAGS.dtype_policies):
        raise app.UsageError(f"--dtype_policies={','.join(FLAGS.dtype_policies)} names one policy twice on this CPU "
                             f"({', '.join(f'{g} -> {r}' for g, r in policies.items())})")
    steps = {}
    for encoder in FLAGS.encoders:
        for given, policy in policies.items():
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            # CPC's own defaults (GRU 256, K = 12, 128 negatives) are the flagfile's.
            model = CPC(build_audio_encoder(encoder, FLAGS.width_multiplier), num_samples=samples)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
            model.make_train_function()
            for _ in range(FLAGS.warmup):
                model.train_function(iter([(batch,)]))
            steps[f"{encoder} {given}" + (f" ({policy})" if given != policy else "")] = model
    rates = {name: [] for name in steps}
    for _ in range(FLAGS.rounds):
        for name, model in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                logs = model.train_function(iter([(batch,)]))
            float(logs["loss"])  # wait for the last step
            rates[name].append(FLAGS.steps * FLAGS.batch / (time.perf_counter() - start))
    first = float(np.median(next(iter(rates.values()))))
    print(f"CPU: {cpu_summary()}; width {512 * FLAGS.width_multiplier:g} channels, batch {FLAGS.batch}, "
          f"{FLAGS.seconds:g} s clips")
    for name in steps:
        median = float(np.median(rates[name]))
        print(f"{name:36s} {median:7.1f} clips/s  (rounds: {', '.join(f'{r:.1f}' for r in rates[name])})  "
              f"x{median / first:.2f}")


if __name__ == "__main__":
    app.run(main)
