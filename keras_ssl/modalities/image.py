"""Images: uint8 HWC arrays (grayscale or RGB) from `fashion_mnist`, `digits`,
`tfds:NAME` and `folder:PATH` of PNG/JPEG files (`keras_ssl.data.sources`), the
image encoders of `keras_ssl.encoders`, a linear probe and kNN as the default
evaluation (`keras_ssl.evaluation.classification`)."""

import dataclasses
import os

from keras_ssl.data.augment import PRESETS
from keras_ssl.encoders import ENCODERS
from keras_ssl.errors import UserError
from keras_ssl.modalities.base import Modality, register
from keras_ssl.modalities.input_kinds import InputKind, register_input_kind
from keras_ssl.options import option

NO_AUGMENTATION = "none"


@dataclasses.dataclass
class ImageSettings:
    """The run settings of image methods (flags `--image_size` ... `--augment`).

    Sources of the defaults: images at their native size and channels (what the
    dataset holds); `cifar_stem=True` is SimCLR's CIFAR-10 ResNet variant
    (Chen et al. 2020, B.9: a 3x3 stride-1 stem, no max-pool), the right one for
    images of 32 px and less; `augment="fashion_mnist"` is our preset for 28x28
    grayscale images (SimCLR's recipe with crops of at least 20% of the area, no
    colour jitter; measured in `keras_ssl.data.augment`).
    """

    image_size: int | None = option(None, "resize images to this square size (default: native)",
                                    check=lambda v: v >= 8, requirement=">= 8")
    channels: int | None = option(None, "convert images to 1 (gray) or 3 (RGB) channels (default: native)",
                                  check=lambda v: v in (1, 3), requirement="1 or 3")
    cifar_stem: bool = option(True, "ResNet: 3x3 stride-1 stem, no max-pool (SimCLR's CIFAR-10 variant)")
    augment: str = option("fashion_mnist", "augmentation preset (keras_ssl.data.augment.PRESETS); none: no "
                          "augmentation, refused by methods whose views need one (simclr)",
                          choices=(*PRESETS, NO_AUGMENTATION))

    @property
    def augment_preset(self):
        """The preset name the batch builders take: None for `augment="none"`."""
        return None if self.augment == NO_AUGMENTATION else self.augment


class ImageModality(Modality):
    name = "image"
    unit = "images"
    encoders = ENCODERS
    default_encoder = "small_cnn"  # 280k parameters: trains in minutes on a laptop CPU
    folder_fallback = True  # a folder is images unless another modality recognises its files
    settings = ImageSettings

    def check_run(self, config):
        method = config.method_spec
        if method.requires_augmentation and config.settings.augment == NO_AUGMENTATION:
            choices = ", ".join(PRESETS)
            raise UserError(f"augment must be one of {choices} for method {method.name} (its views need "
                            f"augmentation; --augment={NO_AUGMENTATION} is refused)")

    input_rank = 4

    def check_batch(self, model, shape, dtype):
        """Image batches `[batch, H, W, C]` (uint8, or float in [0, 1]) with the encoder's channels."""
        import tensorflow as tf

        name = type(model).__name__
        if shape.rank != 4:
            hint = "; grayscale images need a channel axis: images[..., None]" if shape.rank == 3 else ""
            raise UserError(f"{name} expects image batches [batch, H, W, C], got shape {shape}{hint}")
        if not (dtype == tf.uint8 or dtype.is_floating):  # other integers would be read as [0, 1] floats
            raise UserError(f"{name} takes uint8 images (0-255) or floats in [0, 1], got {dtype.name}; "
                            "cast 0-255 pixels with images.astype('uint8')")
        channels = getattr(getattr(model, "encoder", None), "input_shape", (None,))[-1]
        if channels is not None and shape[-1] is not None and shape[-1] != channels:
            raise UserError(f"{name}'s encoder takes {channels}-channel images, got {shape[-1]} channels "
                            f"(shape {shape})")

    def as_model_input(self, batch):
        from keras_ssl.data.augment import to_float01

        return to_float01(batch)

    def embedding_endpoints(self, embed, dim):
        from keras_ssl.models.endpoints import embedding_endpoints

        return embedding_endpoints(embed, dim)  # serving_default (encoded images), embed_pixels

    def load_folder(self, spec, on_corrupt="skip", image_size=None, channels=None, **others):
        from keras_ssl.data.sources import load_folder

        return load_folder(spec, image_size, channels, on_corrupt)

    def load_tfds(self, name, builder, train_split, test_split, **settings):
        from keras_ssl.data.sources import load_tfds_images

        return load_tfds_images(name, builder, train_split, test_split)  # resized by `converted`

    def converted(self, dataset, image_size=None, channels=None, **others):
        from keras_ssl.data.sources import convert_images

        return convert_images(dataset, image_size, channels)

    def load_run_dataset(self, config, dataset=None, data_dir=None, input_shape=None):
        from keras_ssl.data import load_source

        if input_shape is not None:  # the size and channels the kept encoder takes
            image_size, channels = tuple(input_shape[:2]), input_shape[2]
        else:
            side = config.settings.image_size
            image_size = (side, side) if side else None
            channels = config.settings.channels
        return load_source(dataset or config.dataset, data_dir or config.data_dir, image_size, channels)

    def examples(self, split):
        return split.images

    def describe_examples(self, dataset, count):
        return f"{count:,} images {'x'.join(str(d) for d in dataset.image_shape)}"

    def build_encoder(self, config, dataset, size_agnostic=False):
        from keras_ssl.encoders import build_encoder

        shape = dataset.image_shape
        if size_agnostic:  # trains on patches
            shape = (None, None, shape[-1])
        return build_encoder(config.encoder, shape, config.width_multiplier, config.settings.cifar_stem)

    def encoder_to_keep(self, config, encoder, dataset):
        """At the dataset's image size: a size-agnostic patch encoder's weights are
        copied into a fixed-size one, which evaluation and export need."""
        from keras_ssl.encoders import build_encoder
        from keras_ssl.layers import with_keras_batch_norm

        if encoder.input_shape[1] is not None:
            return with_keras_batch_norm(encoder)
        fixed = build_encoder(config.encoder, dataset.image_shape, config.width_multiplier, config.settings.cifar_stem,
                              sync_bn=False)
        fixed.set_weights(encoder.get_weights())
        return with_keras_batch_norm(fixed)

    def serving_input_shape(self, config, model_dir):
        from keras_ssl.saving import load_model

        return tuple(load_model(os.path.join(model_dir, "encoder.keras")).input_shape[1:])  # the size training kept

    def check_request(self, request):
        """Every evaluator setting applies to images (an unknown block is refused by the probe)."""

    def evaluate_labelled(self, config, model, model_dir, dataset, request):
        """Linear probe and kNN of the kept encoder's features (and `request.layers`), plot."""
        from keras_ssl.evaluation import evaluate_encoder
        from keras_ssl.saving import load_model

        encoder = load_model(os.path.join(model_dir, "encoder.keras"))
        return evaluate_encoder(encoder, dataset, request.output_dir, layers=list(request.layers), plot=request.plot,
                                probe_max_iter=request.probe_max_iter, train_limit=request.train_limit,
                                write_report=False, grid_reading=request.grid_reading)

    def unlabelled_features(self, model, encoder, split):
        from keras_ssl.evaluation.classification import extract_features

        return extract_features(encoder, split)  # the kept encoder's, as the probe reads them

    def neighbours_plot(self, split, features, path):
        import numpy as np

        from keras_ssl.evaluation.retrieval import retrieval_grid

        normalised = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-12)
        return retrieval_grid(split.images, normalised, None, path)

    def smoke_dataset(self, root):
        return {"dataset": "digits"}  # scikit-learn's 8x8 digits: in memory, no files

    def serving_facts(self, input_shape):
        return {"image_height": input_shape[0], "image_width": input_shape[1], "channels": input_shape[2],
                "preprocessing": "decode -> convert to C channels -> bilinear resize to HxW (rounded to uint8) "
                                 "-> / 255"}


def _model_size(input_shape, size):
    """(height, width) an input is resized to: its own `size`, else the model's."""
    return tuple(size or input_shape[:2])


def _as_model_input(pixels, input_shape, size):
    """uint8 pixels -> float32 [B, h, w, C] in [0, 1] at the input's size (the loader's resize)."""
    import tensorflow as tf

    from keras_ssl.data.sources import resize_uint8

    height, width = _model_size(input_shape, size)
    return tf.cast(resize_uint8(tf.constant(pixels), height, width), tf.float32) / 255.0


class EncodedImages(InputKind):
    """`image`: tf.string `[batch]` of encoded PNG/JPEG/GIF/BMP/WebP files (what TF Serving's
    REST API sends as `{"b64": ...}`), decoded in the file's own channel count, converted
    to the model's, resized and scaled to [0, 1] (`keras_ssl.modalities.image_codec`)."""

    name, modality, encoded = "image", "image", True

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.string, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        from keras_ssl.modalities.image_codec import decode_images

        height, width = _model_size(input_shape, serving_input.size)
        return tf.cast(decode_images(tensor, endpoint_name, height, width, input_shape[-1]), tf.float32) / 255.0

    def describe(self, input_shape, serving_input):
        from keras_ssl.modalities.image_codec import MAX_PIXELS

        size = serving_input.size
        resized = f" (resized to {size[0]}x{size[1]})" if size else ""
        return f"string [batch] encoded PNG/JPEG/GIF/BMP/WebP, at most {MAX_PIXELS // 1_000_000} megapixels{resized}"

    def warmup_value(self, input_shape, serving_input):
        import tensorflow as tf

        height, width = _model_size(input_shape, serving_input.size)
        return [tf.io.encode_png(tf.zeros([height, width, input_shape[-1]], tf.uint8)).numpy()]

    def request_value(self, examples, input_shape, serving_input):
        import tensorflow as tf

        return [tf.io.encode_png(image).numpy() for image in examples]

    def function_input(self, examples, input_shape, serving_input):
        return _as_model_input(examples, input_shape, serving_input.size)

    def bad_value(self, examples, input_shape, serving_input):
        return [self.request_value(examples[:1], input_shape, serving_input)[0], b"garbage!"]


class Pixels(InputKind):
    """`pixels`: uint8 `[batch, h, w, C]` of any size, resized to the model's and scaled."""

    name, modality = "pixels", "image"

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None, None, None, input_shape[-1]], tf.uint8, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        from keras_ssl.modalities.image_codec import resize_pixels

        height, width = _model_size(input_shape, serving_input.size)
        return tf.cast(resize_pixels(tensor, endpoint_name, height, width), tf.float32) / 255.0

    def describe(self, input_shape, serving_input):
        return f"uint8 [batch, H, W, {input_shape[-1]}] (any H, W >= 1)"

    def warmup_value(self, input_shape, serving_input):
        import numpy as np

        height, width = _model_size(input_shape, serving_input.size)
        return np.zeros([1, height, width, input_shape[-1]], np.uint8)

    def request_value(self, examples, input_shape, serving_input):
        return examples

    def function_input(self, examples, input_shape, serving_input):
        return _as_model_input(examples, input_shape, serving_input.size)

    def bad_value(self, examples, input_shape, serving_input):
        import numpy as np

        return np.zeros([2, 8, 8, input_shape[-1] + 1], np.uint8)  # one channel too many


register(ImageModality())
register_input_kind(EncodedImages())
register_input_kind(Pixels())
