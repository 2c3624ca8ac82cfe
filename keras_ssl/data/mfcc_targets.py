"""Frame targets for HuBERT (Hsu et al. 2021): MFCC frames aligned with the speech
encoder's, k-means cluster ids of frame features, and the clusters' purity.

    from keras_ssl.data.mfcc_targets import mfcc_frames, fit_kmeans, assign_clusters, cluster_purity
    features = mfcc_frames(waveforms)                    # [N, feature_frames(samples), 39]
    centroids = fit_kmeans(features, clusters=100, seed=0)
    targets = assign_clusters(features, centroids)       # int32 [N, T]: what HuBERT predicts
    cluster_purity(targets, word_labels, 100)            # frame-weighted purity

**MFCC frames at the encoder's rate.** The speech encoder
(`keras_ssl.speech_transformer`) makes frame t of a clip from samples
`320 t .. 320 t + 399` (a 25 ms receptive field every 20 ms; `feature_frames(n)`
= `floor((n - 400) / 320) + 1` frames). `mfcc_frames` computes the 13 MFCCs every 10 ms
over 25 ms windows (`keras_ssl.audio_encoders.mfcc`, the MFCC baseline of the audio
probes: 40 mel bands, 20 Hz - 8 kHz, `tf.signal`), their deltas and delta-deltas at
100 Hz (Kaldi's `add-deltas`/torchaudio's `compute_deltas`: a window of 2 frames each
side, `d_t = sum_{n=1,2} n (c_{t+n} - c_{t-n}) / 10`, the edge frames repeated), 39
values per frame as fairseq's HuBERT recipe (`dump_mfcc_feature.py`), and keeps every
second frame: 10 ms frame 2t covers samples `320 t .. 320 t + 399`, exactly encoder
frame t's, and there are `ceil(floor((n - 400) / 160 + 1) / 2) = feature_frames(n)` of
them. fairseq trains its first iteration on these 100 Hz labels and takes every second
one for the 50 Hz model (`feat2tar_ratio`), the same frames as here. Ours and the
paper's differ in the MFCC front end: Kaldi's (power spectrum, 23 bins, pre-emphasis,
Povey window) there, this package's (`tf.signal`: magnitude spectrum, 40 bins, Hann
window) here.

**k-means.** scikit-learn's `MiniBatchKMeans` with fairseq's `learn_kmeans.py` settings
(k-means++ initialisation, mini-batches of 10,000 frames, at most 100 iterations, no
tolerance, stop after 100 mini-batches without improvement, no reassignment), seeded,
the best of `KMEANS_INITS` = 20 initialisations (fairseq's); frames are
clustered as they are (fairseq standardises nothing). It runs on one thread: on a 2-core
CPU shared with other jobs, the MFCC frames of the spoken digits' 2,902 training clips took
7 s on one thread and 17 s on scikit-learn's default two (ours), with the same centroids,
and a few hundred frames 0.03 s against 0.2-1.9 s. `assign_clusters` gives each
frame its nearest centroid (squared Euclidean), in float64.

**Purity.** For targets z and a label y per clip (the spoken word) given to every frame
of the clip, `cluster_purity` is the HuBERT paper's "phone purity" (its analysis of clusters,
E_z[max_y p(y | z)]) with words for phones: each cluster's frames counted under their
clip's word, the count of its majority word summed over the clusters and divided by the
frames. It weights each cluster by its frames (frame-weighted). 1 when every cluster
holds one word's frames only; at least the share of the commonest word. `pnmi` is the
paper's phone-normalised mutual information, I(y; z) / H(y).
"""

import numpy as np
import tensorflow as tf

# fairseq's examples/hubert/simple_kmeans/learn_kmeans.py defaults (20 k-means++ starts; on a
# shared 2-core CPU, one thread, 142k frames of 256 values took 114 s with 20 starts and 19 s with
# 4; on the MFCC frames of the spoken digits' training clips 1, 4 and 20 starts gave purities of
# 25.1%, 25.0% and 25.7% at 100 clusters: ours)
KMEANS_BATCH, KMEANS_MAX_ITER, KMEANS_NO_IMPROVEMENT, KMEANS_INITS = 10000, 100, 100, 20
DELTA_WINDOW = 2  # Kaldi's add-deltas and torchaudio's compute_deltas (win_length 5)
MFCC_DIM = 39  # 13 coefficients, deltas, delta-deltas


def deltas(x, window=DELTA_WINDOW):
    """Kaldi's deltas along axis 1 of float32 `[B, T, D]`: `d_t = sum_{n=1..N} n (x_{t+n}
    - x_{t-n}) / (2 sum_{n=1..N} n^2)`, the first and last frames repeated beyond the
    ends."""
    x = tf.convert_to_tensor(x, tf.float32)
    length = tf.shape(x)[1]
    padded = tf.concat([tf.repeat(x[:, :1], window, axis=1), x, tf.repeat(x[:, -1:], window, axis=1)], axis=1)
    total = tf.zeros_like(x)
    for n in range(1, window + 1):
        ahead = padded[:, window + n:window + n + length]
        behind = padded[:, window - n:window - n + length]
        total += n * (ahead - behind)
    return total / (2.0 * sum(n * n for n in range(1, window + 1)))


def mfcc_frames(waveforms):
    """float32 `[B, samples]` (16 kHz) -> float32 `[B, feature_frames(samples), 39]`: the
    13 MFCCs, their deltas and delta-deltas, one frame per encoder frame (see the module
    docstring). Clips shorter than 400 samples give no frame."""
    from keras_ssl.audio_encoders import mfcc
    from keras_ssl.speech_transformer import feature_frames

    waveforms = tf.convert_to_tensor(waveforms, tf.float32)
    coefficients = mfcc(waveforms)  # [B, T10, 13], every 10 ms
    d = deltas(coefficients)
    features = tf.concat([coefficients, d, deltas(d)], axis=-1)[:, ::2]
    return features[:, :feature_frames(tf.shape(waveforms)[1])]


def batched_frames(function, waveforms, batch_size=256):
    """`function(waveforms [b, samples]) -> [b, T, D]` over numpy clips in batches, as one
    float32 numpy array `[N, T, D]`."""
    waveforms = np.asarray(waveforms, np.float32)
    fn = tf.function(lambda x: tf.cast(function(x), tf.float32), reduce_retracing=True)
    parts = [fn(tf.constant(waveforms[i:i + batch_size])).numpy() for i in range(0, len(waveforms), batch_size)]
    if not parts:
        raise ValueError("no clips to compute frames of")
    return np.concatenate(parts, axis=0)


def fit_kmeans(frames, clusters, seed=0, inits=KMEANS_INITS):
    """Centroids float32 `[clusters, D]` of the frames (`[N, T, D]` or `[M, D]`), by
    scikit-learn's `MiniBatchKMeans` with `random_state=seed` (see the module docstring):
    the same frames and seed give the same centroids."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    from keras_ssl.errors import UserError

    x = np.asarray(frames, np.float32).reshape(-1, np.shape(frames)[-1])
    if len(x) < clusters:
        raise UserError(f"k-means of {clusters} clusters needs at least as many frames, got {len(x)}; lower "
                        "--num_clusters or give more clips")
    kmeans = MiniBatchKMeans(n_clusters=int(clusters), init="k-means++", max_iter=KMEANS_MAX_ITER,
                             batch_size=KMEANS_BATCH, tol=0.0, max_no_improvement=KMEANS_NO_IMPROVEMENT,
                             n_init=int(inits), reassignment_ratio=0.0, random_state=int(seed))
    with threadpool_limits(1):  # one thread: the same centroids, faster on a shared CPU (module docstring)
        return kmeans.fit(x).cluster_centers_.astype(np.float32)


def assign_clusters(frames, centroids, chunk=65536):
    """int32 cluster ids of `frames` (`[..., D]`, shape `[...]`): the nearest centroid
    (squared Euclidean, in float64), ties to the lower id."""
    frames = np.asarray(frames)
    x = frames.reshape(-1, frames.shape[-1]).astype(np.float64)
    c = np.asarray(centroids, np.float64)
    norms = (c * c).sum(axis=1)
    ids = np.empty(len(x), np.int32)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        ids[start:start + chunk] = np.argmin(norms[None] - 2.0 * part @ c.T, axis=1)  # + |x|^2: the same order
    return ids.reshape(frames.shape[:-1])


def contingency(targets, labels, clusters, num_labels=None):
    """Frames per (cluster, label), int64 `[clusters, labels]`: every frame of clip i
    (`targets[i]`, `[N, T]`) counted under `labels[i]`."""
    targets = np.asarray(targets)
    labels = np.asarray(labels).astype(np.int64)
    num_labels = int(num_labels if num_labels is not None else labels.max() + 1)
    per_frame = np.broadcast_to(labels.reshape(-1, *([1] * (targets.ndim - 1))), targets.shape)
    table = np.zeros((int(clusters), num_labels), np.int64)
    np.add.at(table, (targets.ravel().astype(np.int64), per_frame.ravel()), 1)
    return table


def cluster_purity(targets, labels, clusters):
    """The frame-weighted purity of the clusters against the clips' labels: the sum over
    clusters of the frames of its majority label, over all frames (module docstring)."""
    table = contingency(targets, labels, clusters)
    return float(table.max(axis=1).sum() / max(table.sum(), 1))


def pnmi(targets, labels, clusters):
    """I(label; cluster) / H(label) of the frames (the HuBERT paper's PNMI): 0 for clusters
    that say nothing of the label, 1 when they determine it."""
    table = contingency(targets, labels, clusters).astype(np.float64)
    joint = table / max(table.sum(), 1.0)
    p_z, p_y = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / (p_z @ p_y)[nonzero])).sum())
    entropy = float(-(p_y[p_y > 0] * np.log(p_y[p_y > 0])).sum())
    return mutual / entropy if entropy > 0 else 0.0
