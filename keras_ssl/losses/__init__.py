"""Losses of keras_ssl: pure functions plus thin `keras.losses.Loss` wrappers.

Each function's docstring gives its formula and source; tests check each
against an independent NumPy computation. Every loss computes in
float32 whatever the compute dtype (mixed precision safe).

By family, one module each (every name is importable from here):

    replicas           gather_across_replicas
    predictive_coding  info_nce_terms, info_nce; CPC's cpc_negative_rows, cpc_info_nce_terms
    simclr             nt_xent_terms, nt_xent, NTXent
    metric_learning    contrastive_terms, contrastive, triplet, pairwise_squared_distances,
                       batch_triplet_terms, batch_triplet, Contrastive, BatchTriplet
                       (NEGATIVE_HINGES, MINING: their allowed values)
    generative         gaussian_kl (VAE), vector_quantize (VQ-VAE), discretized_logistic_nll,
                       bits_per_dim (likelihoods of 8-bit images)
    wav2vec2           wav2vec2_contrastive_terms, sample_distractors, contrastive_valid,
                       codebook_diversity, codebook_perplexity (wav2vec 2.0)
    hubert             hubert_logits, hubert_cross_entropy_terms, hubert_loss (HuBERT's masked
                       prediction of cluster ids)
"""

from keras_ssl.losses.generative import bits_per_dim, discretized_logistic_nll, gaussian_kl, vector_quantize
from keras_ssl.losses.hubert import hubert_cross_entropy_terms, hubert_logits, hubert_loss
from keras_ssl.losses.metric_learning import (MINING, NEGATIVE_HINGES, BatchTriplet, Contrastive, batch_triplet,
                                              batch_triplet_terms, contrastive, contrastive_terms,
                                              multi_similarity_terms, pairwise_squared_distances, triplet)
from keras_ssl.losses.predictive_coding import cpc_info_nce_terms, cpc_negative_rows, info_nce, info_nce_terms
from keras_ssl.losses.replicas import gather_across_replicas
from keras_ssl.losses.simclr import NTXent, nt_xent, nt_xent_terms
from keras_ssl.losses.wav2vec2 import (codebook_diversity, codebook_perplexity, contrastive_valid, sample_distractors,
                                       wav2vec2_contrastive_terms)

__all__ = ["gather_across_replicas", "info_nce_terms", "info_nce", "cpc_negative_rows", "cpc_info_nce_terms",
           "nt_xent_terms", "nt_xent", "NTXent", "NEGATIVE_HINGES", "MINING", "contrastive_terms", "contrastive",
           "triplet", "pairwise_squared_distances", "batch_triplet_terms", "batch_triplet", "Contrastive",
           "BatchTriplet", "gaussian_kl", "vector_quantize",
           "discretized_logistic_nll", "bits_per_dim", "wav2vec2_contrastive_terms", "sample_distractors",
           "contrastive_valid", "codebook_diversity", "codebook_perplexity", "hubert_logits",
           "hubert_cross_entropy_terms", "hubert_loss"]
