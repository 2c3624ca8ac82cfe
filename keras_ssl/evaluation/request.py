"""What `keras-ssl-evaluate` was asked for, handed to a modality's evaluation."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
    """The evaluator's settings (the flags of `keras-ssl-evaluate`).

    `output_dir`: where `evaluation.json` and the plots go (the run directory);
    `layers`: extra probe points; `plot`: "tsne", "pca" or None; `probe_max_iter`:
    logistic-regression iterations; `train_limit`: fit the probes on the first N
    training examples only; `grid_reading`: the spatially pooled reading of an image
    encoder reported as `grid_*` ("auto": the last map over 2x2 regions; None: none; or
    e.g. "block2:grid3", `keras_ssl.evaluation.evaluate_encoder`)."""

    output_dir: str | None = None
    layers: tuple = ()
    plot: str | None = "tsne"
    probe_max_iter: int = 1000
    train_limit: int | None = None
    grid_reading: str | None = "auto"

    def __post_init__(self):
        from keras_ssl.evaluation.classification import check_grid_reading

        object.__setattr__(self, "grid_reading", check_grid_reading(self.grid_reading))  # "none" -> None
