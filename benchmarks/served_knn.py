"""kNN accuracy of an exported image model's served embeddings, in a process that does not
import keras_ssl (what a TF Serving user gets from the SavedModel alone).

    python benchmarks/served_knn.py saved_models/simclr_fashion_mnist_demo/1

Embeds Fashion-MNIST's 60,000 training and 10,000 test images through the `embed_pixels`
signature (uint8 pixels in, L2-normalised `embedding` out) and scores the test images by the
weighted kNN `keras-ssl-evaluate` uses: cosine similarity, the k = 20 nearest training images
vote with weight exp(similarity / 0.07) (Wu et al. 2018). The IDX files (28x28 greyscale) are
read from `--data_dir`, else from Debian's dataset-fashion-mnist location or Keras's cache.
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np
import tensorflow as tf

K, TEMPERATURE = 20, 0.07  # keras_ssl.evaluation's kNN (k=20, KNN_TEMPERATURE)


def read_idx(path):
    """A gzipped IDX file (the MNIST format) as a uint8 array."""
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def weighted_knn_accuracy(train, train_labels, test, test_labels, num_classes):
    correct = 0
    for i in range(0, len(test), 1000):
        sim = test[i:i + 1000] @ train.T  # both L2-normalised: cosine
        top = np.argpartition(-sim, K, axis=1)[:, :K]
        votes = np.zeros((len(top), num_classes))
        np.add.at(votes, (np.arange(len(top))[:, None], train_labels[top]),
                  np.exp(np.take_along_axis(sim, top, 1) / TEMPERATURE))
        correct += int((votes.argmax(1) == test_labels[i:i + 1000]).sum())
    return correct / len(test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", help="a SavedModel version directory, e.g. saved_models/NAME/1")
    parser.add_argument("--data_dir", default=None, help="a folder with Fashion-MNIST's four IDX .gz files")
    args = parser.parse_args()
    assert "keras_ssl" not in sys.modules
    folders = [args.data_dir] if args.data_dir else [
        "/usr/share/datasets/fashion-mnist", os.path.expanduser("~/.keras/datasets/fashion-mnist")]
    data_dir = next((d for d in folders if os.path.isfile(os.path.join(d, "t10k-images-idx3-ubyte.gz"))), None)
    if data_dir is None:
        sys.exit(f"error: no Fashion-MNIST IDX files in {' or '.join(folders)}; give --data_dir "
                 "(or install Debian's dataset-fashion-mnist: make dataset)")
    split = lambda name: read_idx(os.path.join(data_dir, f"{name}.gz"))
    xtr, ytr = split("train-images-idx3-ubyte"), split("train-labels-idx1-ubyte")
    xte, yte = split("t10k-images-idx3-ubyte"), split("t10k-labels-idx1-ubyte")
    embed = tf.saved_model.load(args.export_dir).signatures["embed_pixels"]
    start = time.time()
    served = lambda x: np.concatenate([embed(pixels=tf.constant(x[i:i + 1000, :, :, None]))["embedding"].numpy()
                                       for i in range(0, len(x), 1000)])
    etr, ete = served(xtr), served(xte)
    seconds = time.time() - start
    accuracy = weighted_knn_accuracy(etr, ytr, ete, yte, int(ytr.max()) + 1)
    print(f"{args.export_dir}: {etr.shape[1]}-d embeddings of {len(xtr) + len(xte)} images in {seconds:.1f} s; "
          f"kNN k={K} on the test set: {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
