"""keras-ssl-make-spoken-digits: writes the synthetic spoken-digits set (offline).

    keras-ssl-make-spoken-digits --output_dir=data/spoken_digits

SYNTHETIC speech from Debian's synthesisers (apt-get install -y espeak-ng flite): the
ten digits by every available voice at 3 speeds x 3 pitches, with noise; see
keras_ssl.data.spoken_digits. Train on it with --dataset=folder:data/spoken_digits.
"""

from absl import flags

from keras_ssl.bin.common import run_main

flags.DEFINE_string("output_dir", "data/spoken_digits", "folder to write (must not exist, or be empty)")
flags.DEFINE_integer("max_speakers", None, "use only the first N voices (quick subsets)")
flags.DEFINE_integer("styles", 3, "speeds and pitches per voice, each (1-3): styles^2 clips per word and voice")
flags.DEFINE_integer("seed", 0, "seed of the lead-in, the noise and the train/test split")
flags.DEFINE_boolean("overwrite", False, "replace a non-empty --output_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import time

    from keras_ssl.data.spoken_digits import make_spoken_digits

    start = time.time()
    counts = make_spoken_digits(FLAGS.output_dir, FLAGS.max_speakers, styles=FLAGS.styles, seed=FLAGS.seed,
                                overwrite=FLAGS.overwrite)
    print(f"wrote {counts['clips']} clips ({counts['train']} train, {counts['test']} test) by {counts['speakers']} "
          f"synthetic speakers to {FLAGS.output_dir} in {time.time() - start:.0f} s")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
