"""Text: UTF-8 strings from `text:PATH`, `fortunes` and `tfds:` text sets
(`keras_ssl.data.text`), tokenized by a byte-level BPE trained on the run's training
split (`keras_ssl.byte_pair`), the Transformer encoders of `keras_ssl.text_encoders`,
and linear probes of every layer (trained and untrained), kNN and a TF-IDF baseline as the
default evaluation.

A text method's model takes int32 token ids `[batch, sequence_length]` (`PAD_ID` = 0
after the text); its run's tokenizer is a prepared artefact: the method declares

    register(Method(..., modality="text", prepare=prepare_tokenizer, preprocessor=run_tokenizer_layer))

so the tokenizer is trained once, before the first epoch, on the training split
(`--vocabulary_size` tokens), saved in the run directory (`prepared.npz`, the merges),
reused on resume, handed to `build`/`training_data` as `stage.preprocessor`, kept in
the model's config (`model.keras`) and exported as SavedModel assets, where the
`text` serving input tokenizes raw strings in the graph.
"""

import dataclasses

import numpy as np

from keras_ssl import byte_pair  # noqa: F401  (registers BytePairTokenizer with Keras: a text model's tokenizer)
from keras_ssl.errors import UserError
from keras_ssl.modalities.base import Modality, register
from keras_ssl.options import option
from keras_ssl.text_encoders import TEXT_ENCODERS

# Sources of the defaults: 128 tokens hold 90% of the fortunes whole (median 32 tokens with
# a 4,096-token vocabulary; measured), and GPT-1's 512 is beyond a 2-core CPU; 4,096 tokens
# (3,835 merges) is what 2.5 MB of English supports with every merge seen >= 2 times.
DEFAULT_SEQUENCE_LENGTH = 128
DEFAULT_VOCABULARY_SIZE = 4096


@dataclasses.dataclass
class TextSettings:
    """The run settings of text methods (flags `--sequence_length`, `--vocabulary_size`);
    the sources of the defaults are beside `DEFAULT_SEQUENCE_LENGTH`."""

    sequence_length: int = option(DEFAULT_SEQUENCE_LENGTH, "token ids per text, [BOS] and [EOS] included: longer "
                                  "texts are cut, shorter padded with [PAD]",
                                  check=lambda v: 4 <= v <= 4096, requirement="in [4, 4096]")
    vocabulary_size: int = option(DEFAULT_VOCABULARY_SIZE, "byte-pair vocabulary size (5 special tokens, 256 "
                                  "bytes, then merges learned on the training split)",
                                  check=lambda v: 261 <= v <= 1 << 20, requirement="in [261, 1048576]")


def prepare_tokenizer(run, options, split, parent=None):
    """The `prepare` step of a text method: byte-pair merges learned on the training
    split's texts (`keras_ssl.byte_pair.train_byte_pair`, `--vocabulary_size`)."""
    from keras_ssl.byte_pair import train_byte_pair

    return {"bpe_merges": train_byte_pair(split.texts, run.settings.vocabulary_size),
            "sequence_length": np.asarray(run.settings.sequence_length, np.int32)}


def run_tokenizer_layer(artefacts):
    """The `preprocessor` of a text method: the `BytePairTokenizer` of the prepared merges,
    framing each text with [BOS] ... [EOS] in `sequence_length` ids."""
    from keras_ssl.byte_pair import BytePairTokenizer

    return BytePairTokenizer(artefacts["bpe_merges"], int(artefacts["sequence_length"]), add_ends=True)


def run_tokenizer(config):
    """The tokenizer a finished (or started) run prepared, or None before it has one."""
    from keras_ssl.stages import stored_artefacts

    if not config.model_dir or config.method_spec.preprocessor is None:
        return None
    artefacts = stored_artefacts(config)
    return None if artefacts is None else config.method_spec.preprocessor(artefacts)


def batched(function, ids, batch_size=256):
    """`function(ids)` over int ids `[N, L]` in batches -> float32 `[N, D]`."""
    import tensorflow as tf

    fn = tf.function(lambda x: tf.cast(function(x), tf.float32), reduce_retracing=True)
    parts = [fn(tf.constant(ids[i:i + batch_size])).numpy() for i in range(0, len(ids), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def layer_features(encoder, ids, batch_size=256):
    """`{point: float32 [N, D]}` of a text encoder on int ids `[N, L]`: the mean-pooled
    token embedding, block outputs and representation (`keras_ssl.models.text_model.
    text_layer_features`), in batches."""
    import tensorflow as tf

    from keras_ssl.models.text_model import text_layer_features

    fn = tf.function(lambda x: text_layer_features(encoder, x), reduce_retracing=True)
    parts = [{k: v.numpy() for k, v in fn(tf.constant(ids[i:i + batch_size])).items()}
             for i in range(0, len(ids), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def tfidf_probe(train_texts, train_labels, test_texts, test_labels, max_iter=1000):
    """The bag-of-words baseline: accuracy of a logistic regression on TF-IDF word uni-
    and bigrams (scikit-learn's `TfidfVectorizer`, sublinear tf, at most 50,000 terms)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50000)
    train_x = vectorizer.fit_transform(list(train_texts))
    classifier = LogisticRegression(max_iter=max_iter).fit(train_x, train_labels)
    return float(np.mean(classifier.predict(vectorizer.transform(list(test_texts))) == test_labels))


class TextModality(Modality):
    name = "text"
    unit = "texts"
    encoders = TEXT_ENCODERS
    default_encoder = "transformer_small"  # 4 layers x 256, 4 heads: keras_ssl.text_encoders
    settings = TextSettings
    named_sources = ("text:PATH", "fortunes")

    # -- data ------------------------------------------------------------------

    def recognises_name(self, spec):
        return spec == "fortunes" or spec.startswith("text:")

    def load_named(self, spec, data_dir=None, on_corrupt="skip", **others):
        from keras_ssl.data.text import load_fortunes, load_text

        return load_fortunes(data_dir) if spec == "fortunes" else load_text(spec, on_corrupt)

    def recognises_tfds(self, builder, tfds):
        from keras_ssl.data.text import is_text_builder

        return is_text_builder(builder, tfds)

    def load_tfds(self, name, builder, train_split, test_split, **others):
        from keras_ssl.data.text import load_tfds_text

        return load_tfds_text(name, builder, train_split, test_split)

    def load_run_dataset(self, config, dataset=None, data_dir=None, input_shape=None):
        """The run's texts, tokenized by the run's tokenizer once it has one (after its
        prepare step: evaluation, export, a resumed run)."""
        from keras_ssl.data import load_source

        loaded = load_source(dataset or config.dataset, data_dir or config.data_dir)
        if getattr(loaded, "modality", None) != self.name:
            return loaded  # refused by the run's modality check, in one line
        tokenizer = run_tokenizer(config)
        return loaded if tokenizer is None else loaded.tokenized(tokenizer)

    def examples(self, split):
        if split.ids is None:
            raise UserError("text examples are token ids: tokenize the texts first (dataset.tokenized(tokenizer), "
                            "e.g. a run's keras_ssl.modalities.text.run_tokenizer(config))")
        return split.ids

    def describe_examples(self, dataset, count):
        texts = dataset.train.texts
        mean = np.mean([len(t.encode("utf-8")) for t in texts]) if len(texts) else 0
        return f"{count:,} texts of {mean:.0f} bytes on average"

    # -- model inputs ------------------------------------------------------------

    input_rank = 2

    def check_batch(self, model, shape, dtype):
        """Batches of int token ids `[batch, length]` (int32 or int64)."""
        name = type(model).__name__
        if shape.rank != 2:
            raise UserError(f"{name} expects token id batches [batch, length], got shape {shape}; tokenize text "
                            "with the model's tokenizer: model.tokenizer(texts)")
        if dtype.name not in ("int32", "int64"):
            raise UserError(f"{name} takes int32 token ids, got {dtype.name}; tokenize text with model.tokenizer")

    def as_model_input(self, batch):
        import tensorflow as tf

        return tf.cast(batch, tf.int32)

    def zero_input(self, input_shape):
        import tensorflow as tf

        return tf.zeros([1, *input_shape], tf.int32)  # all padding

    def embedding_endpoints(self, embed, dim, tokenizer=None):
        """`serving_default`: UTF-8 strings (tokenized in the graph by `tokenizer`) ->
        `embedding`; `embed_tokens`: int64 ids `[batch, sequence_length]` -> the same."""
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        if tokenizer is None:
            raise ValueError("a text model serves through its tokenizer: embedding_endpoints(embed, dim, tokenizer)")
        outputs = (ServingOutput("embedding", "float32", (dim,), "the mean over the text's tokens, L2-normalised"),)

        def function(ids):
            return {"embedding": embed(ids)}

        return [Endpoint("serving_default", (ServingInput("text", "text", tokenizer=tokenizer),), outputs, function),
                Endpoint("embed_tokens", (ServingInput("tokens", "tokens", shape=(tokenizer.sequence_length,),
                                                       vocabulary_size=tokenizer.vocabulary_size()),),
                         outputs, function)]

    # -- models ----------------------------------------------------------------

    def build_encoder(self, config, dataset, size_agnostic=False):
        from keras_ssl.text_encoders import build_text_encoder

        return build_text_encoder(config.encoder, config.settings.vocabulary_size, config.settings.sequence_length,
                                  config.width_multiplier)

    def encoder_to_keep(self, config, encoder, dataset):
        return encoder  # Keras layers and three keras_ssl ones: loads after `import keras_ssl`

    def serving_input_shape(self, config, model_dir):
        return (config.settings.sequence_length,)

    # -- evaluation ----------------------------------------------------------------

    def evaluate_labelled(self, config, model, model_dir, dataset, request):
        """Linear probes of the category on the frozen, mean-pooled features of every layer
        (the token embedding, each block's output, the pooled representation; scikit-learn's
        logistic regression, `keras_ssl.evaluation.classification.linear_probe`) of the
        model and of the same network untrained (rebuilt with seed 0, as the audio modality
        does), kNN of the representation, a TF-IDF logistic regression on the same texts,
        plot. Top-level keys are the representation's (`linear_probe_accuracy`, ...);
        `layer_probes` holds `{point: {"trained", "untrained"}}`."""
        import os

        import keras

        from keras_ssl.evaluation.classification import embedding_plot, evaluate_features, linear_probe
        from keras_ssl.run_setup import build_model

        train, test = dataset.train.take(request.train_limit), dataset.test
        train_x = batched(model.representation, self.examples(train))
        test_x = batched(model.representation, self.examples(test))
        results = evaluate_features(train_x, train.labels, test_x, test.labels, dataset.num_classes,
                                    probe_max_iter=request.probe_max_iter)
        results["feature_dim"] = int(train_x.shape[1])
        keras.utils.set_random_seed(0)
        untrained = build_model(config, dataset) if config is not None else None
        layers = {}
        for name, network in (("trained", model), ("untrained", untrained)):
            if network is None or not hasattr(network, "encoder"):
                continue
            train_f = layer_features(network.encoder, self.examples(train))
            test_f = layer_features(network.encoder, self.examples(test))
            for point in train_f:
                if name == "trained" and point == "pooled":  # the representation: probed above
                    layers.setdefault(point, {})[name] = results["linear_probe_accuracy"]
                    continue
                layers.setdefault(point, {})[name] = linear_probe(train_f[point], train.labels, test_f[point],
                                                                  test.labels, request.probe_max_iter)
        results["layer_probes"] = layers
        if "pooled" in layers and "untrained" in layers["pooled"]:
            results["untrained_linear_probe_accuracy"] = layers["pooled"]["untrained"]
        results["tfidf_probe_accuracy"] = tfidf_probe(train.texts, train.labels, test.texts, test.labels,
                                                      request.probe_max_iter)
        if request.output_dir and request.plot:
            results["embedding_plot"] = embedding_plot(test_x, test.labels,
                                                       os.path.join(request.output_dir, "embedding.png"),
                                                       dataset.class_names, method=request.plot)
        return results

    def format_report(self, results):
        """One table: the probe of each layer, trained and untrained, the TF-IDF baseline
        and the kNN (the run report adds the method's own figures below)."""
        def percent(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        rows = [("linear probe of the category", "trained", "untrained")]
        for point, scores in results.get("layer_probes", {}).items():
            label = "pooled (the representation)" if point == "pooled" else f"{point} (mean over tokens)"
            rows.append((f"  {label}", percent(scores.get("trained")), percent(scores.get("untrained"))))
        if not results.get("layer_probes"):
            rows.append(("  representation", percent(results.get("linear_probe_accuracy")), "-"))
        rows.append(("TF-IDF logistic regression", percent(results.get("tfidf_probe_accuracy")), ""))
        if "knn_accuracy_k20" in results:
            rows.append(("kNN k=20 (representation)", percent(results["knn_accuracy_k20"]), ""))
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>9}  {c:>9}".rstrip() for a, b, c in rows]
        lines.insert(1, "-" * (width + 22))
        return "\n".join(lines)

    def unlabelled_features(self, model, encoder, split):
        return batched(model.representation, self.examples(split))

    def smoke_dataset(self, root):
        from keras_ssl.data.text import write_smoke_texts

        return {"dataset": "text:" + write_smoke_texts(root)}

    def serving_facts(self, input_shape):
        return {"sequence_length": input_shape[0],
                "preprocessing": "UTF-8 text -> byte-level BPE in the graph (assets/merges.txt) -> [BOS] ids [EOS], "
                                 f"padded with [PAD] (0) or cut to {input_shape[0]} ids"}


register(TextModality())
