"""One file per method; each a `MethodModel` subclass that registers itself.

Importing this package fills the registry (`keras_ssl.models.registry`);
`METHODS` lists the registered names in order.
"""

# Import order is registration order (the order of --method's choices).
from keras_ssl.models.simclr import SimCLR  # isort: skip
from keras_ssl.models.siamese import Siamese  # isort: skip
from keras_ssl.models.triplet import OnlineTriplet, TripletNetwork  # isort: skip
from keras_ssl.models.pretext import RelativePosition, RotationPrediction  # isort: skip
from keras_ssl.models.cpc import CPC  # isort: skip
from keras_ssl.models.cpc_image import ImageCPC  # isort: skip
from keras_ssl.models.vae import VAE  # isort: skip
from keras_ssl.models.vqvae import VQVAE  # isort: skip
from keras_ssl.models.vqvae_prior import VQVAEPrior  # isort: skip
from keras_ssl.models.vqvae_audio import VQVAEAudio  # isort: skip
from keras_ssl.models.gpt import GPT  # isort: skip  # noqa: F401
from keras_ssl.models.bert import BERT  # isort: skip  # noqa: F401
from keras_ssl.models.mae import MAE  # isort: skip  # noqa: F401
from keras_ssl.models.igpt import IGPT  # isort: skip  # noqa: F401
from keras_ssl.models.wav2vec2 import Wav2Vec2  # isort: skip  # noqa: F401
from keras_ssl.models.hubert import HuBERT  # isort: skip  # noqa: F401
from keras_ssl.models import registry  # isort: skip

METHODS = registry.names()

__all__ = ["SimCLR", "Siamese", "OnlineTriplet", "TripletNetwork", "RotationPrediction", "RelativePosition", "CPC",
           "ImageCPC", "VAE", "VQVAE", "VQVAEPrior", "VQVAEAudio", "MAE", "IGPT", "Wav2Vec2", "HuBERT", "METHODS",
           "registry"]
