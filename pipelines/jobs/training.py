"""The run sequence the three training jobs share (detection, segmentation, classification).

``run_job`` owns the order: check the recipe, prepare the run dir (recipe.json; another recipe is
refused), load the data, build the model (``--init``/``--freeze-bn``), compile it with the
recipe's optimizer, ``driver.fit``, evaluate, write metrics.json. A job gives only what differs,
as the hooks of a ``Job``: its recipe check, data, model, optimizer, loss and evaluation.

``make_optimizer`` and ``cosine_schedule`` are the optimizer and warm-up + cosine schedule the
jobs share; weight decay is never in the optimizer (``pipelines.jobs.weight_decay`` puts it in
the model's losses).
"""

import contextlib
import dataclasses
import os
import time
from typing import Callable, Optional

from keras_mnv2.errors import InputError

# What the three jobs' EMBEDDED recipes (small and quick on 2 CPU cores, chosen by measurement;
# see docs/training/) share: width 0.35, Adam, no weight decay, the decoded images kept in memory,
# and batch-norm momentum 0.9: in their few hundred to few thousand steps, moving statistics at the
# papers' 0.997-0.9997 would still lag far behind (near their initial values).
EMBEDDED_COMMON = dict(alpha=0.35, optimizer="adam", weight_decay=0.0, bn_momentum=0.9,
                       cache=True)

# The fields every job's recipe has, and what they may hold (driver.check_fields).
COMMON_RANGES = {
    "alpha": "(0, inf)", "batch_size": "[1, inf)", "epochs": "[1, inf)",
    "learning_rate": "(0, inf)", "warmup_epochs": "[0, inf)", "weight_decay": "[0, inf)",
    "bn_momentum": "[0, 1)",
}
OPTIMIZERS = ("rmsprop", "adam", "sgd")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def check_recipe(recipe, ranges=(), choices=()):
    """Raises ValueError naming the first field of ``recipe`` outside what it may hold: the
    fields all jobs share (``COMMON_RANGES``, ``optimizer``), the job's own ``ranges`` and
    ``choices`` (as in ``driver.check_fields``), and a warm-up shorter than the training."""
    from pipelines.jobs.driver import check_fields

    check_fields(recipe, ranges={**COMMON_RANGES, **dict(ranges)},
                 choices={"optimizer": OPTIMIZERS, **dict(choices)})
    if recipe.warmup_epochs >= recipe.epochs:
        raise InputError(f"{type(recipe).__name__}.warmup_epochs must be in [0, "
                         f"epochs={recipe.epochs}), got {recipe.warmup_epochs!r}")


@dataclasses.dataclass(frozen=True)
class Data:
    """What a job's ``load`` hook returns: the splits in whatever form its other hooks take, and
    what the shared sequence needs of them."""

    train: object
    val: object
    num_classes: int
    num_train: Optional[int]  # examples listed in the training split (steps per epoch)
    origin: str  # metrics.json "dataset"
    extra: dict = dataclasses.field(default_factory=dict)  # anything else the hooks want


@dataclasses.dataclass(frozen=True)
class Job:
    """The hooks of one training job; ``run_job`` calls them in this order."""

    check_recipe: Callable  # (recipe) -> None; raises ValueError naming the field
    load: Callable  # (recipe) -> Data; runs after the run dir is prepared
    build_model: Callable  # (recipe, data) -> model with its weight decay, not compiled
    make_optimizer: Callable  # (recipe, steps_per_epoch) -> optimizer
    compile_args: Callable  # (recipe, data) -> model.compile keywords other than the optimizer
    # (model, recipe, data, steps_per_epoch, input_context) -> training dataset of one input
    # pipeline's per-replica batches (``per_replica_batch``, ``shard``); input_context is None
    # under the default strategy (the whole batch)
    train_data: Callable
    evaluate: Callable  # (model, recipe, data, run_dir, nan) -> the job's metrics and pictures
    validation_data: Optional[Callable] = None  # (recipe, data) -> dataset, or None
    seed_weights: bool = False  # keras.utils.set_random_seed(recipe.seed) before the model


def steps_per_epoch(recipe, num_train):
    """The recipe's ``steps_per_epoch`` where it has one (not 0), else one pass over the
    ``num_train`` training examples (at least one step)."""
    return getattr(recipe, "steps_per_epoch", 0) or max(1, num_train // recipe.batch_size)


def run_job(job, recipe, run_dir, *, init=None, freeze_bn=False, verbose="auto", strategy=None,
            mixed_precision=False, callbacks=(), write_metrics=True, jit_compile=None):
    """Trains and evaluates one job; returns the metrics dict (also run_dir/metrics.json unless
    ``write_metrics`` is False).

    ``init`` (a .keras model, an official .tflite file or a TF checkpoint) starts the model from
    its weights where names and shapes match (``keras_mnv2.convert.init_from``; ``freeze_bn``
    freezes batch norm). ``strategy`` (a name of ``STRATEGIES`` or a ``tf.distribute.Strategy``):
    the model is built and compiled under its scope, ``recipe.batch_size`` is the global batch
    (``batch_size / replicas`` per replica) and the learning rate is the recipe's, for that
    global batch; non-chief workers of a multi-worker run keep their files in
    ``run_dir/worker_<i>`` and do not evaluate. ``mixed_precision``: trains under
    ``precision_policy()`` (float16 with loss scaling on GPU, bfloat16 elsewhere); evaluation and
    the saved model are float32 (``float32_copy``). ``jit_compile``: True or False is
    ``model.compile``'s; None leaves Keras' "auto" (XLA on JAX, and on TensorFlow with a GPU;
    never on a CPU-only TensorFlow nor on torch). ``callbacks`` are added to the driver's.
    metrics.json's ``train_images_per_second`` leaves out each epoch's first step (``step_clock``).
    Restarting after a kill resumes (``driver.fit``).
    """
    from pipelines.jobs import driver

    start = time.time()
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    chief = strategy is None or is_chief(strategy)
    if not chief:
        run_dir = os.path.join(run_dir, f"worker_{strategy.cluster_resolver.task_id}")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    job.check_recipe(recipe)
    if recipe.batch_size % replicas:
        raise InputError(f"batch_size {recipe.batch_size} does not split over {replicas} "
                         "replicas (it is the global batch: use a multiple of the replicas)")
    driver.prepare_run_dir(run_dir, recipe)
    data = job.load(recipe)
    steps = steps_per_epoch(recipe, data.num_train)
    if job.seed_weights:
        import keras

        keras.utils.set_random_seed(recipe.seed)  # the same initial weights on every run
    policy = precision_policy(strategy) if mixed_precision else None
    with policy_scope(policy):
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = job.build_model(recipe, data)
            if init is not None:
                from keras_mnv2.convert import init_from

                init_from(model, init, freeze_batch_norm=freeze_bn)
            compile_args = dict(job.compile_args(recipe, data))
            if jit_compile is not None:
                compile_args["jit_compile"] = jit_compile
            model.compile(optimizer=job.make_optimizer(recipe, steps), **compile_args)

        def dataset_fn(input_context):
            return job.train_data(model, recipe, data, steps, input_context)

        train_ds = distribute(strategy, dataset_fn) if strategy is not None else dataset_fn(None)
        if strategy is not None:
            prepare_fit(model, strategy, dataset_fn)
        validation = job.validation_data(recipe, data) if job.validation_data else None
        os.makedirs(run_dir, exist_ok=True)
        throughput = step_clock(recipe.batch_size)
        nan = driver.fit(model, train_ds, recipe.epochs, run_dir, steps_per_epoch=steps,
                         validation_data=validation, verbose=verbose,
                         extra_callbacks=[throughput, *callbacks])
    train_seconds = time.time() - start
    import tensorflow as tf

    if mixed_precision or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # a local float32 model from here on: evaluation (box decoding, NMS, metrics) on the
        # chief alone, and the saved model (exports) as without mixed precision
        model = float32_copy(job, model, recipe, data)
    if mixed_precision and chief:
        driver.save_model(model, os.path.join(run_dir, "last.keras"))

    metrics = dict(job.evaluate(model, recipe, data, run_dir, nan)) if chief else {}
    metrics.update({
        "recipe": dataclasses.asdict(recipe),
        "dataset": data.origin,
        "train_images_listed": data.num_train,
        "stopped_on_nan": nan,
        "strategy": strategy_name(strategy),
        "replicas": replicas,
        "precision": policy or "float32",
        "seconds": round(time.time() - start, 1),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": throughput.images_per_second(),
    })
    if write_metrics and chief:
        driver.write_metrics(run_dir, metrics)
    return metrics


def step_clock(batch_size):
    """A callback timing the training steps: ``images_per_second()`` is ``batch_size`` images a
    step over the time from each step's end to the next one's in the same epoch (so neither the
    first step, which traces or compiles, nor the epoch-end saving counts), or None when no epoch
    had two steps. Keras reads each step's loss for the callbacks' logs, so a step has finished
    when its end is timed."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.seconds, self._last = 0, 0.0, None

        def on_epoch_begin(self, epoch, logs=None):
            self._last = None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None:
                self.steps += 1
                self.seconds += now - self._last
            self._last = now

        def images_per_second(self):
            if not self.steps or self.seconds <= 0:
                return None
            return round(self.steps * batch_size / self.seconds, 2)

    return StepClock()


# ----------------------------------------------------------------------------- precision


def precision_policy(strategy=None):
    """The mixed-precision policy for where training runs: ``mixed_float16`` on a GPU (Keras
    wraps the optimizer in a ``LossScaleOptimizer`` at compile), ``mixed_bfloat16`` on CPU and
    TPU (bfloat16 has float32's exponent range: no loss scaling)."""
    import tensorflow as tf

    if strategy is not None and isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def policy_scope(policy):
    """Keras' global dtype policy set to ``policy`` (None: left as it is) inside the block."""
    import keras

    if policy is None:
        yield
        return
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def float32_copy(job, model, recipe, data):
    """The job's model built again under the float32 policy, outside any strategy, with
    ``model``'s weights (the variables of a mixed-precision model are float32 already)."""
    with policy_scope("float32"):
        copy = job.build_model(recipe, data)
    copy.set_weights(model.get_weights())
    return copy


# ----------------------------------------------------------------------------- replicas


def per_replica_batch(batch_size, input_context=None):
    """One replica's share of the global ``batch_size`` (all of it without an input context)."""
    if input_context is None:
        return batch_size
    return input_context.get_per_replica_batch_size(batch_size)


def shard(dataset, input_context=None):
    """This input pipeline's share of ``dataset`` (every n-th element, n pipelines: one per
    worker); the whole dataset with one pipeline."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return dataset
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def synchronize_batch_norm(model):
    """Batch norm of ``model`` normalizing with the statistics of the global batch (all
    replicas) instead of each replica's share; saved with the model (``synchronized``)."""
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    return model


def service(dataset, data_service=None):
    """``dataset`` produced by the workers of a tf.data service (``data_service``: the
    dispatcher, "grpc://host:port"), each running its own copy of the pipeline
    ("parallel_epochs"); ``dataset`` itself without one."""
    if not data_service:
        return dataset
    import tensorflow as tf

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode="parallel_epochs", service=data_service))


def cosine_schedule(peak, total_steps, warmup_steps=0, alpha=0.0):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to
    ``alpha * peak`` over the rest of ``total_steps`` (at least one step)."""
    import keras

    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak, max(1, total_steps - warmup_steps), alpha=alpha,
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps,
    )


def make_optimizer(name, learning_rate, *, momentum=0.9, rho=0.9, epsilon=1.0, nesterov=False,
                   **common):
    """RMSProp (``rho``, ``momentum``, ``epsilon``; TF-slim's values by default), Adam (Keras'
    defaults) or momentum SGD (``nesterov``) at ``learning_rate`` (a value or a schedule);
    ``common`` goes to every optimizer (``use_ema``, ``ema_momentum``)."""
    import keras

    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=rho, momentum=momentum,
                                        epsilon=epsilon, **common)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **common)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov,
                                    **common)
    raise InputError(f"optimizer must be rmsprop, adam or sgd, got {name!r}")


# ----------------------------------------------------------------------------- distribution


# The tf.distribute classes behind the names of STRATEGIES (multi_worker's
# MultiWorkerMirroredStrategy is a CollectiveAllReduceStrategy)
_STRATEGY_CLASSES = {"MirroredStrategy": "mirrored", "CollectiveAllReduceStrategy": "multi_worker",
                     "MultiWorkerMirroredStrategy": "multi_worker", "TPUStrategy": "tpu"}


def strategy_name(strategy):
    """The ``STRATEGIES`` name of ``strategy`` (None or the default strategy: "default"; a
    class the names do not cover: its class name)."""
    if strategy is None:
        return "default"
    name = type(strategy).__name__
    return _STRATEGY_CLASSES.get(name, "default" if "Default" in name else name)


def make_strategy(name="default", devices=None, tpu=None):
    """A ``tf.distribute`` strategy by name.

    default: the current (single-device) strategy. mirrored: synchronous data parallelism over
    ``devices`` (default: all local GPUs, or the CPU). multi_worker: the same over the workers
    that TF_CONFIG names (one process per worker, the same command on each). tpu: a TPU found by
    ``TPUClusterResolver(tpu)``.
    """
    import keras
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    backend = keras.backend.backend()
    if name in STRATEGIES and backend != "tensorflow":
        # tf.distribute places TensorFlow variables and steps; a JAX or torch model's steps run
        # outside it (Keras' own distribution API is another thing), so the strategy would not
        # apply
        raise InputError(f"strategy {name!r} needs the TensorFlow backend (tf.distribute); "
                         f"Keras runs on {backend} here: train with --backend tensorflow, or "
                         "without --strategy")
    if name == "mirrored":
        devices = devices or None
        cpu_only = devices is not None and all("cpu" in d.lower() for d in devices)
        # collective all-reduce over CPU devices can order its instances differently on each
        # replica (synchronized batch norm, then the gradients) and abort; reduce on one device
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice() if cpu_only else None)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise InputError("strategy 'multi_worker' needs TF_CONFIG naming the cluster and "
                             'this task, e.g. {"cluster": {"worker": ["host1:port", '
                             '"host2:port"]}, "task": {"type": "worker", "index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as err:
            raise InputError(f"strategy 'tpu': no TPU found ({err})") from err
        return tf.distribute.TPUStrategy(resolver)
    raise InputError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def is_chief(strategy):
    """False on the non-chief workers of a multi-worker strategy (they write elsewhere)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def distribute(strategy, dataset_fn):
    """``dataset_fn(input_context)`` as the strategy's input: each input pipeline reads its own
    shard of the files and batches its replicas' share (the plain dataset under the default
    strategy)."""
    import tensorflow as tf

    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return dataset_fn(None)
    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_fit(model, strategy, dataset_fn):
    """Works around Keras 3's fit under MultiWorkerMirroredStrategy (a no-op otherwise).

    Keras (through 3.15) peeks at the first distributed batch before training and averages it
    with ``strategy.reduce``, which the collective strategy cannot do for an (images, labels)
    tuple, so ``fit`` fails at once (keras-team/keras#20585). This builds the compiled metrics
    and the optimizer from one local batch of ``dataset_fn`` instead, under the strategy's
    scope, and skips the peek for this model.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    _patch_keras_multi_worker_mean()
    resolver = strategy.cluster_resolver
    workers = len(resolver.cluster_spec().as_dict().get("worker", [])) + len(
        resolver.cluster_spec().as_dict().get("chief", []))
    index = resolver.task_id + (1 if resolver.task_type == "worker" and "chief" in
                                resolver.cluster_spec().as_dict() else 0)
    context = tf.distribute.InputContext(num_input_pipelines=max(1, workers),
                                         input_pipeline_id=index,
                                         num_replicas_in_sync=strategy.num_replicas_in_sync)
    batch = next(iter(dataset_fn(context)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    return model


def _patch_keras_multi_worker_mean():
    """Keras (through 3.15) averages each step's scalar logs over the workers of a
    MultiWorkerMirroredStrategy with ``strategy.reduce("MEAN", v, axis=0)``, which fails on a
    0-d value; reduce those with ``axis=None`` (the same mean) and leave the rest to Keras."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "keras_mnv2_patch", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(values, strategy, reduction)

        def mean(value):
            if not isinstance(value, tf.distribute.DistributedValues):
                return value
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=0 if rank else None)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica.keras_mnv2_patch = True
    trainer.reduce_per_replica = reduce_per_replica
