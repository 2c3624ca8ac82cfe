"""keras-ssl-generate: continue prompts with a trained GPT run (greedy, or sampled at a
temperature among the top k tokens), one line per prompt.

    keras-ssl-generate --model_dir=runs/gpt_fortunes --prompt="A fool and" --seed=3
    keras-ssl-generate --model_dir=runs/gpt_fortunes --prompt="A fool and" --greedy
    keras-ssl-generate --model_dir=runs/gpt_fortunes --prompt="Q:" --temperature=0.8 --top_k=20 --samples=3

The same prompt, seed and settings print the same text (`keras_ssl.models.gpt`: stateless
Gumbel noise seeded by (seed, step)); `--samples=N` prints seeds seed..seed+N-1. An exported
model serves the same as its `generate` (the run's sampling_temperature and top_k) and
`generate_greedy` signatures.
"""

import os

from absl import flags

from keras_ssl.bin.common import load_run, run_main

flags.DEFINE_string("model_dir", None, "run directory of a finished GPT run", required=True)
flags.DEFINE_multi_string("prompt", [""], "text to continue (repeat the flag for several)")
flags.DEFINE_integer("seed", 0, "seed of the first sample (>= 0)", lower_bound=0)
flags.DEFINE_integer("samples", 1, "samples per prompt, seeds seed, seed+1, ...", lower_bound=1)
flags.DEFINE_boolean("greedy", False, "the most likely token at each step (no sampling, no seed)")
flags.DEFINE_float("temperature", None, "divides the logits (default: the run's sampling_temperature)",
                   lower_bound=1e-6)
flags.DEFINE_integer("top_k", None, "sample among the k most likely tokens, 0: all (default: the run's top_k)",
                     lower_bound=0)
flags.DEFINE_integer("max_new_tokens", None, "tokens added at most (default: the run's max_new_tokens)",
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from keras_ssl.errors import UserError
    from keras_ssl.saving import load_model

    config, _ = load_run(FLAGS.model_dir)
    model = load_model(os.path.join(FLAGS.model_dir, "model.keras"))
    if not hasattr(model, "generate"):
        raise UserError(f"{FLAGS.model_dir} is a {config.method} run; keras-ssl-generate continues text with a GPT "
                        "run (--method=gpt)")
    samples = 1 if FLAGS.greedy else FLAGS.samples
    prompts = [p for p in FLAGS.prompt for _ in range(samples)]
    seeds = [FLAGS.seed + i for _ in FLAGS.prompt for i in range(samples)]
    texts = model.generate(prompts, seeds, FLAGS.temperature, FLAGS.top_k, FLAGS.max_new_tokens,
                           greedy=FLAGS.greedy)
    for prompt, seed, text in zip(prompts, seeds, texts):
        label = "greedy" if FLAGS.greedy else f"seed {seed}"
        print(f"[{label}] {prompt}{text}")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
