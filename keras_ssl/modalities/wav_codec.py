"""WAV and waveform codecs in graph ops, for serving: 16-bit PCM WAV files and float32
waveforms -> float32 `[B, samples]` 16 kHz mono, cut or zero-padded at the end to the
model's clip length (the audio loader's rule), after checks that name the items at fault.
"""

import tensorflow as tf

from keras_ssl.modalities.input_kinds import in_order, read_uint, refuse

# Longest audio served (a guard on memory); longer input is refused, not cut.
MAX_AUDIO_SECONDS = 60
WAV_RATE = 16000


def _fit_length(waveform, num_samples):
    """float32 [n] -> [num_samples]: cut, or zero-padded at the end (the audio loader's rule)."""
    waveform = waveform[:num_samples]
    return tf.pad(waveform, [[0, num_samples - tf.shape(waveform)[0]]])


# Chunks tf.audio.decode_wav skips between "WAVE" and "fmt " (TF's wav_io.cc); any other one there
# (LIST metadata, say) stops it.
_WAV_SKIPPED_BEFORE_FMT = (b"JUNK", b"bext", b"iXML", b"qlty", b"mext", b"levl", b"link", b"axml")
_WAV_MAX_CHUNKS = 64  # chunks walked before and after "fmt " (a WAV has a handful); more: refused as damaged
_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE = 1, 0xFFFE


def _wav_headers(wavs):
    """Each item's RIFF/WAVE header read as tf.audio.decode_wav reads it (TF's wav_io.cc), in graph
    ops over the batch, so that every file the decoder would refuse is known, by index, before it
    runs. Returns a dict of [B] tensors, one verdict per item, first that applies:

    * `not_wav`: no "RIFF" size "WAVE" at the start;
    * `damaged`: the file ends inside a chunk the decoder skips before "fmt " (JUNK, ...) or inside
      the format fields;
    * `chunk_order`: a chunk before "fmt " the decoder does not skip (LIST metadata, say);
    * `extensible`: format tag WAVE_FORMAT_EXTENSIBLE; `not_pcm16`: not 16-bit integer PCM;
    * `damaged` too: a format chunk size other than 16 or 18, no channels, a sample rate of 0,
      block align or byte rate contradicting the rest; after "fmt ": a chunk header cut short, a
      chunk over 2 GB, a data chunk declaring more samples than the bytes sent, two data chunks,
      none, or more than _WAV_MAX_CHUNKS chunks before or after "fmt ";

    and `rate` (the sample rate), `frames` (the samples per channel the decoder will return)."""
    size = tf.cast(tf.strings.length(wavs), tf.int64)
    padded = tf.strings.join([wavs, tf.fill(tf.shape(wavs), b"\0" * 12)])

    def tag(offset):  # the 4 bytes at offset (zeros past the end)
        four = tf.fill(tf.shape(offset), tf.constant(4, tf.int64))
        return tf.strings.substr(padded, tf.minimum(offset, size), four)

    def uint(offset, count):
        return read_uint(padded, size, offset, count)

    def at(value):
        return tf.fill(tf.shape(size), tf.constant(value, tf.int64))

    riff = (size >= 12) & tf.equal(tag(at(0)), b"RIFF") & tf.equal(tag(at(8)), b"WAVE")

    # Walk to "fmt ". state: 0 walking, 1 at "fmt ", 2 cut short, 3 a chunk the decoder does not skip.
    def to_fmt(i, offset, state):
        chunk = tag(offset)
        skipped = tf.reduce_any(tf.stack([tf.equal(chunk, c) for c in _WAV_SKIPPED_BEFORE_FMT]), axis=0)
        following = offset + 8 + uint(offset + 4, 4)
        found = tf.where(offset + 4 > size, at(2), tf.where(tf.equal(chunk, b"fmt "), at(1), tf.where(
            tf.logical_not(skipped), at(3), tf.where((offset + 8 > size) | (following > size), at(2), at(0)))))
        walking = tf.equal(state, 0)
        return i + 1, tf.where(walking & tf.equal(found, 0), following, offset), tf.where(walking, found, state)

    _, fmt, state = tf.while_loop(
        lambda i, offset, state: (i < _WAV_MAX_CHUNKS) & tf.reduce_any(tf.equal(state, 0)), to_fmt,
        [tf.constant(0), at(12), tf.where(riff, at(0), at(-1))])
    fields_sent = tf.equal(state, 1) & (fmt + 24 <= size)  # "fmt ", its size and its 16 bytes of fields
    fmt_size, format_code, channels = uint(fmt + 4, 4), uint(fmt + 8, 2), uint(fmt + 10, 2)
    rate, byte_rate, block, bits = uint(fmt + 12, 4), uint(fmt + 16, 4), uint(fmt + 20, 2), uint(fmt + 22, 2)
    extensible = fields_sent & tf.equal(format_code, _WAVE_FORMAT_EXTENSIBLE)
    not_pcm16 = fields_sent & tf.logical_not(extensible) & (
        tf.not_equal(format_code, _WAVE_FORMAT_PCM) | tf.not_equal(bits, 16))
    pcm16 = fields_sent & tf.equal(format_code, _WAVE_FORMAT_PCM) & tf.equal(bits, 16)
    fields_wrong = pcm16 & ((tf.not_equal(fmt_size, 16) & tf.not_equal(fmt_size, 18)) | tf.equal(channels, 0) |
                            tf.equal(rate, 0) | tf.not_equal(block, 2 * channels) |
                            tf.not_equal(byte_rate, block * rate))
    readable = pcm16 & tf.logical_not(fields_wrong)

    # The chunks after "fmt ", to the end, as the decoder walks them (it advances past a data
    # chunk by the samples it reads, past any other by its declared size).
    def after_fmt(i, offset, walking, bad, found, frames):
        chunk_size = uint(offset + 4, 4)
        data = tf.equal(tag(offset), b"data")
        chunk_frames = chunk_size // tf.maximum(block, 1)
        data_bytes = chunk_frames * channels * 2
        error = (offset + 8 > size) | (chunk_size > 2 ** 31 - 1) | data & (found | (offset + 8 + data_bytes > size))
        ok = walking & tf.logical_not(error)
        following = offset + 8 + tf.where(data, data_bytes, chunk_size)
        return (i + 1, tf.where(ok, following, offset), ok & (following < size), bad | walking & error,
                found | ok & data, tf.where(ok & data, chunk_frames, frames))

    first = fmt + 8 + fmt_size
    _, _, walking, bad, found, frames = tf.while_loop(
        lambda i, offset, walking, *_: (i < _WAV_MAX_CHUNKS) & tf.reduce_any(walking), after_fmt,
        [tf.constant(0), first, readable & (first < size), tf.zeros_like(riff), tf.zeros_like(riff), at(0)])
    damaged = (riff & (tf.equal(state, 0) | tf.equal(state, 2) | tf.equal(state, 1) & tf.logical_not(fields_sent)) |
               fields_wrong | readable & (bad | walking | tf.logical_not(found)))
    return {"not_wav": tf.logical_not(riff), "damaged": damaged, "chunk_order": tf.equal(state, 3),
            "extensible": extensible, "not_pcm16": not_pcm16, "rate": rate, "frames": frames}


def decode_wavs(wavs, name, num_samples):
    """string [B] WAV files -> float32 [B, num_samples] 16 kHz mono, after checking, from each
    header (`_wav_headers`), that the decoder will read it and that it is 16 kHz, not empty and
    not too long: every refusal names the items at fault, none comes from the decoder."""
    head = _wav_headers(wavs)
    decodable = tf.logical_not(head["not_wav"] | head["damaged"] | head["chunk_order"] | head["extensible"] |
                               head["not_pcm16"])
    frames = head["frames"]
    checks = in_order(
        lambda: refuse(head["not_wav"], f"{name}: these items are not WAV files (16-bit PCM, RIFF/WAVE)",
                        "send the WAV file's bytes"),
        lambda: refuse(head["damaged"], f"{name}: truncated or damaged WAV header (a size or field that does "
                        "not match the bytes sent)", "send the whole file, or rewrite it, e.g. sox in.wav -b 16 "
                        "out.wav"),
        lambda: refuse(head["chunk_order"], f"{name}: these WAV files have a chunk before the format (fmt) chunk "
                        "(LIST metadata, say) which the decoder does not read", "rewrite them with the format chunk "
                        "first, e.g. sox in.wav -b 16 out.wav"),
        lambda: refuse(head["extensible"], f"{name}: these WAV files have a WAVE_FORMAT_EXTENSIBLE header, which "
                        "the decoder does not read", "rewrite them as plain 16-bit PCM, mono or stereo, e.g. sox "
                        "in.wav -b 16 -c 1 out.wav"),
        lambda: refuse(head["not_pcm16"], f"{name}: these WAV files are not 16-bit PCM (8/24/32-bit or float "
                        "samples)", "the model is served 16-bit PCM, e.g. sox in.wav -b 16 -e signed-integer "
                        "out.wav"),
        lambda: refuse(decodable & tf.not_equal(head["rate"], WAV_RATE), f"{name}: the model takes 16 kHz "
                        "audio; these WAV files are at another sample rate", "resample the WAV to 16000 Hz, e.g. "
                        "sox in.wav -r 16000 out.wav", head["rate"], "sample rates"),
        lambda: refuse(decodable & tf.equal(frames, 0), f"{name}: empty audio (no samples)",
                        "send at least one sample"),
        lambda: refuse(decodable & (frames > MAX_AUDIO_SECONDS * WAV_RATE), f"{name}: audio longer than "
                        f"{MAX_AUDIO_SECONDS} s at 16 kHz", "send it in shorter pieces", frames, "samples"))

    def decode(data):
        audio, _ = tf.audio.decode_wav(data)  # float32 [n, channels] in [-1, 1]
        return _fit_length(tf.reduce_mean(audio, axis=1), num_samples)

    with tf.control_dependencies(checks):
        return tf.map_fn(decode, wavs, fn_output_signature=tf.TensorSpec([num_samples], tf.float32))


# Largest sample magnitude served: float samples are in [-1, 1]; up to 1.5 is let through (what
# resampling or filtering a full-scale signal overshoots by), more is refused (e.g. int16 values
# sent as floats: scale them by 1 / 32768).
MAX_WAVEFORM_PEAK = 1.5


def prepare_waveforms(waveforms, name, num_samples):
    """float32 [B, n] -> [B, num_samples] after checking n, and that every sample is finite and of
    magnitude at most MAX_WAVEFORM_PEAK (refusals name the rows at fault)."""
    finite = tf.math.is_finite(waveforms)
    peak = tf.reduce_max(tf.abs(tf.where(finite, waveforms, tf.zeros_like(waveforms))), axis=1)
    n = tf.shape(waveforms)[1]  # the same for every row: no indices to name
    checks = in_order(
        lambda: tf.debugging.assert_positive(n, message=f"{name}: empty audio (no samples)"),
        lambda: tf.debugging.assert_less_equal(n, MAX_AUDIO_SECONDS * WAV_RATE, message=(
            f"{name}: audio longer than {MAX_AUDIO_SECONDS} s at 16 kHz; send it in shorter pieces")),
        lambda: refuse(tf.logical_not(tf.reduce_all(finite, axis=1)), f"{name}: waveforms hold NaN or Inf",
                        "send finite samples"),
        lambda: refuse(peak > MAX_WAVEFORM_PEAK, f"{name}: waveforms hold samples beyond +-{MAX_WAVEFORM_PEAK} (the "
                        "model takes float samples in [-1, 1])", "scale them to [-1, 1], e.g. int16 samples / 32768",
                        peak, "peaks"))
    with tf.control_dependencies(checks):
        return tf.map_fn(lambda w: _fit_length(w, num_samples), waveforms,
                         fn_output_signature=tf.TensorSpec([num_samples], tf.float32))
