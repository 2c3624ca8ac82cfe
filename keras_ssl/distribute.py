"""Distribution strategies by name, and the facts about the cluster a run needs.

    strategy = keras_ssl.distribute.get_strategy("mirrored")    # or "multi_worker", "tpu"
    with strategy.scope():
        model = SimCLR(build_encoder(...))   # sync BN turns on by itself
        model.compile(optimizer=...)
    model.fit(dataset)                       # dataset batches are GLOBAL batches

`mirrored` uses every GPU; on a machine without GPUs it uses the logical CPU
devices made by `split_cpu(n)` (which must run before TensorFlow initialises
its devices), which is how the multi-replica paths are tested on a laptop.

`multi_worker` is `tf.distribute.MultiWorkerMirroredStrategy` configured by the
`TF_CONFIG` environment variable (one process per machine, every process runs
the same program), e.g. for worker 0 of two:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}'

Worker 0 (or the task of type `chief`, when the cluster has one) is the chief:
only it writes checkpoints, logs and models to the run directory
(`is_chief`). Keras's `fit` splits each global batch across all replicas of
all workers; the models in `keras_ssl.models` carry the two fixes `fit` needs
under this strategy (keras-team/keras#20585: a symbolic build that reduces a
distributed batch, and scalar logs reduced along axis 0), so user code calls
`fit` as usual. Datasets are sharded with `AutoShardPolicy.DATA`
(`shard_by_data`): every worker builds the same global batches from the same
seed and keeps its replicas' slices, so a run does not depend on how the
global batch is split.
"""

import json
import os

import tensorflow as tf

from keras_ssl.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(n):
    """Splits the first CPU into `n` logical devices (before TF initialises)."""
    if n < 1:
        raise UserError(f"number of CPU replicas must be >= 1, got {n}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != n:
            raise UserError(f"cannot split the CPU into {n} devices after TensorFlow has initialised "
                            f"({existing} exist); do it first thing in the program")


def read_tf_config():
    """The parsed `TF_CONFIG` (a dict), checked enough to name what is wrong."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                        '(e.g. {"cluster": {"worker": ["host0:port", "host1:port"]}, '
                        '"task": {"type": "worker", "index": 0}}); or use keras-ssl-launch-local')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at position {e.pos})")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError('TF_CONFIG needs "cluster" and "task" objects')
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG task {task} is not in its cluster {cluster}")
    return config


def get_strategy(name="default", cpu_replicas=None):
    """A `tf.distribute.Strategy` by name: `default`, `mirrored`, `multi_worker` or `tpu`.

    `cpu_replicas` (mirrored on CPU only): split the CPU into that many
    logical devices first, for trying multi-replica training without GPUs.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        if cpu_replicas:
            split_cpu(cpu_replicas)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        read_tf_config()
        # RING works on every device type; NCCL is picked per GPU by AUTO.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError, tf.errors.UnavailableError) as e:
            raise UserError(f"--strategy=tpu: no TPU found ({str(e).splitlines()[0]})")
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def in_multi_worker_mode(strategy=None):
    """True under a MultiWorkerMirroredStrategy with more than one worker."""
    strategy = strategy or tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    return bool(isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and getattr(extended, "_in_multi_worker_mode", lambda: False)())


def task_of(strategy):
    """`(task_type, task_id)` of this process (`("worker", 0)` outside multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not in_multi_worker_mode(strategy) or resolver is None or resolver.task_type is None:
        return "worker", 0
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy):
    """Whether this process writes the run's files: the `chief` task, or worker 0
    of a cluster without one (TF's convention)."""
    if not in_multi_worker_mode(strategy):
        return True
    task_type, task_id = task_of(strategy)
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def shard_by_data(dataset):
    """`dataset` with `AutoShardPolicy.DATA`: in-memory pipelines have no files to
    shard by, and DATA keeps every global batch what one device would see."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def gather_from_workers(strategy, values):
    """Every replica's `values` (a list of ints), as a list of tuples, one per
    replica of every worker (a collective: every worker must call it). Used to
    agree on the epoch to resume from."""
    if not in_multi_worker_mode(strategy):
        return [tuple(int(v) for v in values)]
    row = [float(v) for v in values]

    def replica_fn():
        ctx = tf.distribute.get_replica_context()  # each replica fills its row; the sum gathers them
        slot = tf.one_hot(ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync, dtype=tf.float64)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, slot[:, None] * tf.constant(row, tf.float64)[None, :])

    gathered = strategy.experimental_local_results(tf.function(lambda: strategy.run(replica_fn))())[0]
    return [tuple(int(v) for v in r) for r in gathered.numpy()]
