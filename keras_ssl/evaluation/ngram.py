"""An interpolated Kneser-Ney n-gram model of token ids: the baseline a language model's
perplexity is judged against (Kneser & Ney 1995; the interpolated form of Chen & Goodman
1999, section 3.5), in plain Python.

A text is its ids `[BOS] t_1 ... t_n [EOS]` ([PAD] dropped); every token after the first is
predicted from the `order - 1` before it, the text left-padded with [BOS] so that each has
a full context (GPT's perplexity predicts the same tokens). With `c(h w)` the count of the
n-gram `h w` in the training texts, `N(h .)` the number of distinct tokens seen after `h`
and `h'` the context without its first token:

    P_n(w | h) = max(c(h w) - D_n, 0) / c(h .) + D_n N(h .) / c(h .) P_{n-1}(w | h')

at the highest order, and the same at each lower order k with the *continuation* count
`c_k(h w) = N(. h w)` (the number of distinct tokens seen before `h w`) in place of the
count; `P_0(w) = 1 / V` (uniform over the vocabulary), and a context never seen
(`c(h .) = 0`) gives `P_{k-1}(w | h')`. Each order's discount is Ney et al. (1994)'s
estimate `D_k = n_1 / (n_1 + 2 n_2)` (n_1, n_2: how many k-grams have count 1 and 2 at
that order), unless given. Every `P(. | h)` sums to 1 over the V tokens (tested).
"""

import collections
import math

import numpy as np

from keras_ssl.tokenizers import BOS_ID, PAD_ID

DEFAULT_ORDER = 3  # trigrams: enough context for BPE pieces of words at 0.5 M training tokens


def _texts(ids):
    """Lists of ids without [PAD] from int `[N, L]` ids (or an iterable of sequences)."""
    for row in ids:
        row = np.asarray(row)
        yield [int(t) for t in row[row != PAD_ID]]


class KneserNey:
    """An interpolated Kneser-Ney model of `order` over `vocabulary_size` tokens; see the
    module docstring. `fit(ids)`, then `probability(context, token)` or
    `log_likelihood(ids)`."""

    def __init__(self, vocabulary_size, order=DEFAULT_ORDER, discount=None):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.vocabulary_size, self.order = int(vocabulary_size), int(order)
        self.fixed_discount = discount
        self.counts = {}  # order k -> {context (k-1 ids): Counter(token -> count)}
        self.discounts = {}

    def _ngrams(self, ids):
        pad = [BOS_ID] * (self.order - 2) if self.order > 1 else []
        for text in _texts(ids):
            padded = pad + text
            for i in range(len(pad) + 1, len(padded)):
                yield tuple(padded[i - self.order + 1:i + 1]) if self.order > 1 else (padded[i],)

    def fit(self, ids):
        """Counts of int ids `[N, L]` (or sequences); returns self."""
        top = collections.Counter(self._ngrams(ids))
        levels = {self.order: top}
        for k in range(self.order - 1, 0, -1):  # continuation counts: distinct left neighbours of each k-gram
            levels[k] = collections.Counter(gram[1:] for gram in levels[k + 1])
        for k, grams in levels.items():
            table = collections.defaultdict(collections.Counter)
            for gram, n in grams.items():
                table[gram[:-1]][gram[-1]] = n
            self.counts[k] = {h: (c, sum(c.values())) for h, c in table.items()}
            if self.fixed_discount is not None:
                self.discounts[k] = float(self.fixed_discount)
            else:
                values = collections.Counter(grams.values())
                n1, n2 = values.get(1, 0), values.get(2, 0)
                self.discounts[k] = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        return self

    def probability(self, context, token):
        """P(token | the last order-1 ids of context) (context shorter: left-padded with [BOS])."""
        context = tuple(int(t) for t in context)
        context = ((BOS_ID,) * self.order + context)[-(self.order - 1):] if self.order > 1 else ()
        return self._p(self.order, context, int(token))

    def _p(self, k, context, token):
        if k == 0:
            return 1.0 / self.vocabulary_size
        lower = self._p(k - 1, context[1:], token)
        seen = self.counts[k].get(context)
        if seen is None:
            return lower
        counter, total = seen
        d = self.discounts[k]
        return max(counter.get(token, 0) - d, 0.0) / total + d * len(counter) / total * lower

    def log_likelihood(self, ids):
        """`(sum of -ln P over every predicted token, number of tokens)` of int ids `[N, L]`."""
        total, count = 0.0, 0
        for gram in self._ngrams(ids):
            total -= math.log(self._p(self.order, gram[:-1], gram[-1]))
            count += 1
        return total, count

    def perplexity(self, ids):
        nll, count = self.log_likelihood(ids)
        return math.exp(nll / max(count, 1))


def ngram_baseline(train_ids, test_ids, vocabulary_size, order=DEFAULT_ORDER):
    """`{"ngram_perplexity", "ngram_nll", "ngram_order", "ngram_discounts"}`: interpolated
    Kneser-Ney of `order` fit on `train_ids`, on the tokens of `test_ids`."""
    model = KneserNey(vocabulary_size, order).fit(train_ids)
    nll, count = model.log_likelihood(test_ids)
    mean = nll / max(count, 1)
    return {"ngram_perplexity": float(np.exp(mean)), "ngram_nll": mean, "ngram_order": order,
            "ngram_discounts": {str(k): round(v, 4) for k, v in sorted(model.discounts.items())},
            "ngram_tokens": count}


def unigram_baseline(train_ids, targets, vocabulary_size):
    """The training split's token frequencies (add-one smoothed over `vocabulary_size`;
    [PAD], [BOS] and [EOS] not counted: never a masked token) predicting every target
    (int array, `PAD_ID` where none): `{"unigram_masked_loss" (mean -ln p, nats),
    "unigram_masked_accuracy" (the most frequent token's share)}`."""
    from keras_ssl.data.masking import selectable

    train_ids = np.asarray(train_ids)
    counts = np.bincount(train_ids[np.asarray(selectable(train_ids))], minlength=vocabulary_size)
    counts = counts[:vocabulary_size].astype(np.float64) + 1.0
    p = counts / counts.sum()
    targets = np.asarray(targets)
    wanted = targets[targets != PAD_ID]
    return {"unigram_masked_loss": float(-np.mean(np.log(p[wanted]))) if len(wanted) else float("nan"),
            "unigram_masked_accuracy": float(np.mean(wanted == np.argmax(p))) if len(wanted) else float("nan")}
