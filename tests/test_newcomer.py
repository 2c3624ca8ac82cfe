"""What a newcomer meets in their first hour (issue 29): a refused `compile` that can
be recovered from, nothing ignored without a word, messages that say what happened."""

import numpy as np
import pytest

from keras_ssl.errors import UserError
from keras_ssl.models import registry
from keras_ssl.training import build_model, load_run_dataset, method_data, training_split
from tests.helpers import smoke_config


@pytest.mark.parametrize("method_name", registry.names())
def test_a_refused_compile_is_refused_at_once_and_can_be_redone(method_name, tmp_path):
    config = smoke_config(method_name, tmp_path)
    dataset = load_run_dataset(config)
    data = method_data(config, training_split(config, dataset)[0]).dataset
    model = build_model(config, dataset)
    names = ", ".join(m.name for m in model.metrics)
    for wrong, shown in (({"loss": "mse"}, "not loss="), ({"metrics": ["accuracy"]}, "not metrics="),
                         ({"loss": "mse", "weighted_metrics": ["mae"]}, "not loss=, weighted_metrics=")):
        with pytest.raises(UserError, match=rf"computes its own loss and metrics \({names}\); .*{shown}$"):
            model.compile(optimizer="adam", **wrong)
    # what the message advises, and the explicit Nones a user may write, both work now
    model.compile(optimizer="adam", loss=None, metrics=None)
    model.compile(optimizer="adam")
    history = model.fit(data, steps_per_epoch=1, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]), history
