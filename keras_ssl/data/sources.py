"""Image sources by name: `fashion_mnist`, `digits`, `tfds:NAME[:split]`, `folder:PATH`.

Every source returns an `ImageDataset` whose splits hold uint8 HWC images
(grayscale `C=1` or RGB `C=3`) and int32 labels (or no labels for
unlabelled folders). Everything is decoded into memory at load time: the
sources this package targets (Fashion-MNIST, digits, CIFAR-sized TFDS sets,
folders of a few ten thousand images) fit easily, and an in-memory source
makes the input pipeline pure tensor ops with no decoding per epoch.
"""

import dataclasses
import gzip
import os
import zlib

import numpy as np

from keras_ssl.data.folders import warn_unread
from keras_ssl.data.splits import IndexedExamples, LabelledFacts
from keras_ssl.errors import UserError

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SOURCE_NAMES = ("fashion_mnist", "digits", "tfds:NAME[:split]", "folder:PATH")


@dataclasses.dataclass
class Split(IndexedExamples):
    """One split: `images` uint8 `[N, H, W, C]`, `labels` int32 `[N]` or None."""

    images: np.ndarray
    labels: np.ndarray | None


@dataclasses.dataclass
class ImageDataset(LabelledFacts):
    """A named dataset: train and test splits plus what a model needs to know."""

    name: str
    train: Split
    test: Split
    class_names: tuple = ()
    modality = "image"  # keras_ssl.modalities

    @property
    def image_shape(self):
        return tuple(int(s) for s in self.train.images.shape[1:])

    @property
    def input_shape(self):
        """The shape of one model input (every dataset has it): `(H, W, C)`."""
        return self.image_shape


def _read_idx(path):
    """Reads an IDX file (the MNIST format), gzipped, into a numpy array."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}; the file is damaged, delete it and fetch it again")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; fetch it again")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise UserError(f"{path} is truncated ({len(data) - offset} of {int(np.prod(dims))} bytes); "
                        "fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def fashion_mnist_dirs(data_dir=None):
    """Directories searched for Fashion-MNIST, in order."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    dirs = []
    if data_dir:
        dirs += [data_dir, os.path.join(data_dir, "fashion-mnist")]
    dirs += [os.path.join(keras_home, "datasets", "fashion-mnist"), "/usr/share/datasets/fashion-mnist"]
    return dirs


def load_fashion_mnist(data_dir=None, allow_download=True):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train and 10,000 test 28x28x1 images.

    Looks for the four IDX `.gz` files in `data_dir` (and `data_dir/fashion-mnist`),
    the Keras cache `$KERAS_HOME/datasets/fashion-mnist`, Debian's
    `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`), and
    only then downloads with `keras.datasets.fashion_mnist` when allowed.
    """
    searched = fashion_mnist_dirs(data_dir)
    for d in searched:
        paths = {k: os.path.join(d, f) for k, f in FASHION_MNIST_FILES.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            arrays = {k: _read_idx(p) for k, p in paths.items()}
            return ImageDataset(
                "fashion_mnist",
                Split(arrays["train_images"][..., None], arrays["train_labels"].astype(np.int32)),
                Split(arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32)),
                FASHION_MNIST_CLASSES,
            )
    download_error = "download not allowed"
    if allow_download:
        try:
            import keras

            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
            return ImageDataset("fashion_mnist", Split(xtr[..., None], ytr.astype(np.int32)),
                                Split(xte[..., None], yte.astype(np.int32)), FASHION_MNIST_CLASSES)
        except Exception as e:  # no network, proxy, partial file: all mean "not available"
            download_error = f"download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise UserError(
        "Fashion-MNIST not found; looked in " + ", ".join(searched) + f" ({download_error}). "
        "Fix: `apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz files in --data_dir"
    )


def load_digits():
    """scikit-learn's 8x8 digits (1,797 images, values 0-16 scaled to 0-255).

    Split 80/20, stratified, with a fixed seed (0), so every run sees the same
    test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    return ImageDataset("digits", Split(xtr, ytr), Split(xte, yte), tuple(str(i) for i in range(10)))


def load_tfds(spec, data_dir=None, allow_download=True, **settings):
    """`tfds:NAME[:split]` through TensorFlow Datasets (needs network the first time).

    `split` (default `train`) is the training split; the test split is `test`
    when the dataset has one. Install with `pip install keras_ssl[tfds]`. The
    modality that recognises the builder's features loads it
    (`keras_ssl.modalities`): a set whose supervised input is audio (e.g.
    `tfds:speech_commands`) is an `AudioDataset` of 16 kHz clips of
    `audio_seconds` (see `keras_ssl.data.audio.load_tfds_audio`), any other an
    `ImageDataset` (`load_tfds_images`). `settings`: the loader settings of
    `load_source` (`audio_seconds`), each modality taking its own.
    """
    from keras_ssl import modalities

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise UserError(f"bad dataset {spec!r}; write tfds:NAME or tfds:NAME:SPLIT")
    name, train_split = parts[1], (parts[2] if len(parts) == 3 else "train")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("dataset tfds:... needs TensorFlow Datasets: pip install 'keras_ssl[tfds]'")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if allow_download:
            builder.download_and_prepare()
        splits = list(builder.info.splits.keys())
        test_split = "test" if "test" in splits else None
        modality = modalities.for_tfds(builder, tfds)
        return modality.load_tfds(name, builder, train_split, test_split, **settings)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load {spec}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def load_tfds_images(name, builder, train_split, test_split):
    """An `ImageDataset` of a TFDS builder's supervised `(image, label)` pairs."""
    import tensorflow_datasets as tfds

    wanted = [train_split] + ([test_split] if test_split else [])
    arrays = [tfds.as_numpy(builder.as_dataset(split=s, as_supervised=True, batch_size=-1)) for s in wanted]
    class_names = tuple(builder.info.features["label"].names)

    def to_split(pair):
        images, labels = pair
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        return Split(images, np.asarray(labels, dtype=np.int32))

    train = to_split(arrays[0])
    test = to_split(arrays[1]) if test_split else Split(train.images[:0], train.labels[:0])
    return ImageDataset(f"tfds:{name}", train, test, class_names)


def _list_images(directory):
    return sorted(
        os.path.join(directory, f) for f in os.listdir(directory)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, f))
    )


def _to_8bit(im):
    """16-bit grayscale (Pillow modes I;16*, I) -> 8-bit L as v >> 8 (the high byte),
    what TensorFlow's PNG decoder (the served model's) makes of it; Pillow's own
    `convert("L")` clips every value above 255 to 255."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        values = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        return Image.fromarray((values >> 8).astype(np.uint8))
    return im


# Without --image_size the first readable image sets the size of every image; a larger
# side than this is refused (an 8000 x 8000 first file made every image 8000 x 8000).
MAX_DEFAULT_SIDE = 1024


def _first_readable(paths):
    """`(height, width, mode)` of the first file Pillow can open, skipping unreadable ones."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0], im.mode
        except Exception:
            continue
    raise UserError(f"none of the {len(paths)} image files can be read, e.g. {paths[0]}")


def _decode_images(paths, image_size, channels, on_corrupt):
    """Decodes files with Pillow; returns (uint8 [N,H,W,C], kept indices)."""
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    images, kept, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.load()  # full decode: a file damaged mid-way fails here
                im = _to_8bit(im).convert(mode)
                if im.size != (image_size[1], image_size[0]):
                    im = im.resize((image_size[1], image_size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            bad.append(f"{path} ({type(e).__name__}: {e})")
            continue
        images.append(arr.reshape(image_size[0], image_size[1], channels))
        kept.append(i)
    if bad:
        if on_corrupt == "error":
            raise UserError(f"{len(bad)} unreadable image(s), first: {bad[0]}; remove or replace them, "
                            "or load with on_corrupt='skip'")
        import warnings

        warnings.warn(f"skipped {len(bad)} unreadable image(s): " + "; ".join(bad[:20]))
    if not images:
        raise UserError("no readable images among " + str(len(paths)) + " files")
    return np.stack(images), kept


def _folder_split(directory, image_size, channels, on_corrupt):
    classes = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    classes = [c for c in classes if _list_images(os.path.join(directory, c))]
    if classes:
        paths, labels = [], []
        for index, c in enumerate(classes):
            files = _list_images(os.path.join(directory, c))
            paths += files
            labels += [index] * len(files)
    else:
        paths, labels = _list_images(directory), None
    if not paths:
        raise UserError(f"no {'/'.join(IMAGE_EXTENSIONS)} images (nor .wav audio) in {directory} or its sub-folders")
    if image_size is None or channels is None:
        height, width, mode = _first_readable(paths)
        if image_size is None and max(height, width) > MAX_DEFAULT_SIDE:
            raise UserError(f"the images of {directory} would all be resized to the first one's {height}x{width}; "
                            f"pass --image_size (e.g. --image_size=224) to choose their size")
        image_size = image_size or (height, width)
        channels = channels or (1 if mode in ("L", "1", "I") or mode.startswith("I;16") else 3)
    images, kept = _decode_images(paths, image_size, channels, on_corrupt)
    label_array = None if labels is None else np.asarray(labels, dtype=np.int32)[kept]
    return Split(images, label_array), tuple(classes), image_size, channels, paths


def load_folder(spec, image_size=None, channels=None, on_corrupt="skip", test_fraction=0.1, seed=0):
    """`folder:PATH`: JPEG/PNG files, one sub-folder per class (or flat = unlabelled).

    If PATH has `train/` and `test/` sub-folders they are the splits; otherwise
    a fixed random `test_fraction` of the images (seed 0) is held out as test.
    Images are resized to `image_size` (default: the first image's size) and
    converted to `channels` (default: grayscale if the first image is).
    A corrupt or unreadable file is reported by path: with `on_corrupt="skip"`
    (default) it is left out with one warning naming every such file; with
    `"error"` the load fails. Other files under PATH (a WAV, a text file, an
    image outside the class folders) are counted in one warning
    (`keras_ssl.data.folders.warn_unread`).
    """
    path = spec[len("folder:"):] if spec.startswith("folder:") else spec
    if on_corrupt not in ("skip", "error"):
        raise UserError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if not os.path.isdir(path):
        raise UserError(f"folder {path!r} does not exist or is not a directory")
    if channels is not None and channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        train, classes, image_size, channels, read = _folder_split(train_dir, image_size, channels, on_corrupt)
        test, test_classes, _, _, test_read = _folder_split(test_dir, image_size, channels, on_corrupt)
        read = read + test_read
        if test_classes != classes:
            raise UserError(f"train/ and test/ of {path} have different class folders: "
                            f"{classes} vs {test_classes}")
    else:
        full, classes, image_size, channels, read = _folder_split(path, image_size, channels, on_corrupt)
        order = np.random.default_rng(seed).permutation(len(full))
        n_test = int(round(len(full) * test_fraction))
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
        pick = lambda idx: Split(full.images[idx], None if full.labels is None else full.labels[idx])
        train, test = pick(train_idx), pick(test_idx)
    warn_unread(path, read, f"images: only {'/'.join(IMAGE_EXTENSIONS)} files"
                + (" in the class folders" if classes else ""))
    return ImageDataset(f"folder:{path}", train, test, classes)


def resize_uint8(pixels, height, width):
    """uint8 [..., h, w, C] -> uint8 [..., H, W, C]: bilinear in float, rounded. The one
    resize of keras_ssl: datasets here, served images in `export`. At the same size,
    bilinear with half-pixel centres samples every pixel exactly (the image comes back
    unchanged), so callers need no branch on the size."""
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(pixels, tf.float32), [height, width], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _resize(split, image_size):
    if split.images.shape[1:3] == tuple(image_size) or len(split) == 0:
        return split
    return Split(resize_uint8(split.images, *image_size).numpy(), split.labels)


def _to_channels(split, channels):
    c = split.images.shape[-1]
    if channels is None or c == channels:
        return split
    if c == 1 and channels == 3:
        return Split(np.repeat(split.images, 3, axis=-1), split.labels)
    if c == 3 and channels == 1:
        gray = split.images.astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        return Split(np.round(gray).clip(0, 255).astype(np.uint8)[..., None], split.labels)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels")


def load_source(spec, data_dir=None, image_size=None, channels=None, allow_download=True,
                on_corrupt="skip", audio_seconds=None, **settings):
    """Loads a dataset by name; see the module docstring for the names.

    `image_size` `(H, W)` resizes (bilinear), `channels` (1 or 3) converts
    grayscale <-> RGB, so e.g. Fashion-MNIST can feed a 32x32x3 ResNet.
    A `folder:PATH` of WAV files is an `AudioDataset` of clips cut or padded
    to `audio_seconds` (default 1 s; see `keras_ssl.data.audio`). `settings`:
    the loader settings of other modalities, passed to the modality that
    reads the folder or TFDS set.
    """
    if not isinstance(spec, str) or not spec:
        raise UserError(f"dataset must be a name, got {spec!r}; choose one of {', '.join(SOURCE_NAMES)}")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise UserError(f"image_size must be (height, width), got {image_size}")
    from keras_ssl import modalities

    # what each modality's loader takes (images: size and channels; audio: the clip length)
    settings = {k: v for k, v in dict(settings, image_size=image_size, channels=channels,
                                      audio_seconds=audio_seconds).items() if v is not None}
    if spec == "fashion_mnist":
        ds = load_fashion_mnist(data_dir, allow_download)
    elif spec == "digits":
        ds = load_digits()
    elif spec.startswith("tfds:"):
        ds = load_tfds(spec, data_dir, allow_download, **settings)
    elif spec.startswith("folder:"):
        # the modality whose files the folder holds (WAVs: audio), else images
        modality = modalities.for_folder(spec[len("folder:"):])
        return modality.load_folder(spec, on_corrupt=on_corrupt, **settings)
    elif modalities.for_name(spec) is not None:  # a modality's own names (text:PATH, fortunes)
        return modalities.for_name(spec).load_named(spec, data_dir, on_corrupt, **settings)
    else:
        names = SOURCE_NAMES + tuple(n for m in modalities.names() for n in modalities.get(m).named_sources)
        raise UserError(f"unknown dataset {spec!r}; choose one of {', '.join(names)}")
    return modalities.of_dataset(ds).converted(ds, **settings)


def convert_images(ds, image_size=None, channels=None):
    """`ds` with its images resized to `image_size` (bilinear) and converted to
    `channels` (1 or 3)."""
    if image_size is not None:
        ds = dataclasses.replace(ds, train=_resize(ds.train, image_size), test=_resize(ds.test, image_size))
    if channels is not None:
        if channels not in (1, 3):
            raise UserError(f"channels must be 1 or 3, got {channels}")
        ds = dataclasses.replace(ds, train=_to_channels(ds.train, channels),
                                 test=_to_channels(ds.test, channels))
    return ds
