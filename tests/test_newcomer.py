"""What a newcomer meets in their first hour (issue 29): a refused `compile` that can
be recovered from, nothing ignored without a word, messages that say what happened."""

import numpy as np
import pytest

from keras_ssl.errors import UserError
from keras_ssl.models import registry
from keras_ssl.training import build_model, load_run_dataset, method_data, training_split
from tests.helpers import smoke_config


@pytest.mark.parametrize("method_name", registry.names())
def test_a_refused_compile_is_refused_at_once_and_can_be_redone(method_name, tmp_path):
    config = smoke_config(method_name, tmp_path)
    dataset = load_run_dataset(config)
    data = method_data(config, training_split(config, dataset)[0]).dataset
    model = build_model(config, dataset)
    names = ", ".join(m.name for m in model.metrics)
    for wrong, shown in (({"loss": "mse"}, "not loss="), ({"metrics": ["accuracy"]}, "not metrics="),
                         ({"loss": "mse", "weighted_metrics": ["mae"]}, "not loss=, weighted_metrics=")):
        with pytest.raises(UserError, match=rf"computes its own loss and metrics \({names}\); .*{shown}$"):
            model.compile(optimizer="adam", **wrong)
    # what the message advises, and the explicit Nones a user may write, both work now
    model.compile(optimizer="adam", loss=None, metrics=None)
    model.compile(optimizer="adam")
    history = model.fit(data, steps_per_epoch=1, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]), history


# -- 3. nothing ignored without a word -----------------------------------------

def _wav(path, seconds=0.25, seed=0):
    import os

    from scipy.io import wavfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = np.random.default_rng(seed).normal(size=int(16000 * seconds)) * 3000
    wavfile.write(path, 16000, x.astype(np.int16))


def _png(path, seed=0):
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)


def test_a_wav_folder_counts_the_images_and_other_files_it_does_not_read(tmp_path):
    from keras_ssl.data import load_source

    for i in range(4):
        _wav(str(tmp_path / "yes" / f"{i}.wav"), seed=i)
        _wav(str(tmp_path / "no" / f"{i}.wav"), seed=10 + i)
    for i in range(3):
        _png(str(tmp_path / "yes" / f"{i}.png"), seed=i)
    (tmp_path / "notes.txt").write_text("recorded in 2026")
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden: not counted
    with pytest.warns(UserWarning, match=r"4 file\(s\) are not read \(3 \.png, 1 \.txt; e\.g\. notes\.txt, "
                                         r"yes/0\.png\): it is read as audio: only \.wav files in the class folders"):
        dataset = load_source(f"folder:{tmp_path}", audio_seconds=0.25)
    assert len(dataset.train) + len(dataset.test) == 8


def test_an_image_folder_counts_the_wavs_it_does_not_read(tmp_path):
    import warnings

    from keras_ssl.data.sources import load_folder

    for i in range(5):
        _png(str(tmp_path / "train" / "a" / f"{i}.png"), seed=i)
        _png(str(tmp_path / "test" / "a" / f"{i}.png"), seed=9 + i)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every file is read: no warning
        load_folder(f"folder:{tmp_path}")
    _wav(str(tmp_path / "train" / "a" / "voice.wav"))
    _png(str(tmp_path / "train" / "stray.png"))  # beside the class folders: not read either
    with pytest.warns(UserWarning, match=r"2 file\(s\) are not read \(1 \.png, 1 \.wav; .*it is read as images: "
                                         r"only \.png/\.jpg/\.jpeg files in the class folders"):
        dataset = load_folder(f"folder:{tmp_path}")
    assert len(dataset.train) == 5 and len(dataset.test) == 5


def _speaker_folder(root, rows):
    for name in ("a", "b", "c"):
        _wav(str(root / "clips" / f"{name}.wav"), seed=ord(name))
    (root / "speakers.csv").write_text("path,speaker\n" + "".join(f"{p},{s}\n" for p, s in rows))
    return f"folder:{root}"


def test_speakers_csv_rows_naming_no_file_are_named_and_ignored(tmp_path):
    from keras_ssl.data.audio import load_audio_folder

    spec = _speaker_folder(tmp_path, [("clips/a.wav", "ann"), ("../../etc/passwd", "eve"), ("clips/b.wav", "bob"),
                                      ("clips/missing.wav", "max"), ("clips/c.wav", "ann")])
    with pytest.warns(UserWarning, match=r"speakers\.csv: 2 row\(s\) name no file in the folder and are ignored: "
                                         r"line 3 \(\.\./\.\./etc/passwd, outside the folder\), "
                                         r"line 5 \(clips/missing\.wav\)"):
        dataset = load_audio_folder(spec, seconds=0.25, test_fraction=0.0)
    assert dataset.speaker_names == ("ann", "bob")  # no class for the stray rows' "eve" and "max"
    assert dataset.train.speakers.tolist() == [0, 1, 0]


def test_speakers_csv_with_an_empty_speaker_is_refused(tmp_path):
    from keras_ssl.data.audio import load_audio_folder

    spec = _speaker_folder(tmp_path, [("clips/a.wav", "ann"), ("clips/b.wav", "  "), ("clips/c.wav", "bob")])
    with pytest.raises(UserError, match=r"speakers\.csv line 3 \(clips/b\.wav\) has an empty speaker name"):
        load_audio_folder(spec, seconds=0.25)


# -- 4. messages ------------------------------------------------------------

def test_a_damaged_wav_is_named_with_a_plain_reason(tmp_path):
    import io

    from scipy.io import wavfile

    from keras_ssl.data.audio import load_audio_folder

    buffer = io.BytesIO()
    wavfile.write(buffer, 16000, np.zeros(4000, np.int16))
    good = buffer.getvalue()
    for i in range(3):
        _wav(str(tmp_path / f"ok{i}.wav"), seed=i)
    damaged = {"header.wav": good[:20], "text.wav": b"hello, not audio " * 4, "nofmt.wav": good[:12] + good[36:]}
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
    with pytest.warns(UserWarning) as caught:
        load_audio_folder(f"folder:{tmp_path}", seconds=0.25, test_fraction=0.0)
    message = next(str(w.message) for w in caught if "unreadable" in str(w.message))
    assert "header.wav (truncated or damaged WAV header)" in message, message
    assert "text.wav (not a WAV file (no RIFF/WAVE header))" in message, message
    assert "nofmt.wav (damaged WAV header: no fmt chunk before the samples)" in message, message
    assert "Error" not in message and "unpack" not in message and "\n" not in message, message


def _binary(args, cwd, **kwargs):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), **kwargs)


def test_help_exits_zero_and_warnings_are_one_line(tmp_path):
    for binary in ("keras_ssl.bin.train", "keras_ssl.bin.evaluate", "keras_ssl.bin.export"):
        for flag in ("--help", "--helpfull"):
            proc = _binary([binary, flag], tmp_path)
            assert proc.returncode == 0 and "--model_dir" in proc.stdout, (binary, flag, proc.returncode)
    folder = tmp_path / "sounds"
    for i in range(12):
        _wav(str(folder / f"{i:02d}.wav"), seconds=0.25, seed=i)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt ")
    (folder / "cover.png").write_bytes(b"\x89PNG")
    proc = _binary(["keras_ssl.bin.train", "--method=cpc_audio", f"--dataset=folder:{folder}", "--audio_seconds=0.25",
                    "--epochs=1", "--steps_per_epoch=1", "--batch_size=4", "--width_multiplier=0.25",
                    "--dtype_policy=float32", "--verbose=0", f"--model_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert any(line.startswith("warning: skipped 1 unreadable WAV file(s): ") and
               line.endswith("broken.wav (truncated or damaged WAV header)") for line in warnings), warnings
    assert any(line.startswith("warning: folder:") and "1 file(s) are not read (1 .png" in line
               for line in warnings), warnings
    assert not [line for line in warnings if not line.startswith("warning: ")], warnings  # no source echo


SIAMESE = ["--method=siamese", "--dataset=digits", "--width_multiplier=0.25", "--batch_size=16", "--optimizer=adam",
           "--learning_rate=1e-3", "--lr_scaling=none", "--warmup_epochs=0", "--augment=none", "--embedding_dim=8",
           "--dtype_policy=float32", "--verbose=0"]


def test_sigterm_keeps_the_checkpoints_and_a_finished_rerun_says_so(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    model_dir = tmp_path / "run"
    checkpoints = model_dir / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "keras_ssl.bin.train", *SIAMESE, "--epochs=100000",
                             "--steps_per_epoch=5", f"--model_dir={model_dir}"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.time() + 240
    while time.time() < deadline and not (checkpoints.is_dir() and len(os.listdir(checkpoints)) >= 1):
        time.sleep(0.2)
    time.sleep(0.5)  # mid-epoch, or mid-checkpoint-write: either way nothing half-written may stay
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert err.strip().splitlines() == ["terminated (SIGTERM); completed epochs are checkpointed: rerun the same "
                                        "command to resume"], err[-2000:]
    kept = sorted(os.listdir(checkpoints))
    assert kept and all(name.startswith("epoch_") for name in kept), kept  # no .tmp file
    finished = int(kept[-1][len("epoch_"):len("epoch_") + 4])
    rerun = _binary(["keras_ssl.bin.train", *SIAMESE, f"--epochs={finished}", "--steps_per_epoch=5",
                     f"--model_dir={model_dir}"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.strip().splitlines()[-1].startswith(f"run already finished at epoch {finished}; nothing to do (raise "
                                           "--epochs to continue)"), rerun.stdout


def test_float16_on_a_cpu_is_refused_unless_confirmed_and_the_warning_gives_a_step_time(tmp_path):
    from keras_ssl.precision import refuse_cpu_float16, slow_policy_warning

    with pytest.raises(UserError, match="mixed_float16 on a CPU trains .* add --allow_slow_precision"):
        refuse_cpu_float16("mixed_float16", allowed=False, gpu_capability=None)
    refuse_cpu_float16("mixed_float16", allowed=True, gpu_capability=None)
    refuse_cpu_float16("mixed_float16", allowed=False, gpu_capability=(7, 5))  # a GPU's float16 is fast
    refuse_cpu_float16("mixed_bfloat16", allowed=False, gpu_capability=None)
    avx512_fp16 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"})
    line = slow_policy_warning("mixed_float16", avx512_fp16, None, inputs_per_step=512)
    assert "expect a step of 512 inputs to take about 1 min 23 s or more" in line, line  # 512 / 6.2 images/s
    assert "expect a step" not in slow_policy_warning("mixed_float16", avx512_fp16, None)
    proc = _binary(["keras_ssl.bin.train", *SIAMESE[:-2], "--dtype_policy=mixed_float16",
                    f"--model_dir={tmp_path / 'run'}"], tmp_path)
    if "error: " in proc.stderr:  # a CPU machine (no GPU here)
        assert proc.returncode == 2 and "--allow_slow_precision" in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()


# -- 5. the first step is never silent ----------------------------------------

def test_a_heartbeat_prints_while_the_first_step_runs():
    import io
    import time

    import keras

    from keras_ssl.progress import first_step_callback, progress_callback

    class SlowFirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                time.sleep(0.75)

    x, y = np.zeros((16, 4), "float32"), np.zeros((16, 1), "float32")
    for make in (lambda out: first_step_callback(interval=0.2, stream=out),
                 lambda out: progress_callback(epochs=1, steps=2, examples_per_step=8, unit="images", interval=60,
                                               heartbeat=0.2, stream=out)):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        out = io.StringIO()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[SlowFirstStep(), make(out)])
        time.sleep(0.5)  # a heartbeat after the first step would show up now
        lines = out.getvalue().splitlines()
        beats = [line for line in lines if line.startswith("first step still running: ")]
        assert len(beats) >= 2 and lines[len(beats)].startswith("first step done in "), lines
        assert len(lines) == len(beats) + 1 and beats[0].endswith("s so far (building and compiling the step, "
                                                                 "then running it)"), lines


# -- 6. reports that agree with the docs ----------------------------------------

def test_unlabelled_and_audio_tables_use_percent_and_show_every_step_ahead():
    from keras_ssl.evaluation.audio import format_audio_table
    from keras_ssl.evaluation.unlabelled import format_unlabelled_table

    info_nce = {"accuracy": [0.8, 0.5, 0.4, 0.3, 0.25], "mi_bound": [4.1, 3.2, 3.0, 2.9, 2.8]}
    table = format_unlabelled_table({"method_metrics": {"loss": 2.5, "accuracy": 0.0039}, "info_nce": info_nce,
                                     "kmeans_clusters": 10, "kmeans_silhouette": 0.12})
    assert "test accuracy" in table and "0.39%" in table and "0.0039" not in table, table
    assert "test loss" in table and "2.5000" in table, table
    for k in range(1, 6):
        assert f"info_nce accuracy k={k} " in table and f"info_nce MI bound k={k} (nats)" in table, (k, table)
    audio = format_audio_table({"probes": {"context": {"word": 0.9, "feature_dim": 8}}, "info_nce": info_nce,
                                "representation_point": "context", "knn_accuracy_k20": 0.7})
    assert all(f"info_nce accuracy k={k} " in audio for k in range(1, 6)), audio
    assert all(f"info_nce MI bound k={k} (nats)" in audio for k in range(1, 6)), audio


def test_an_audio_report_has_the_knn_accuracy_key_of_every_report(tmp_path):
    from keras_ssl.evaluation.audio import evaluate_audio_model

    config = smoke_config("cpc_audio", tmp_path)
    dataset = load_run_dataset(config)
    model = build_model(config, dataset)
    results = evaluate_audio_model(model, dataset, probe_max_iter=50)
    assert 0.0 <= results["knn_accuracy"] <= 1.0 and results["knn_accuracy"] == results["knn_accuracy_k20"]


def test_evaluating_a_run_on_a_dataset_of_another_modality_is_one_line(tmp_path):
    from keras_ssl.errors import UserError
    from keras_ssl.evaluation.run_report import evaluate_run
    from tests.helpers import smoke_parent_run, write_chirp_folder

    model_dir = smoke_parent_run("rotation", tmp_path)
    chirps = write_chirp_folder(str(tmp_path / "chirps"))
    with pytest.raises(UserError, match=r"^method rotation trains on image and .*chirps holds audio; choose an image "
                                        r"dataset$"):
        evaluate_run(model_dir, dataset=chirps)
