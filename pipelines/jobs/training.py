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

# What the three jobs' EMBEDDED recipes (small and quick on 2 CPU cores, chosen by measurement;
# see README) share: width 0.35, Adam, no weight decay, the decoded images kept in memory, and
# batch-norm momentum 0.9: in their few hundred to few thousand steps, moving statistics at the
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


def check_recipe(recipe, ranges=(), choices=()):
    """Raises ValueError naming the first field of ``recipe`` outside what it may hold: the
    fields all jobs share (``COMMON_RANGES``, ``optimizer``), the job's own ``ranges`` and
    ``choices`` (as in ``driver.check_fields``), and a warm-up shorter than the training."""
    from pipelines.jobs.driver import check_fields

    check_fields(recipe, ranges={**COMMON_RANGES, **dict(ranges)},
                 choices={"optimizer": OPTIMIZERS, **dict(choices)})
    if recipe.warmup_epochs >= recipe.epochs:
        raise ValueError(f"{type(recipe).__name__}.warmup_epochs must be in [0, "
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
    train_data: Callable  # (model, recipe, data, steps_per_epoch) -> training dataset
    evaluate: Callable  # (model, recipe, data, run_dir, nan) -> the job's metrics and pictures
    validation_data: Optional[Callable] = None  # (recipe, data) -> dataset, or None
    seed_weights: bool = False  # keras.utils.set_random_seed(recipe.seed) before the model


def steps_per_epoch(recipe, num_train):
    """The recipe's ``steps_per_epoch`` where it has one (not 0), else one pass over the
    ``num_train`` training examples (at least one step)."""
    return getattr(recipe, "steps_per_epoch", 0) or max(1, num_train // recipe.batch_size)


def run_job(job, recipe, run_dir, *, init=None, freeze_bn=False, verbose="auto", strategy=None,
            callbacks=(), write_metrics=True):
    """Trains and evaluates one job; returns the metrics dict (also run_dir/metrics.json unless
    ``write_metrics`` is False).

    ``init`` (a .keras model, an official .tflite file or a TF checkpoint) starts the model from
    its weights where names and shapes match (``keras_mnv2.convert.init_from``; ``freeze_bn``
    freezes batch norm). ``strategy``: the model is built and compiled under its scope.
    ``callbacks`` are added to the driver's. Restarting after a kill resumes (``driver.fit``).
    """
    from pipelines.jobs import driver

    start = time.time()
    job.check_recipe(recipe)
    driver.prepare_run_dir(run_dir, recipe)
    data = job.load(recipe)
    steps = steps_per_epoch(recipe, data.num_train)
    if job.seed_weights:
        import keras

        keras.utils.set_random_seed(recipe.seed)  # the same initial weights on every run
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = job.build_model(recipe, data)
        if init is not None:
            from keras_mnv2.convert import init_from

            init_from(model, init, freeze_batch_norm=freeze_bn)
        model.compile(optimizer=job.make_optimizer(recipe, steps),
                      **job.compile_args(recipe, data))
    train_ds = job.train_data(model, recipe, data, steps)
    validation = job.validation_data(recipe, data) if job.validation_data else None
    os.makedirs(run_dir, exist_ok=True)
    nan = driver.fit(model, train_ds, recipe.epochs, run_dir, steps_per_epoch=steps,
                     validation_data=validation, verbose=verbose, extra_callbacks=callbacks)
    train_seconds = time.time() - start

    metrics = dict(job.evaluate(model, recipe, data, run_dir, nan))
    metrics.update({
        "recipe": dataclasses.asdict(recipe),
        "dataset": data.origin,
        "train_images_listed": data.num_train,
        "stopped_on_nan": nan,
        "seconds": round(time.time() - start, 1),
        "train_seconds": round(train_seconds, 1),
    })
    if write_metrics:
        driver.write_metrics(run_dir, metrics)
    return metrics


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
    raise ValueError(f"optimizer must be rmsprop, adam or sgd, got {name!r}")
