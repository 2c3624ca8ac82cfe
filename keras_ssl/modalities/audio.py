"""Audio: 16 kHz mono float32 waveforms in [-1, 1], cut or zero-padded to the run's
`audio_seconds`, from `folder:PATH` of WAV files and `tfds:` audio sets
(`keras_ssl.data.audio`); the audio encoders of `keras_ssl.audio_encoders`; word and
speaker probes against MFCC statistics and the untrained model as the default
evaluation (`keras_ssl.evaluation.audio`)."""

import dataclasses

from keras_ssl.data.audio import DEFAULT_SECONDS
from keras_ssl.encoders import AUDIO_ENCODERS
from keras_ssl.errors import UserError
from keras_ssl.modalities.base import Modality, register
from keras_ssl.modalities.input_kinds import InputKind, register_input_kind
from keras_ssl.options import option


@dataclasses.dataclass
class AudioSettings:
    """The run settings of audio methods (flag `--audio_seconds`). Source of the
    default: 1 s holds one spoken word (Speech Commands' clips are 1 s)."""

    audio_seconds: float = option(DEFAULT_SECONDS, "clips are cut or zero-padded to this length in seconds",
                                  check=lambda v: 0 < v <= 60, requirement="in (0, 60]")


class AudioModality(Modality):
    name = "audio"
    unit = "clips"
    encoders = AUDIO_ENCODERS
    default_encoder = "cpc_conv"  # CPC's strided convolutions (van den Oord et al. 2018)
    settings = AudioSettings

    def recognises_folder(self, path):
        from keras_ssl.data.audio import is_audio_folder

        return is_audio_folder(path)  # .wav files at the top, in class folders or train/

    input_rank = 2

    def check_batch(self, model, shape, dtype):
        """Batches of float waveforms `[batch, samples]`."""
        name = type(model).__name__
        if shape.rank != 2:
            raise UserError(f"{name} expects waveform batches [batch, samples] (16 kHz mono), got shape {shape}")
        if not dtype.is_floating:
            raise UserError(f"{name} expects float waveforms in [-1, 1], got {dtype.name}; scale int16 PCM by "
                            "1/32768 (keras_ssl.data.audio.read_wav does)")

    def embedding_endpoints(self, embed, dim):
        from keras_ssl.models.endpoints import ServingOutput, audio_endpoints

        output = ServingOutput("embedding", "float32", (dim,), "the representation, L2-normalised")
        return audio_endpoints((output,), lambda waveforms: {"embedding": embed(waveforms)})

    def load_folder(self, spec, on_corrupt="skip", audio_seconds=None, **others):
        from keras_ssl.data.audio import load_audio_folder

        return load_audio_folder(spec, audio_seconds or DEFAULT_SECONDS, on_corrupt)

    def recognises_tfds(self, builder, tfds):
        from keras_ssl.data.audio import is_audio_builder

        return is_audio_builder(builder, tfds)

    def load_tfds(self, name, builder, train_split, test_split, audio_seconds=None, **others):
        from keras_ssl.data.audio import load_tfds_audio

        return load_tfds_audio(name, builder, train_split, test_split, audio_seconds or DEFAULT_SECONDS)

    def load_run_dataset(self, config, dataset=None, data_dir=None, input_shape=None):
        from keras_ssl.data import load_source

        return load_source(dataset or config.dataset, data_dir or config.data_dir,
                           audio_seconds=config.settings.audio_seconds)

    def examples(self, split):
        return split.waveforms

    def describe_examples(self, dataset, count):
        return f"{count:,} clips of {dataset.num_samples / dataset.sample_rate:g} s at {dataset.sample_rate // 1000} kHz"

    def build_encoder(self, config, dataset, size_agnostic=False):
        from keras_ssl.audio_encoders import build_audio_encoder

        return build_audio_encoder(config.encoder, config.width_multiplier)  # takes clips of any length

    def encoder_to_keep(self, config, encoder, dataset):
        return encoder  # Keras layers only, any length

    def serving_input_shape(self, config, model_dir):
        from keras_ssl.data.audio import SAMPLE_RATE

        return (int(round(config.settings.audio_seconds * SAMPLE_RATE)),)  # served at the clip length it trained on

    def evaluate_labelled(self, config, model, model_dir, dataset, request):
        """Word/speaker probes of the model's probe points against MFCCs and the untrained
        model (rebuilt with seed 0), kNN on the representation, plot."""
        import keras

        from keras_ssl.evaluation.audio import evaluate_audio_model
        from keras_ssl.run_setup import build_model

        keras.utils.set_random_seed(0)
        untrained = build_model(config, dataset)
        return evaluate_audio_model(model, dataset, untrained, request.output_dir, plot=request.plot,
                                    probe_max_iter=request.probe_max_iter, train_limit=request.train_limit,
                                    write_report=False)

    def format_report(self, results):
        from keras_ssl.evaluation.audio import format_audio_table

        return format_audio_table(results)

    def unlabelled_features(self, model, encoder, split):
        from keras_ssl.evaluation.audio import clip_features

        return clip_features(model.representation, split.waveforms)  # the model's (CPC: pooled context)

    def smoke_dataset(self, root):
        import os

        from keras_ssl.data.chirps import write_chirp_folder

        return {"dataset": write_chirp_folder(os.path.join(root, "chirps"))}

    def serving_facts(self, input_shape):
        from keras_ssl.modalities.wav_codec import WAV_RATE

        return {"sample_rate": WAV_RATE, "num_samples": input_shape[0],
                "preprocessing": "decode 16-bit PCM WAV (16 kHz only) -> mono (mean of the channels) -> cut or "
                                 f"zero-pad to {input_shape[0]} samples"}


def _fit(waveforms, num_samples):
    """float32 [B, n] -> [B, num_samples]: cut, or zero-padded at the end."""
    import numpy as np

    waveforms = np.asarray(waveforms, np.float32)[:, :num_samples]
    return np.pad(waveforms, [(0, 0), (0, num_samples - waveforms.shape[1])])


class WavFiles(InputKind):
    """`wav`: tf.string `[batch]` of 16-bit PCM WAV files at 16 kHz (other rates are refused:
    resample first), mixed down to mono, cut or zero-padded at the end to the model's clip
    length (`keras_ssl.modalities.wav_codec`)."""

    name, modality, encoded = "wav", "audio", True

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.string, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        from keras_ssl.modalities.wav_codec import decode_wavs

        return decode_wavs(tensor, endpoint_name, input_shape[0])

    def describe(self, input_shape, serving_input):
        from keras_ssl.modalities.wav_codec import MAX_AUDIO_SECONDS

        return (f"string [batch] 16-bit PCM WAV files at 16 kHz, at most {MAX_AUDIO_SECONDS} s; mixed to mono, "
                f"cut or zero-padded to {input_shape[0]} samples")

    def warmup_value(self, input_shape, serving_input):
        import tensorflow as tf

        from keras_ssl.modalities.wav_codec import WAV_RATE

        return [tf.audio.encode_wav(tf.zeros([input_shape[0], 1]), WAV_RATE).numpy()]

    def request_value(self, examples, input_shape, serving_input):
        import io

        import numpy as np
        from scipy.io import wavfile

        from keras_ssl.modalities.wav_codec import WAV_RATE

        files = []
        for waveform in examples:
            buffer = io.BytesIO()
            wavfile.write(buffer, WAV_RATE, np.round(np.clip(waveform, -1, 1) * 32767).astype(np.int16))
            files.append(buffer.getvalue())
        return files

    def function_input(self, examples, input_shape, serving_input):
        import numpy as np

        quantised = np.round(np.clip(examples, -1, 1) * 32767) / 32768  # what the 16-bit file holds, read back
        return _fit(quantised, input_shape[0])

    def bad_value(self, examples, input_shape, serving_input):
        return [self.request_value(examples[:1], input_shape, serving_input)[0], b"garbage!"]


class Waveforms(InputKind):
    """`waveform`: float32 `[batch, n]` 16 kHz mono samples of any length n >= 1 in [-1, 1]
    (a row with a sample beyond `MAX_WAVEFORM_PEAK`, NaN or Inf is refused), cut or
    padded as `wav`."""

    name, modality = "waveform", "audio"

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None, None], tf.float32, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        from keras_ssl.modalities.wav_codec import prepare_waveforms

        return prepare_waveforms(tensor, endpoint_name, input_shape[0])

    def describe(self, input_shape, serving_input):
        from keras_ssl.modalities.wav_codec import MAX_AUDIO_SECONDS, MAX_WAVEFORM_PEAK, WAV_RATE

        return (f"float32 [batch, n] 16 kHz mono samples in [-1, 1] (1 <= n <= {MAX_AUDIO_SECONDS * WAV_RATE}; "
                f"a row with a sample beyond +-{MAX_WAVEFORM_PEAK}, NaN or Inf is refused), cut or zero-padded to "
                f"{input_shape[0]}")

    def warmup_value(self, input_shape, serving_input):
        import numpy as np

        return np.zeros([1, input_shape[0]], np.float32)

    def request_value(self, examples, input_shape, serving_input):
        import numpy as np

        return np.asarray(examples, np.float32)

    def function_input(self, examples, input_shape, serving_input):
        return _fit(examples, input_shape[0])

    def bad_value(self, examples, input_shape, serving_input):
        import numpy as np

        return np.zeros([2, 4, 4], np.float32)  # rank 3


register(AudioModality())
register_input_kind(WavFiles())
register_input_kind(Waveforms())
