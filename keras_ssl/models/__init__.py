"""One file per method; each a `keras.Model` subclass with train/test steps."""

from keras_ssl.models.pretext import RelativePosition, RotationPrediction
from keras_ssl.models.siamese import Siamese
from keras_ssl.models.simclr import SimCLR
from keras_ssl.models.triplet import OnlineTriplet, TripletNetwork

# Methods the training binary can run.
METHODS = ("simclr", "siamese", "triplet", "triplet_explicit", "rotation", "relative_position")

__all__ = ["SimCLR", "Siamese", "OnlineTriplet", "TripletNetwork", "RotationPrediction", "RelativePosition",
           "METHODS"]
