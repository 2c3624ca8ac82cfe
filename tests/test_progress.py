"""What a run prints while it trains: periodic progress lines with a rate and an ETA."""

import io
import re

import numpy as np

from keras_ssl.progress import format_duration, keras_verbosity, progress_callback


def test_progress_lines_give_rate_loss_and_eta():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    out = io.StringIO()
    callback = progress_callback(epochs=2, steps=5, examples_per_step=8, unit="images", interval=0.0, stream=out)
    x, y = np.zeros((40, 4), "float32"), np.zeros((40, 1), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("first step done in ")
    # every later step prints (interval 0): 2 x 5 - 1 lines, the last with ETA 0 s
    assert len(lines) == 1 + 2 * 5 - 1, lines
    pattern = re.compile(r"epoch [12]/2 step [1-5]/5: \d+ images/s, loss \d+\.\d{4}, ETA \d+ s$")
    assert all(pattern.match(line) for line in lines[1:]), lines
    assert lines[-1].startswith("epoch 2/2 step 5/5") and lines[-1].endswith("ETA 0 s")


def test_keras_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert keras_verbosity(1, Tty()) == 1
    assert keras_verbosity(1, io.StringIO()) == 2  # a log file: one line per epoch + progress lines
    assert keras_verbosity(2, Tty()) == 2 and keras_verbosity(0, io.StringIO()) == 0


def test_durations_read_naturally():
    assert [format_duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
