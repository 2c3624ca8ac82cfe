"""SavedModel export with serving signatures, versioned and atomic.

Layout: `<export_root>/<name>/<version>/` (TF Serving's: numeric version
folders; it ignores the hidden `.tmp-*` folder the export is written into
before being renamed into place, so a server never sees half an export).

Signatures (names are stable API):

* `serving_default`: `images` tf.string `[batch]` of encoded PNG/JPEG/GIF/BMP
  (what TF Serving's REST API sends as `{"b64": ...}`) -> `embedding` float32
  `[batch, D]`, L2-normalised;
* `embed_pixels`: `pixels` uint8 `[batch, H, W, C]` -> `embedding`.

Preprocessing inside the graph is the evaluation preprocessing of training:
decode to C channels, bilinear resize to the encoder's H x W (rounded back to
uint8, as the dataset loader does) when the size differs, then `/ 255`.
Every signature checks its input before the encoder runs (rank, channels,
non-empty images, image magic bytes) and answers an empty batch with an empty
result: with oneDNN on, a wrongly shaped tensor reaching a convolution can
abort the whole serving process (SIGABRT, seen with a rank-3 input to a
convolution), and SignatureDef shapes are not enforced: hence `tf.ensure_shape`
and the empty-batch branch.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from keras_ssl.data.sources import resize_uint8
from keras_ssl.errors import UserError

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def next_version(model_root):
    """1 + the largest numeric version folder under `model_root` (1 if none)."""
    if not os.path.isdir(model_root):
        return 1
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()]
    return max(versions, default=0) + 1


def _is_image(data):
    """bool [batch]: the bytes start like a PNG, JPEG, GIF, BMP or WebP file."""
    ok = tf.zeros(tf.shape(data), tf.bool)
    # substr fails on a position past the end: pad so items shorter than 12 bytes are just "not an image"
    data = tf.strings.join([data, tf.fill(tf.shape(data), b"\0" * 12)])
    for magic in _MAGIC:
        ok |= tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
    webp = tf.equal(tf.strings.substr(data, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
    return ok | webp


def _to_channels(image, channels):
    """uint8 [h, w, n] as decoded (n = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; GIF is
    always RGB) -> [h, w, channels]: alpha dropped, gray repeated for RGB, RGB to
    gray with the ITU-R 601-2 luma L = 0.299 R + 0.587 G + 0.114 B rounded (the
    formula of Pillow's `convert("L")` in the folder loader, which rounds in fixed
    point: values may differ by 1)."""
    n = tf.shape(image)[-1]
    colour = n >= 3
    if channels == 3:
        rgb = tf.cond(colour, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
        return tf.ensure_shape(rgb, [None, None, 3])

    def luma():
        weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
        grey = tf.round(tf.reduce_sum(tf.cast(image[..., :3], tf.float32) * weights, axis=-1, keepdims=True))
        return tf.cast(tf.clip_by_value(grey, 0.0, 255.0), tf.uint8)

    return tf.ensure_shape(tf.cond(colour, luma, lambda: image[..., :1]), [None, None, 1])


def _verify_output(metric_model):
    """`distance` (same when below the threshold) or `score` (Koch's l1_sigmoid head: same when above)."""
    return "score" if getattr(metric_model, "head", None) == "l1_sigmoid" else "distance"


class _Embedder(tf.Module):
    """The traced serving functions around one encoder (or a metric model)."""

    def __init__(self, encoder, normalize=True, metric_model=None, threshold=None, classifier=None,
                 classifier_kind=None, num_classes=None):
        super().__init__()
        self.encoder = encoder
        self.metric_model = metric_model
        self.classifier = classifier
        self.classifier_kind = classifier_kind
        self.num_classes = num_classes
        _, self.height, self.width, self.channels = encoder.input_shape
        self.dim = int(encoder.output_shape[-1])
        if metric_model is not None:  # its embedding head may change the width
            self.dim = int(metric_model.embed(tf.zeros([1, self.height, self.width, self.channels])).shape[-1])
        if threshold is not None:
            self.threshold = tf.Variable(float(threshold), dtype=tf.float32, trainable=False, name="threshold")
        self.normalize = normalize

    def _raw_embedding(self, pixels):
        x = tf.cast(pixels, tf.float32) / 255.0
        if self.metric_model is not None:
            return tf.cast(self.metric_model.embed(x, training=False), tf.float32)
        return tf.cast(self.encoder(x, training=False), tf.float32)

    def _embed_uint8(self, pixels):
        """uint8 [B, H, W, C] at the encoder's size -> embedding [B, D]."""
        features = self._raw_embedding(pixels)
        return tf.math.l2_normalize(features, axis=-1) if self.normalize else features

    def _guarded(self, batch_size, compute):
        empty = tf.zeros([0, self.dim], tf.float32)
        return tf.cond(batch_size > 0, compute, lambda: empty)

    def embed_pixels(self, pixels):
        c = self.channels
        # A runtime check (the SignatureDef's shape is not enforced by TF Serving);
        # its error reads "Shape of tensor pixels [..] is not compatible with
        # expected shape [?,?,?,C]". (A tf.rank assert would be folded away.)
        pixels = tf.ensure_shape(pixels, [None, None, None, c])
        shape = tf.shape(pixels)

        def compute():
            with tf.control_dependencies([tf.debugging.assert_positive(
                    shape[1:3], message="embed_pixels: images must have height and width >= 1")]):
                resized = resize_uint8(pixels, self.height, self.width)
            return self._embed_uint8(resized)

        return {"embedding": self._guarded(shape[0], compute)}

    def _decode(self, images, name, size=None):
        """string [B] -> uint8 [B, H, W, C] (or at `size`), after checking every item is an image."""
        height, width = size or (self.height, self.width)
        valid = _is_image(images)
        check = tf.debugging.Assert(
            tf.reduce_all(valid),
            [f"{name}: these items are not PNG/JPEG/GIF/BMP/WebP images (indices):",
             tf.reshape(tf.where(tf.logical_not(valid)), [-1])])

        def decode(data):
            # channels=0: every format in its own channel count (asking GIF for 1 channel fails)
            img = tf.io.decode_image(data, channels=0, expand_animations=False)
            return resize_uint8(_to_channels(img, self.channels), height, width)

        with tf.control_dependencies([check]):
            return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(
                [height, width, self.channels], tf.uint8))

    def serving_default(self, images):
        images = tf.ensure_shape(images, [None])
        count = tf.shape(images)[0]
        return {"embedding": self._guarded(count, lambda: self._embed_uint8(self._decode(images, "serving_default")))}

    def _class_outputs(self, count, compute):
        probs = tf.cond(count > 0, lambda: tf.cast(compute(), tf.float32),
                        lambda: tf.zeros([0, self.num_classes], tf.float32))
        return {"probabilities": probs, "class": tf.argmax(probs, axis=-1, output_type=tf.int32)}

    def classify(self, images):
        """Encoded images -> `probabilities` of the rotation head or the linear
        probe, and the most likely `class`."""
        images = tf.ensure_shape(images, [None])

        def compute():
            x = tf.cast(self._decode(images, "classify"), tf.float32) / 255.0
            if self.classifier_kind == "rotation":
                return self.classifier.rotation_probabilities(x)
            return tf.nn.softmax(tf.cast(self.classifier.probe(self.encoder(x, training=False)), tf.float32))

        return self._class_outputs(tf.shape(images)[0], compute)

    def classify_position(self, centre, neighbour):
        """Encoded (centre, neighbour) patch pairs -> `probabilities` over the 8
        neighbour positions (resized to the training patch size first)."""
        centre = tf.ensure_shape(centre, [None])
        neighbour = tf.ensure_shape(neighbour, [None])
        count = tf.shape(centre)[0]
        same_count = tf.debugging.assert_equal(
            count, tf.shape(neighbour)[0], message="classify: centre and neighbour must hold the same number of patches")
        side = self.classifier.patch_size

        def compute():
            with tf.control_dependencies([same_count]):
                c = self._decode(centre, "classify", (side, side))
            n = self._decode(neighbour, "classify", (side, side))
            return self.classifier.position_probabilities(tf.cast(c, tf.float32) / 255.0,
                                                          tf.cast(n, tf.float32) / 255.0)

        with tf.control_dependencies([same_count]):
            return self._class_outputs(count, compute)

    def verify(self, images_a, images_b):
        """Two batches of encoded images -> pair score and the decision at the stored threshold."""
        images_a = tf.ensure_shape(images_a, [None])
        images_b = tf.ensure_shape(images_b, [None])
        count = tf.shape(images_a)[0]
        same_count = tf.debugging.assert_equal(
            count, tf.shape(images_b)[0], message="verify: images_a and images_b must hold the same number of images")
        model = self.metric_model
        key = _verify_output(model)

        def compute():
            with tf.control_dependencies([same_count]):
                e_a = self._raw_embedding(self._decode(images_a, "verify"))
            e_b = self._raw_embedding(self._decode(images_b, "verify"))
            score = tf.cast(model.pair_score(e_a, e_b), tf.float32)  # Siamese head / triplet: Euclidean
            same = score < self.threshold if key == "distance" else score >= self.threshold
            return score, same

        def empty():
            with tf.control_dependencies([same_count]):
                return tf.zeros([0], tf.float32), tf.zeros([0], tf.bool)

        score, same = tf.cond(count > 0, compute, empty)
        return {key: score, "same": same}


def _write_warmup(export_dir, embedder, classifier_kind, threshold):
    """One small request per signature into TF Serving's warmup file; the
    signature names written, or None without tensorflow-serving-api."""
    from keras_ssl.serving import serving_api_available, write_warmup

    if not serving_api_available():
        return None
    h, w, c = embedder.height, embedder.width, embedder.channels
    png = tf.io.encode_png(tf.zeros([h, w, c], tf.uint8)).numpy()
    requests = [("serving_default", {"images": [png]}),
                ("embed_pixels", {"pixels": tf.zeros([1, h, w, c], tf.uint8).numpy()})]
    if threshold is not None:
        requests.append(("verify", {"images_a": [png], "images_b": [png]}))
    if classifier_kind == "position":
        side = embedder.classifier.patch_size
        patch = tf.io.encode_png(tf.zeros([side, side, c], tf.uint8)).numpy()
        requests.append(("classify", {"centre": [patch], "neighbour": [patch]}))
    elif classifier_kind is not None:
        requests.append(("classify", {"images": [png]}))
    write_warmup(export_dir, requests)
    return [name for name, _ in requests]


def export_saved_model(encoder, export_root="saved_models", name="model", version=None, overwrite=False,
                       config=None, normalize=True, threshold=None, image_encoder=None, class_names=None,
                       warmup=True):
    """Exports `encoder` as a SavedModel under `export_root/name/version`; returns the path.

    Args:
      encoder: a Keras model, float images in [0, 1] `[B, H, W, C]` -> `[B, D]`;
        or a metric model (`Siamese`): its embedding is exported and a `verify`
        signature is added (`images_a`, `images_b` -> `distance` or `score`,
        and `same` at `threshold`, default the model's own).
      version: integer version; None picks the next free one.
      overwrite: replace an existing version (otherwise refused).
      config: JSON-serialisable run config stored in `assets.extra/config.json`.
      normalize: L2-normalise the embedding (the documented contract).
      image_encoder: the fixed-size encoder for the embedding signatures when
        the model's own is size-agnostic (RelativePosition trains on patches).
      class_names: names of the probe's classes, stored with the facts.
      warmup: write `assets.extra/tf_serving_warmup_requests` (one request
        per signature) when `tensorflow-serving-api` is installed.

    Models with a classification head also get one: RotationPrediction and
    SimCLR with an online probe `classify` (`images` -> `probabilities`,
    `class`); RelativePosition `classify` with `centre` and `neighbour`
    patches -> probabilities over the 8 neighbour positions.
    """
    if not name or os.sep in name or name.startswith("."):
        raise UserError(f"export name must be a plain folder name, got {name!r}")
    model_root = os.path.join(export_root, name)
    if version is None:
        version = next_version(model_root)
    if not isinstance(version, int) or version < 1:
        raise UserError(f"export version must be a positive integer, got {version!r}")
    final = os.path.join(model_root, str(version))
    if os.path.exists(final) and not overwrite:
        raise UserError(f"{final} already exists; pick another --version, omit it for the next free one, "
                        "or pass --overwrite")
    metric_model = classifier = classifier_kind = None
    num_classes = 0
    model = encoder
    if hasattr(model, "rotation_probabilities"):  # RotNet: embedding + classify (4 rotations)
        classifier, classifier_kind, num_classes, encoder = model, "rotation", 4, model.encoder
    elif hasattr(model, "position_probabilities"):  # relative position: + classify_position (8 neighbours)
        if model.patch_size is None:
            raise UserError("this RelativePosition model records no patch_size; rebuild it with patch_size=")
        classifier, classifier_kind, num_classes, encoder = model, "position", 8, model.encoder
    elif getattr(model, "probe", None) is not None:  # SimCLR with its online linear probe: + classify
        classifier, classifier_kind, encoder = model, "probe", model.encoder
        num_classes = int(model.probe.output_shape[-1])
    elif hasattr(model, "embed") and hasattr(model, "encoder"):  # a metric model: export its embedding
        metric_model, encoder = model, model.encoder
    elif isinstance(model, keras.Model) and isinstance(getattr(model, "encoder", None), keras.Model):
        encoder = model.encoder  # a method model without a head (SimCLR without its probe): its encoder
    if image_encoder is not None:
        encoder = image_encoder
    if metric_model is not None and (hasattr(metric_model, "threshold") or threshold is not None):  # + verify
        from keras_ssl.models.siamese import _check_threshold

        threshold = _check_threshold(getattr(metric_model, "threshold", None) if threshold is None else threshold)
    elif threshold is not None:
        raise UserError("a threshold only applies to metric models (Siamese, triplet) with a verify signature")
    if classifier_kind != "probe" or (class_names and len(class_names) != num_classes):
        class_names = None  # names of the dataset's classes: only the probe predicts those
    if len(encoder.input_shape) != 4 or None in encoder.input_shape[1:]:
        raise UserError(f"encoder input must be [batch, H, W, C] with known H, W, C; got {encoder.input_shape}")
    os.makedirs(model_root, exist_ok=True)
    tmp = os.path.join(model_root, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    embedder = _Embedder(encoder, normalize, metric_model, threshold, classifier, classifier_kind, num_classes)
    try:
        archive = keras.export.ExportArchive()
        archive.track(classifier or metric_model or encoder)
        archive.add_endpoint(
            "serving_default", embedder.serving_default,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        archive.add_endpoint(
            "embed_pixels", embedder.embed_pixels,
            input_signature=[tf.TensorSpec([None, None, None, embedder.channels], tf.uint8, name="pixels")])
        if classifier_kind == "position":
            archive.add_endpoint("classify", embedder.classify_position, input_signature=[
                tf.TensorSpec([None], tf.string, name="centre"), tf.TensorSpec([None], tf.string, name="neighbour")])
        elif classifier is not None:
            archive.add_endpoint("classify", embedder.classify,
                                 input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        if threshold is not None:
            archive.add_endpoint("verify", embedder.verify, input_signature=[
                tf.TensorSpec([None], tf.string, name="images_a"), tf.TensorSpec([None], tf.string, name="images_b")])
            archive.add_variable_collection("threshold", [embedder.threshold])
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        facts = {
            "signatures": {
                "serving_default": {"inputs": {"images": "string [batch] encoded PNG/JPEG/GIF/BMP/WebP"},
                                    "outputs": {"embedding": f"float32 [batch, {embedder.dim}]"}},
                "embed_pixels": {"inputs": {"pixels": f"uint8 [batch, H, W, {embedder.channels}]"},
                                 "outputs": {"embedding": f"float32 [batch, {embedder.dim}]"}},
            },
            "image_height": embedder.height, "image_width": embedder.width,
            "channels": embedder.channels, "embedding_dim": embedder.dim,
            "l2_normalized": normalize,
            "threshold": threshold,
            "preprocessing": "decode -> bilinear resize to HxW (rounded to uint8) if needed -> / 255",
        }
        if threshold is not None:
            key = _verify_output(metric_model)
            rule = "distance < threshold" if key == "distance" else "score >= threshold"
            facts["signatures"]["verify"] = {
                "inputs": {"images_a": "string [batch]", "images_b": "string [batch]"},
                "outputs": {key: "float32 [batch]", "same": f"bool [batch]: {rule}"}}
        if classifier is not None:
            meaning = {"rotation": "rotation by 0/90/180/270 degrees",
                       "position": "neighbour position 0-7 (row, column): (0,0) (0,1) (0,2) (1,0) (1,2) (2,0) (2,1) "
                                   "(2,2), the centre being (1,1)",
                       "probe": "the dataset's classes (online linear probe)"}[classifier_kind]
            inputs = ({"centre": f"string [batch] patches (resized to {classifier.patch_size} px)",
                       "neighbour": "string [batch]"} if classifier_kind == "position"
                      else {"images": "string [batch]"})
            facts["signatures"]["classify"] = {
                "inputs": inputs,
                "outputs": {"probabilities": f"float32 [batch, {num_classes}]: {meaning}", "class": "int32 [batch]"}}
            facts["class_names"] = list(class_names) if class_names else None
        facts["warmup_requests"] = _write_warmup(tmp, embedder, classifier_kind, threshold) if warmup else None
        with open(os.path.join(extra, "preprocessing.json"), "w") as f:
            json.dump(facts, f, indent=2)
        if config is not None:
            with open(os.path.join(extra, "config.json"), "w") as f:
                json.dump(config, f, indent=2, sort_keys=True, default=str)
        if os.path.exists(final):  # overwrite: swap in, then drop the old one
            old = os.path.join(model_root, f".old-{version}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
