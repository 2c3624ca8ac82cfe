"""The targets of a HuBERT run (`keras_ssl.models.hubert`): k-means cluster ids of frame
features, one per 20 ms frame of every clip, made once before training by the run's
`prepare` step and saved in its `prepared.npz`:

* iteration 1 (`hubert`): the 39-d MFCC frames (`keras_ssl.data.mfcc_targets.mfcc_frames`);
* iteration 2 (`hubert_iter2`): the frames of Transformer block `--target_layer` of the
  parent run's model.

`prepare_targets` fits the k-means (scikit-learn's `MiniBatchKMeans`, seeded by `--seed`)
on the training clips and saves the centroids, the targets and their purity and PNMI
against the word labels; `split_targets` gives any split's targets (the nearest saved
centroid of each frame's features).
"""

import numpy as np

from keras_ssl.errors import UserError
from keras_ssl.speech_transformer import feature_frames

FRAMES_BATCH = 64  # clips per forward pass when a parent's frames are computed (prepare, evaluation)


def parent_frames(parent, waveforms, layer):
    """float32 `[N, T, D]`: block `layer`'s frames of the `parent` HuBERT for numpy clips."""
    from keras_ssl.data.mfcc_targets import batched_frames

    if not 1 <= int(layer) <= parent.num_blocks:
        raise UserError(f"--target_layer={layer}, but the parent has {parent.num_blocks} Transformer blocks; give "
                        f"one in 1..{parent.num_blocks}")
    return batched_frames(lambda x: parent.layer_frames(x, layer), waveforms, FRAMES_BATCH)


def target_features(options, waveforms, parent=None):
    """What a run's targets cluster, float32 `[N, T, D]`: the MFCC frames of the clips
    (iteration 1, no parent) or block `options.target_layer` of the parent (iteration 2)."""
    from keras_ssl.data.mfcc_targets import batched_frames, mfcc_frames

    if parent is None:
        return batched_frames(mfcc_frames, waveforms)
    return parent_frames(parent, waveforms, options.target_layer)


def prepare_targets(run, options, split, parent):
    """The k-means targets of the training clips (deterministic for a seed: the features
    are, and the k-means is seeded with `--seed`): `centroids` float32 `[C, D]`, `targets`
    int32 `[clips, frames]` and, with word labels, their `purity` and `pnmi`."""
    from keras_ssl.data.mfcc_targets import assign_clusters, cluster_purity, fit_kmeans, pnmi

    features = target_features(options, split.waveforms, parent)
    centroids = fit_kmeans(features, options.num_clusters, seed=run.seed)
    targets = assign_clusters(features, centroids)
    artefacts = {"centroids": centroids, "targets": targets}
    if split.labels is not None:
        artefacts["purity"] = np.float64(cluster_purity(targets, split.labels, options.num_clusters))
        artefacts["pnmi"] = np.float64(pnmi(targets, split.labels, options.num_clusters))
    return artefacts


def split_targets(options, split, stage):
    """int32 `[clips, frames]`: the prepared targets for the training split, the nearest
    prepared centroid of each frame's features for any other split."""
    from keras_ssl.data.mfcc_targets import assign_clusters

    targets = stage.artefacts["targets"]
    if len(targets) == len(split) and targets.shape[1] == feature_frames(split.waveforms.shape[1]):
        return targets
    return assign_clusters(target_features(options, split.waveforms, stage.parent), stage.artefacts["centroids"])
