"""What a training run prints: one start-up block, then progress a person can follow.

`--verbose` (the `TrainConfig.verbose` field):
  0  nothing but the result;
  1  the start-up block, then Keras's per-step bar when stdout is a terminal; when
     it is not (a log file, CI, a pipe, where the bar is unreadable) one line per
     epoch and a progress line every `PROGRESS_SECONDS`;
  2  the start-up block, one line per epoch and the periodic progress lines
     (what the flagfiles use: readable in a log and on a terminal alike).
"""

import sys
import time

import numpy as np

# How often a progress line is printed when Keras's bar is not shown: often enough
# to see a run is alive, rare enough that a long run's log stays short.
PROGRESS_SECONDS = 30.0


def keras_verbosity(verbose, stream=None):
    """Keras `fit(verbose=...)`: its per-step bar only on a terminal (elsewhere it
    prints nothing until the epoch ends), else one line per epoch."""
    stream = stream or sys.stdout
    if verbose == 1 and not _is_terminal(stream):
        return 2
    return verbose


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_duration(seconds):
    """42 s, 3 min 05 s, 1 h 12 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _count(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def describe_examples(dataset, count):
    """`60,000 images 28x28x1` / `2,880 clips of 1.0 s at 16 kHz`."""
    if getattr(dataset, "modality", "image") == "audio":
        return f"{count:,} clips of {dataset.num_samples / dataset.sample_rate:g} s at {dataset.sample_rate // 1000} kHz"
    return f"{count:,} images {'x'.join(str(d) for d in dataset.image_shape)}"


def start_summary(config, dataset, train_size, model, *, steps, batch_size, peak_lr, replicas, strategy,
                  dtype_policy, dtype_reason, initial_epoch):
    """The block printed before training: what runs, on what, how long an epoch is."""
    method = config.method_spec
    labels = f", {len(dataset.class_names)} classes" if dataset.labelled else ", unlabelled"
    encoder = model.encoder
    lines = [
        f"keras-ssl-train: {config.method} ({method.summary})",
        f"  data      {config.dataset}: {describe_examples(dataset, train_size)} for training{labels}",
        f"  encoder   {config.encoder} x{config.width_multiplier:g}: {_count(encoder.count_params())} parameters "
        f"(whole model {_count(model.count_params())})",
        f"  precision {dtype_policy}: {dtype_reason}",
        f"  devices   {replicas} replica(s), strategy {strategy}; global batch {batch_size} "
        f"({method.images_per_example} input(s) per example)",
        f"  schedule  {config.epochs} epoch(s) x {steps} steps, {config.optimizer} peak learning rate {peak_lr:.3g}"
        + (f"; resuming after epoch {initial_epoch}" if initial_epoch else ""),
        f"  run dir   {config.model_dir}",
    ]
    return "\n".join(lines)


def progress_callback(*, epochs, steps, examples_per_step, unit, interval=PROGRESS_SECONDS, stream=None):
    """A Keras callback printing `epoch 2/10 step 120/234: 640 images/s, loss 4.12, ETA 6 min 10 s`
    every `interval` seconds, and one line when the first step (tracing, compiling) is done."""
    import keras

    out = stream or sys.stdout

    class ProgressLines(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = self.last = time.time()
            self.first_done = None  # time the first step finished: the rate excludes compilation
            self.steps_since_first = 0
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.time()
            if self.first_done is None:
                self.first_done = self.last = now
                print(f"first step done in {format_duration(now - self.start)} (building and compiling the step); "
                      f"progress every {interval:g} s", file=out, flush=True)
                return
            self.steps_since_first += 1
            if now - self.last < interval:
                return
            self.last = now
            rate = self.steps_since_first / max(now - self.first_done, 1e-9)  # steps/s
            left = (epochs - self.epoch - 1) * steps + (steps - batch - 1)
            loss = (logs or {}).get("loss")
            loss_text = f", loss {float(np.ravel(np.asarray(loss))[0]):.4f}" if loss is not None else ""
            print(f"epoch {self.epoch + 1}/{epochs} step {batch + 1}/{steps}: "
                  f"{rate * examples_per_step:.0f} {unit}/s{loss_text}, ETA {format_duration(left / rate)}",
                  file=out, flush=True)

    return ProgressLines()
