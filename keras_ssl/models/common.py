"""What the method models share, importable here by the names it has always had:
the base `MethodModel` (`keras_ssl.models.method_model`) and its online probe
(`keras_ssl.models.online_probe`); the step's batch helpers `split_data`,
`global_batch_size` and `classification_loss` (`keras_ssl.models.global_batch`);
the metric-learning base `MetricModel`, `embed_images` and `check_threshold`
(`keras_ssl.models.metric_model`)."""

from keras_ssl.models.global_batch import classification_loss, global_batch_size, split_data
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.metric_model import MetricModel, check_threshold, embed_images
from keras_ssl.models.online_probe import OnlineProbe

__all__ = ["MethodModel", "MetricModel", "OnlineProbe", "split_data", "global_batch_size", "classification_loss",
           "embed_images", "check_threshold"]
