"""The last stage of keras_ssl's input pipelines: prefetch, with tf.data's autotuning thread off.

With autotuning on (tf.data's default), deleting a pipeline's iterator, which Keras does at the
end of every `fit` and the evaluator after every pass over a split, waits for the autotuning
thread, and on TensorFlow 2.21 that wait is often not cut short: the thread sleeps between its
optimisations for a period that grows with the pipeline's age. `make demo`'s one epoch (51 s of
steps) took 83 s to return from `fit` in 5 of 9 runs on a 2-core Xeon (gdb: the iterator's
destructor waiting on the thread in `Model::OptimizeLoop`); a slower CPU's longer epochs wait
longer. With autotuning off it returned at once in 6 of 6 runs, with the same losses and the same
speed (2,334-2,431 images/s, against 2,308-2,315 in the runs that escaped the wait before).
`AUTOTUNE` arguments still resolve: a parallel `map` runs at tf.data's fixed default parallelism
instead of a tuned one.
"""

import tensorflow as tf


def without_autotune_thread(dataset):
    """`dataset` with `tf.data.Options().autotune.enabled = False` (see the module doc)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def finished(dataset, buffer_size=tf.data.AUTOTUNE):
    """`dataset.prefetch(buffer_size)` without the autotuning thread: how every pipeline
    builder in `keras_ssl/data` ends (`keras_ssl.run_setup.method_data` also applies
    `without_autotune_thread` to whatever a method's `training_data` builds)."""
    return without_autotune_thread(dataset.prefetch(buffer_size))
