"""Dataset sources: Fashion-MNIST search order and errors, digits, folders with corrupt files."""

import gzip
import os
import struct

import numpy as np
import pytest

from keras_ssl.data import load_source, simclr_views
from keras_ssl.data import sources
from keras_ssl.errors import UserError

SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": np.arange(n_test) % 10,
    }
    for key, name in sources.FASHION_MNIST_FILES.items():
        _write_idx(os.path.join(directory, name), arrays[key])
    return arrays


def test_fashion_mnist_from_data_dir_first(tmp_path):
    arrays = _fake_fashion_mnist(str(tmp_path))
    ds = load_source("fashion_mnist", data_dir=str(tmp_path), allow_download=False)
    assert ds.image_shape == (28, 28, 1) and len(ds.train) == 20 and len(ds.test) == 10
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train_images"])
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10


def test_fashion_mnist_missing_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(sources, "fashion_mnist_dirs",
                        lambda data_dir=None: [str(data_dir), str(tmp_path / "keras_home")])
    with pytest.raises(UserError, match="Fashion-MNIST not found; looked in .*keras_home.*download not allowed"):
        load_source("fashion_mnist", data_dir=str(tmp_path / "nothing"), allow_download=False)


def test_fashion_mnist_search_order_includes_keras_cache_and_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    dirs = sources.fashion_mnist_dirs("/data")
    assert dirs == ["/data", "/data/fashion-mnist", str(tmp_path / "datasets" / "fashion-mnist"), SYSTEM_FMNIST]


def test_truncated_idx_is_a_clear_error(tmp_path):
    _fake_fashion_mnist(str(tmp_path))
    path = tmp_path / sources.FASHION_MNIST_FILES["train_images"]
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(UserError, match="truncated"):
        load_source("fashion_mnist", data_dir=str(tmp_path), allow_download=False)


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FMNIST), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    ds = load_source("fashion_mnist", allow_download=False)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10


def test_digits_and_resize_and_channels():
    ds = load_source("digits")
    assert ds.image_shape == (8, 8, 1) and len(ds.train) + len(ds.test) == 1797
    assert ds.train.images.max() == 255
    big = load_source("digits", image_size=(16, 16), channels=3)
    assert big.image_shape == (16, 16, 3) and big.train.images.dtype == np.uint8


def test_unknown_dataset_and_bad_arguments():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_source("mnist")
    with pytest.raises(UserError, match="tfds:NAME"):
        load_source("tfds:")
    with pytest.raises(UserError, match="does not exist"):
        load_source("folder:/no/such/folder")
    with pytest.raises(UserError, match="channels"):
        load_source("digits", channels=2)


def _save_png(path, value, size=(12, 10), mode="L"):
    from PIL import Image

    Image.new(mode, size, color=value).save(path)


def test_folder_with_classes_and_corrupt_file(tmp_path):
    for c, cls in enumerate(["cat", "dog"]):
        os.makedirs(tmp_path / cls)
        for i in range(10):
            _save_png(tmp_path / cls / f"{i}.png", 20 * c + i)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = load_source(f"folder:{tmp_path}")
    assert ds.class_names == ("cat", "dog") and ds.image_shape == (10, 12, 1)
    assert len(ds.train) + len(ds.test) == 20 and len(ds.test) == 2
    assert set(np.concatenate([ds.train.labels, ds.test.labels])) == {0, 1}
    with pytest.raises(UserError, match="broken.png"):
        sources.load_folder(f"folder:{tmp_path}", on_corrupt="error")


def test_folder_train_test_rgb_resized(tmp_path):
    """train/ and test/ are the splits, the sub-folders (sorted) the classes, every image keeps its
    class and its colours, and 40x30 files become 16x16 (bilinear: a left/right split stays one)."""
    from PIL import Image

    colour = {("train", "a"): 10, ("train", "b"): 60, ("test", "a"): 110, ("test", "b"): 160}
    for split in ("train", "test"):
        for cls in ("b", "a"):  # created out of order: the classes are sorted by name
            os.makedirs(tmp_path / split / cls)
            for i in range(4):
                # R: the image, G: split and class, B: 200 on the left half, 50 on the right
                pixels = np.zeros((30, 40, 3), np.uint8)
                pixels[..., 0], pixels[..., 1] = i * 40, colour[split, cls]
                pixels[:, :20, 2], pixels[:, 20:, 2] = 200, 50
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    ds = load_source(f"folder:{tmp_path}", image_size=(16, 16))
    assert ds.image_shape == (16, 16, 3) and len(ds.train) == 8 and len(ds.test) == 8
    assert ds.class_names == ("a", "b") and ds.train.images.dtype == np.uint8
    for name, split in (("train", ds.train), ("test", ds.test)):
        assert sorted(split.labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
        for image, label in zip(split.images, split.labels):
            assert np.all(image[..., 1] == colour[name, ds.class_names[label]]), (name, label)
            assert np.all(image[..., 0] == image[0, 0, 0]) and image[0, 0, 0] in (0, 40, 80, 120)
        assert sorted(split.images[:, 0, 0, 0].tolist()) == [0, 0, 40, 40, 80, 80, 120, 120]
        # 40 -> 16 columns (2.5 source columns each, a 5-column filter): columns 0-6 read the left
        # half only, 9-15 the right half only, 7 and 8 straddle the edge and fall strictly between
        blue = split.images[..., 2]
        assert np.all(blue[:, :, :7] == 200) and np.all(blue[:, :, 9:] == 50)
        assert np.all((blue[:, :, 7:9] < 200) & (blue[:, :, 7:9] > 50))
        assert np.all(blue[:, :, 7] > blue[:, :, 8])


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(6):
        _save_png(tmp_path / f"{i}.png", i * 30)
    ds = load_source(f"folder:{tmp_path}")
    assert not ds.labelled and ds.train.labels is None
    batch = next(iter(simclr_views(ds.train, 2, "fashion_mnist")))
    assert len(batch) == 2 and batch[0].shape == (2, 10, 12, 1)


def test_views_pipeline_batches_and_labels():
    ds = load_source("digits")
    (a, b), y = next(iter(simclr_views(ds.train, 32, "fashion_mnist", seed=1)))
    assert a.shape == b.shape == (32, 8, 8, 1) and y.shape == (32,)
    (a2, _), y2 = next(iter(simclr_views(ds.train, 32, "fashion_mnist", seed=1)))
    np.testing.assert_array_equal(a.numpy(), a2.numpy())
    np.testing.assert_array_equal(y.numpy(), y2.numpy())
    with pytest.raises(UserError, match="fewer than one batch"):
        simclr_views(ds.train.take(10), 32)


class _FakeTFDS:
    """Stands in for the tensorflow_datasets package (which downloads at run time)."""

    def __init__(self, splits):
        self.splits = splits
        self.prepared = False

    def builder(self, name, data_dir=None):
        fake = self

        class Builder:
            class info:
                splits = {k: None for k in fake.splits}
                features = {"label": type("L", (), {"names": ["a", "b", "c"]})()}

            def download_and_prepare(self):
                fake.prepared = True

            def as_dataset(self, split, as_supervised, batch_size):
                assert as_supervised and batch_size == -1
                return fake.splits[split]

        assert name == "fake_set"
        return Builder()

    @staticmethod
    def as_numpy(x):
        return x


def test_tfds_source_with_named_split(monkeypatch):
    rng = np.random.default_rng(0)
    splits = {"train": (rng.integers(0, 256, (12, 8, 8, 3)), np.arange(12) % 3),
              "extra": (rng.integers(0, 256, (6, 8, 8)), np.arange(6) % 3),
              "test": (rng.integers(0, 256, (4, 8, 8, 3)), np.arange(4) % 3)}
    fake = _FakeTFDS(splits)
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", fake)
    ds = load_source("tfds:fake_set")
    assert fake.prepared and ds.name == "tfds:fake_set" and ds.class_names == ("a", "b", "c")
    assert len(ds.train) == 12 and len(ds.test) == 4 and ds.image_shape == (8, 8, 3)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
    gray = load_source("tfds:fake_set:extra", image_size=(16, 16), allow_download=False)
    assert gray.image_shape == (16, 16, 1) and len(gray.train) == 6
    with pytest.raises(UserError, match="cannot load tfds:fake_set:nope"):
        load_source("tfds:fake_set:nope")


def test_tfds_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
    with pytest.raises(UserError, match=r"pip install 'keras_ssl\[tfds\]'"):
        load_source("tfds:cifar10")


def test_folder_reads_16_bit_png_as_the_served_model_decodes_it(tmp_path):
    from PIL import Image
    import tensorflow as tf

    values = np.array([[0, 257, 40000], [65535, 1000, 30000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    loaded = load_source(f"folder:{tmp_path}").train.images[0, ..., 0]
    served = tf.io.decode_image(path.read_bytes(), channels=0, expand_animations=False).numpy()[..., 0]
    assert served[0, 2] == 156  # the high byte of 40000
    np.testing.assert_array_equal(loaded, served)  # it used to be 255 wherever the value was > 255


def test_folder_does_not_trust_its_first_file(tmp_path):
    (tmp_path / "0_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    for i in range(1, 5):
        _save_png(tmp_path / f"{i}.png", i * 30)
    with pytest.warns(UserWarning, match="0_broken.png"):  # skipped, not a PIL traceback
        ds = load_source(f"folder:{tmp_path}")
    assert ds.image_shape == (10, 12, 1)
    from PIL import Image

    Image.new("L", (2000, 10)).save(tmp_path / "00_huge.png")
    with pytest.raises(UserError, match=r"first one's 10x2000; pass --image_size"):
        load_source(f"folder:{tmp_path}")
