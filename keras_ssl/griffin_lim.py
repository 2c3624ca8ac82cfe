"""Log-mel spectrograms and their way back to a waveform, in TensorFlow ops only (so
that they run inside a SavedModel's signatures).

Forward (`log_mel`): the MFCC front end's framing (`keras_ssl.audio_encoders`:
25 ms Hann windows every 10 ms, a 512-point FFT, 16 kHz), the magnitude `|STFT|`
(not the power), `MEL_BANDS` = 80 triangular mel filters from 20 Hz to 8 kHz
(`tf.signal.linear_to_mel_weight_matrix`; 80 bands are Tacotron 2's, Shen et al.
2018), then a fixed normalisation of the log:

    x = (log(max(mel, LOG_MEL_FLOOR)) - LOG_MEL_SHIFT) / LOG_MEL_SCALE

with the floor 1e-3 (digital silence, 18% of the synthetic spoken digits' bins,
is exactly 0; their loudest bin is about 50, so the floor is some 90 dB under it)
and shift -2, scale 2.5: the mean and the standard deviation of the floored log
on 500 training clips of the synthetic spoken digits (-1.96 and 2.62 at 80 bands),
rounded and fixed, so that the values are about zero-mean, unit-variance and the
loss is in known units on every dataset.

Back (`waveform_from_log_mel`): undo the normalisation and the log (the floor read
as silence, `mel_from_log_mel`), a linear
magnitude from the mel one by the mel matrix's pseudo-inverse clipped at 0, then
Griffin-Lim (Griffin & Lim 1984) for the phase, with the momentum of the "fast"
Griffin-Lim (Perraudin, Balazs, Sondergaard 2013; librosa's default, 0.99) and a
zero initial phase (deterministic: a served clip is the same on every call).
Each iteration is `X <- STFT(ISTFT(|S| e^{i angle}))`; `spectral_convergence`
measures how far `|STFT(x)|` is from the target magnitude.
"""

import tensorflow as tf

from keras_ssl.audio_encoders import MFCC_FRAME, MFCC_HOP
from keras_ssl.data.audio import SAMPLE_RATE

FFT_LENGTH = 512  # the MFCC front end's
MEL_BANDS = 80  # Tacotron 2's mel bands
MEL_LOW_HZ, MEL_HIGH_HZ = 20.0, SAMPLE_RATE / 2  # the MFCC front end's range
LOG_MEL_FLOOR, LOG_MEL_SHIFT, LOG_MEL_SCALE = 1e-3, -2.0, 2.5  # see the module docstring
GRIFFIN_LIM_MOMENTUM = 0.99  # fast Griffin-Lim (Perraudin et al. 2013), librosa's default
GRIFFIN_LIM_ITERATIONS = 32  # librosa's default n_iter


def num_mel_frames(num_samples):
    """STFT frames of a clip of `num_samples` (no padding): `1 + (n - 400) // 160`."""
    return 1 + (int(num_samples) - MFCC_FRAME) // MFCC_HOP


def stft(waveforms):
    """The complex STFT `[..., frames, 257]` of float32 `[..., samples]`."""
    return tf.signal.stft(tf.cast(waveforms, tf.float32), MFCC_FRAME, MFCC_HOP, fft_length=FFT_LENGTH)


def inverse_stft(spectrum):
    """The waveform `[..., (frames - 1) * 160 + 400]` of a complex STFT, overlap-added with
    the window that makes `inverse_stft(stft(x)) = x` away from the edges."""
    return tf.signal.inverse_stft(spectrum, MFCC_FRAME, MFCC_HOP, fft_length=FFT_LENGTH,
                                  window_fn=tf.signal.inverse_stft_window_fn(MFCC_HOP))


def mel_matrix(bands=MEL_BANDS):
    """float32 `[257, bands]`: the mel filters of `tf.signal.linear_to_mel_weight_matrix`."""
    return tf.signal.linear_to_mel_weight_matrix(bands, FFT_LENGTH // 2 + 1, SAMPLE_RATE, MEL_LOW_HZ, MEL_HIGH_HZ)


def mel_magnitudes(waveforms, bands=MEL_BANDS):
    """`|STFT| @ mel_matrix`: float32 `[..., frames, bands]`."""
    return tf.tensordot(tf.abs(stft(waveforms)), mel_matrix(bands), 1)


def log_mel(waveforms, bands=MEL_BANDS):
    """The normalised log-mel spectrogram (module docstring) of float32 `[B, samples]`:
    float32 `[B, frames, bands]`."""
    mel = mel_magnitudes(waveforms, bands)
    return (tf.math.log(tf.maximum(mel, LOG_MEL_FLOOR)) - LOG_MEL_SHIFT) / LOG_MEL_SCALE


def mel_from_log_mel(normalised):
    """The mel magnitudes of a normalised log-mel spectrogram: `log_mel`'s inverse, less
    the floor, clipped at 0: `max(exp(x * 2.5 - 2) - 1e-3, 0)`. The floor stands for "at
    most 1e-3", digital silence included; read as nothing, a decoded silence stays silent
    (read as 1e-3 it comes back as noise 90 dB down, which the MFCC listener, whose log
    reaches down to 1e-6, hears: 5.6 points of its word accuracy on the reconstructions
    of a spoken-digits model, docs/BENCHMARKS.md)."""
    mel = tf.exp(tf.cast(normalised, tf.float32) * LOG_MEL_SCALE + LOG_MEL_SHIFT)
    return tf.nn.relu(mel - LOG_MEL_FLOOR)


def linear_from_mel(mel):
    """A linear magnitude `[..., frames, 257]` of mel magnitudes `[..., frames, bands]`:
    `max(mel @ pinv(mel_matrix), 0)`, the least-squares inverse of the filters, clipped
    at 0 (a magnitude is not negative)."""
    mel = tf.cast(mel, tf.float32)
    inverse = tf.linalg.pinv(mel_matrix(int(mel.shape[-1])))  # [bands, 257]
    return tf.nn.relu(tf.tensordot(mel, inverse, 1))


def griffin_lim(magnitude, iterations=GRIFFIN_LIM_ITERATIONS, momentum=GRIFFIN_LIM_MOMENTUM):
    """A waveform whose STFT magnitude approaches `magnitude` (float32 `[..., frames, 257]`):
    `iterations` of fast Griffin-Lim from a zero phase (module docstring), float32
    `[..., (frames - 1) * 160 + 400]`. `iterations=0` is the zero-phase inverse."""
    magnitude = tf.cast(tf.cast(magnitude, tf.float32), tf.complex64)
    alpha = tf.constant(momentum / (1.0 + momentum), tf.complex64)

    def body(i, angles, rebuilt):
        previous = rebuilt
        rebuilt = stft(inverse_stft(magnitude * angles))
        angles = rebuilt - alpha * previous
        angles = angles / tf.cast(tf.abs(angles) + 1e-16, tf.complex64)
        return i + 1, angles, rebuilt

    _, angles, _ = tf.while_loop(lambda i, *_: i < iterations, body,
                                 (tf.constant(0), tf.ones_like(magnitude), tf.zeros_like(magnitude)))
    return inverse_stft(magnitude * angles)


def spectral_convergence(magnitude, waveforms):
    """`|| |S| - |STFT(x)| ||_F / || |S| ||_F` per example of a target magnitude `[B, frames,
    257]` and waveforms `[B, samples]` of as many frames (Sturmel & Daudet 2011; 0 is exact)."""
    got = tf.abs(stft(waveforms))
    magnitude = tf.cast(magnitude, tf.float32)
    return tf.norm(got - magnitude, axis=[-2, -1]) / tf.maximum(tf.norm(magnitude, axis=[-2, -1]), 1e-12)


def waveform_from_log_mel(normalised, num_samples, iterations=GRIFFIN_LIM_ITERATIONS):
    """Float32 waveforms `[B, num_samples]` of normalised log-mel spectrograms `[B, frames,
    bands]`: mel -> linear magnitude -> Griffin-Lim, zero-padded (or cut) at the end to
    `num_samples` (the last `(num_samples - 400) % 160` samples of a clip have no frame)."""
    waveforms = griffin_lim(linear_from_mel(mel_from_log_mel(normalised)), iterations)
    length = tf.shape(waveforms)[-1]
    waveforms = waveforms[:, :num_samples]
    return tf.pad(waveforms, [[0, 0], [0, tf.maximum(num_samples - length, 0)]])
