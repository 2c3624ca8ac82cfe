"""What a training run prints: one start-up block, then progress a person can follow.

`--verbose` (the `TrainConfig.verbose` field):
  0  nothing but the result;
  1  the start-up block, then Keras's per-step bar when stdout is a terminal; when
     it is not (a log file, CI, a pipe, where the bar is unreadable) one line per
     epoch and a progress line every `PROGRESS_SECONDS`;
  2  the start-up block, one line per epoch and the periodic progress lines
     (what the flagfiles use: readable in a log and on a terminal alike).
"""

import functools
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
    """`60,000 images 28x28x1` / `2,880 clips of 1.0 s at 16 kHz` (the dataset's modality's words)."""
    from keras_ssl import modalities

    return modalities.of_dataset(dataset).describe_examples(dataset, count)


def start_summary(config, dataset, train_size, model, *, steps, batch_size, peak_lr, replicas, strategy,
                  dtype_policy, dtype_reason, initial_epoch):
    """The block printed before training: what runs, on what, how long an epoch is."""
    from keras_ssl.run_setup import encoder_label

    method = config.method_spec
    labels = f", {len(dataset.class_names)} classes" if dataset.labelled else ", unlabelled"
    encoder = model.encoder
    lines = [
        f"keras-ssl-train: {config.method} ({method.summary})",
        f"  data      {config.dataset}: {describe_examples(dataset, train_size)} for training{labels}",
        f"  encoder   {encoder_label(config, encoder)} x{config.width_multiplier:g}: {_count(encoder.count_params())} parameters "
        f"(whole model {_count(model.count_params())})",
        f"  precision {dtype_policy}: {dtype_reason}",
        f"  devices   {replicas} replica(s), strategy {strategy}; global batch {batch_size} "
        f"({method.images_per_example} input(s) per example)",
        f"  schedule  {config.epochs} epoch(s) x {steps} steps, {config.optimizer} peak learning rate {peak_lr:.3g}"
        + (f"; resuming after epoch {initial_epoch}" if initial_epoch else ""),
        f"  run dir   {config.model_dir}",
    ]
    return "\n".join(lines)


class _Heartbeat:
    """A daemon thread printing `first step still running: 1 min 00 s so far (...)` every
    `interval` seconds until `stop()`: the first step traces and compiles the model,
    and under a slow precision it can take minutes, with nothing else printed."""

    def __init__(self, interval, stream):
        import threading

        self.interval, self.stream = interval, stream
        self.start_time = time.time()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="first-step-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self):
        while not self.stopped.wait(self.interval):
            print(f"first step still running: {format_duration(time.time() - self.start_time)} so far (building and "
                  "compiling the step, then running it)", file=self.stream, flush=True)

    def stop(self):
        self.stopped.set()
        return time.time() - self.start_time


@functools.lru_cache(maxsize=None)
def _first_step_class():
    """The `FirstStep` callback class (made on first use: keras is imported only then)."""
    import keras

    class FirstStep(keras.callbacks.Callback):
        """Prints a heartbeat every `interval` seconds until the first training step is
        done, then `first step done in 41 s (...)` + `after_first_step()`."""

        heartbeat = None
        first_done = None  # time the first step finished: rates exclude compilation

        def __init__(self, interval, stream):
            super().__init__()
            self.interval, self.out = interval, stream

        def on_train_begin(self, logs=None):
            self.heartbeat = _Heartbeat(self.interval, self.out)
            self.first_done = None

        def on_train_batch_end(self, batch, logs=None):
            """True for the first step (this call printed its line)."""
            if self.first_done is not None:
                return False
            self.first_done = time.time()
            took = self.heartbeat.stop()
            print(f"first step done in {format_duration(took)} (building and compiling the step)"
                  + self.after_first_step(), file=self.out, flush=True)
            return True

        def on_train_end(self, logs=None):
            if self.heartbeat is not None:
                self.heartbeat.stop()

        def after_first_step(self):
            return ""

    return FirstStep


def first_step_callback(*, interval=PROGRESS_SECONDS, stream=None):
    """A Keras callback that prints a heartbeat line every `interval` seconds until the
    first training step is done, then `first step done in 41 s (...)`: what a run
    shows under Keras's own per-step bar, which stays blank until that step ends."""
    return _first_step_class()(interval, stream or sys.stdout)


def progress_callback(*, epochs, steps, examples_per_step, unit, interval=PROGRESS_SECONDS, stream=None,
                      heartbeat=PROGRESS_SECONDS):
    """A Keras callback printing `epoch 2/10 step 120/234: 640 images/s, loss 4.12, ETA 6 min 10 s`
    every `interval` seconds; before that, a heartbeat every `heartbeat` seconds while the
    first step (tracing, compiling) runs, and one line when it is done."""
    out = stream or sys.stdout

    class ProgressLines(_first_step_class()):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self.last = time.time()
            self.steps_since_first = 0
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def after_first_step(self):
            return f"; progress every {interval:g} s"

        def on_train_batch_end(self, batch, logs=None):
            if super().on_train_batch_end(batch, logs):
                self.last = self.first_done
                return
            now = time.time()
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

    return ProgressLines(heartbeat, out)
