"""keras-ssl-train: pretrain a representation.

    keras-ssl-train --flagfile=flags/simclr_fashion_mnist.cfg
    python -m keras_ssl.bin.train --dataset=digits --epochs=2 --model_dir=runs/try

Re-running with the same --model_dir resumes from the latest epoch checkpoint.
"""

import sys

from absl import flags

from keras_ssl.bin.common import define_method_flags, define_setting_flags, run_main  # first: it imports TF quietly

from keras_ssl import modalities  # noqa: E402,I001
from keras_ssl.distribute import STRATEGIES  # noqa: E402
from keras_ssl.models import registry  # noqa: E402
from keras_ssl.optimizers import LR_SCALINGS, OPTIMIZERS  # noqa: E402
from keras_ssl.precision import POLICIES  # noqa: E402


def _defaults():
    from keras_ssl.config import TrainConfig

    return TrainConfig()


d = _defaults()  # run defaults come from TrainConfig: the binary and the library agree
flags.DEFINE_string("model_dir", d.model_dir, "run directory: config, checkpoints, logs, encoder")
flags.DEFINE_enum("method", d.method, list(registry.names()),
                  "; ".join(f"{m.name}: {m.summary}" for m in registry.methods()))
flags.DEFINE_string("parent_run", None, "a stage's parent: the run directory of the finished run of the method it "
                    "continues (its model is loaded frozen; see keras_ssl.stages); refused for other methods")
flags.DEFINE_string("dataset", d.dataset, "fashion_mnist, digits, tfds:NAME[:split] or folder:PATH")
flags.DEFINE_string("data_dir", None, "where to look for dataset files first")
flags.DEFINE_integer("train_limit", None, "use only the first N training images (quick runs)")
flags.DEFINE_enum("encoder", None, [e for m in modalities.names() for e in modalities.get(m).encoders],
                  "backbone (default: " + ", ".join(f"{modalities.get(m).default_encoder} for {m} methods"
                                                    for m in modalities.names()) + ")")
flags.DEFINE_float("width_multiplier", d.width_multiplier, "encoder width multiplier")
flags.DEFINE_integer("batch_size", d.batch_size, "global batch size (examples per step over all replicas; a "
                     "method may put several inputs through the encoder per example, SimCLR two views)")
flags.DEFINE_integer("epochs", d.epochs, "training epochs")
flags.DEFINE_integer("steps_per_epoch", None, "steps per epoch (default: one pass over the data)")
flags.DEFINE_enum("optimizer", d.optimizer, list(OPTIMIZERS), "optimizer")
flags.DEFINE_float("learning_rate", d.learning_rate, "base learning rate (scaled by --lr_scaling)")
flags.DEFINE_enum("lr_scaling", d.lr_scaling, list(LR_SCALINGS),
                  "peak lr = lr*B/256 (linear), lr*sqrt(B) (sqrt) or lr (none)")
flags.DEFINE_float("warmup_epochs", d.warmup_epochs, "linear warmup epochs before cosine decay")
flags.DEFINE_float("weight_decay", d.weight_decay, "weight decay (LARS, AdamW)")
flags.DEFINE_float("momentum", d.momentum, "momentum (LARS, SGD)")
flags.DEFINE_string("train_classes", None, "train only on these classes, e.g. 0-6 (hold the rest out)")
flags.DEFINE_float("val_fraction", d.val_fraction, "hold out this fraction of training images (calibration)")
flags.DEFINE_enum("strategy", d.strategy, list(STRATEGIES),
                  "distribution strategy (multi_worker reads TF_CONFIG; see keras-ssl-launch-local)")
flags.DEFINE_integer("cpu_replicas", None, "mirrored without GPUs: split the CPU into N devices")
flags.DEFINE_enum("dtype_policy", d.dtype_policy, list(POLICIES),
                  "Keras dtype policy; auto: mixed_bfloat16 on CPUs with AMX-BF16 and GPUs (8.0+), "
                  "mixed_float16 on 7.x GPUs, else float32 (bfloat16 is slower on other CPUs: 0.7x with "
                  "AVX512-BF16 and no AMX, 13x slower where emulated; float16 was 4-250x slower on every CPU "
                  "measured; a forced slow one gets a warning)")
flags.DEFINE_alias("mixed_precision", "dtype_policy")
flags.DEFINE_boolean("allow_slow_precision", False,
                     "run a forced --dtype_policy=mixed_float16 on a CPU anyway (refused otherwise: 4-250x "
                     "slower than float32 there)")
flags.DEFINE_boolean("jit_compile", d.jit_compile,
                     "XLA-compile the train step (off by default: 1.4-1.8x slower on CPU, fails under "
                     "multi-replica CPU strategies)")
flags.DEFINE_integer("seed", d.seed, "random seed (shuffling, views, initialisation)")
flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "epoch checkpoints to keep")
flags.DEFINE_integer("verbose", d.verbose,
                  "0: only the result; 1: a start-up summary, then a per-step bar on a terminal (one line "
                  "per epoch and a progress line every 30 s elsewhere); 2: the summary, one line per epoch "
                  "and a progress line (images/s, loss, ETA) every 30 s", lower_bound=0, upper_bound=2)
define_setting_flags(flags)
define_method_flags(flags)
for _name in [*modalities.setting_owners(), *registry.option_owners()]:  # listed by --help, not only --helpfull
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def config_from_flags():
    """The run's `TrainConfig`: every run flag, and of the setting and method
    flags those given (a flag of another modality or method is refused with one
    line)."""
    import dataclasses

    from keras_ssl.config import TrainConfig

    method = registry.get(FLAGS.method)
    # A run flag left at its default gives way to the method's own default (its run_defaults).
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)
              if f.name in FLAGS and (FLAGS[f.name].present or f.name not in method.run_defaults)}
    declared = [*modalities.setting_owners(), *registry.option_owners()]
    values.update({name: FLAGS[name].value for name in declared if FLAGS[name].present})
    return TrainConfig.from_dict(values).validate()


def main(argv):
    if len(argv) > 1:
        from keras_ssl.errors import UserError

        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    config = config_from_flags()
    from keras_ssl.precision import refuse_cpu_float16, slow_policy_warning
    from keras_ssl.training import train

    if config.strategy != "tpu":  # TPUs: bf16 native
        refuse_cpu_float16(config.dtype_policy, FLAGS.allow_slow_precision)
    inputs_per_step = config.batch_size * config.method_spec.images_per_example
    warning = slow_policy_warning(config.dtype_policy, inputs_per_step=inputs_per_step) \
        if config.strategy != "tpu" else None
    if warning:
        print(warning, file=sys.stderr, flush=True)

    result = train(config)
    if not result["chief"]:
        print(f"worker finished {result['epochs_run']} epoch(s); the chief wrote {config.model_dir}")
        return
    if result["already_finished_at"] is not None:
        print(f"run already finished at epoch {result['already_finished_at']}; nothing to do (raise --epochs to "
              f"continue); encoder: {result['encoder_path']}")
        return
    print(f"trained {result['epochs_run']} epoch(s) in {result['train_seconds']:.0f} s "
          f"({result['examples_per_second'] or 0:.0f} {result['example_unit']}/s); encoder: {result['encoder_path']}")


def run():
    run_main(main, resumable=True)


if __name__ == "__main__":
    run()
