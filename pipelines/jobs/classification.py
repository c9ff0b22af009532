"""The ImageNet classification job: MobileNetV2 trained with the shared driver, evaluated top-1 /
top-5 on the whole validation split. ``keras-mnv2 train imagenet`` / ``keras-mnv2 eval imagenet``.

Data: an ImageNet folder layout (``data_dir``), TFDS ``imagenet2012`` (``tfds_data_dir``, and
``tfds_manual_dir`` to build it), or TF-slim TFRecord shards (``tfrecord_dir``). With none of them
it generates the embedded synthetic dataset once (``pipelines.synthetic.imagenet``, ImageNet
folder layout) and trains ``EMBEDDED`` on it.

The run directory holds what ``pipelines.jobs.driver`` writes (backup/ for resume, last.keras,
history.csv, logs/, curves.png) plus model.keras (the final model; the EMA weights when the
recipe averages them) and metrics.json.
"""

import dataclasses
import os
import time

import keras
import tensorflow as tf

from keras_mnv2.errors import InputError, MissingFileError
from pipelines.data import imagenet as imagenet_data
from pipelines.data.skips import SkipLog
from pipelines.jobs.training import EMBEDDED_COMMON

@dataclasses.dataclass(frozen=True)
class ImagenetRecipe:
    """Training recipe; every field is a scalar so that the CLI has one flag per field.

    PAPER is the MobileNetV2 paper, section 6.1, with TF-slim's values where the paper is silent:
    RMSProp (decay 0.9, momentum 0.9, epsilon 1.0: TF-slim train_image_classifier's
    ``opt_epsilon``, inside the square root as in Keras), lr 0.045 for a batch of 96 (scaled
    linearly with ``batch_size``) decayed by 0.98 per epoch (TF-slim's README: every 2.5 epochs,
    ``--lr-decay-epochs 2.5``), L2 weight decay 4e-5 on the convolution and logits kernels
    (TF-slim's ``l2_regularizer(4e-5)`` = 4e-5 * sum(w^2) / 2, the rule all jobs share in
    ``pipelines.jobs.weight_decay``; none on depthwise kernels,
    biases or batch norm), label smoothing 0.1, weight EMA 0.9999, dropout 0.2 before the
    logits, batch-norm decay 0.997 (TF-slim's mobilenet ``training_scope``). The paper gives no
    epoch count; 300 epochs take the lr down ~400-fold.
    """

    alpha: float = 1.0  # width multiplier
    resolution: int = 224  # the model's input side in pixels
    batch_size: int = 96  # images per training step, over all replicas
    epochs: int = 300  # passes over the training split (see steps_per_epoch)
    steps_per_epoch: int = 0  # training steps per epoch; 0: one pass over the train split
    optimizer: str = "rmsprop"  # rmsprop, adam or sgd
    learning_rate: float = 0.045  # peak, for lr_batch_size images; scaled linearly to batch_size
    lr_batch_size: int = 96  # the batch size learning_rate is given for
    schedule: str = "exponential"  # exponential (staircase) or cosine
    lr_decay: float = 0.98  # exponential: the factor applied every lr_decay_epochs
    lr_decay_epochs: float = 1.0  # exponential: epochs between decays
    warmup_epochs: float = 0.0  # linear warmup to the peak learning rate
    rmsprop_rho: float = 0.9  # RMSProp's decay of the squared-gradient average
    momentum: float = 0.9  # RMSProp and SGD momentum
    rmsprop_epsilon: float = 1.0  # RMSProp's epsilon (inside the square root)
    weight_decay: float = 4e-5  # L2 on conv and logits kernels (pipelines.jobs.weight_decay)
    label_smoothing: float = 0.1  # of the cross-entropy targets
    use_ema: bool = True  # evaluate and save an exponential moving average of the weights
    ema_momentum: float = 0.9999  # decay of that average
    dropout: float = 0.2  # dropout before the logits
    bn_momentum: float = 0.997  # batch-norm moving-average decay
    sync_bn: bool = False  # batch-norm statistics over all replicas
    min_crop_area: float = 0.08  # Inception crop: area in [min_crop_area, 1]
    crop_fraction: float = 0.875  # evaluation centre crop
    shuffle_buffer: int = 10_000  # images in the training shuffle buffer
    cache: bool = False  # keep the encoded images in memory after the first epoch
    validate: bool = False  # also evaluate the val split after every epoch
    jit_compile: bool = False  # compile the training step with XLA
    seed: int = 0  # data order, augmentation and initial weights


PAPER = ImagenetRecipe()
# The embedded default, chosen by measurement on the 2 shared CPU cores: 30 epochs of 93 steps of
# 32 images at 64 px reach 97.4% and 98.0% top-1 on the synthetic val split in 5.6 and 6.1
# minutes, data generation included (~6.5 CPU-minutes). alpha 0.35 at 64 px is the cheapest
# MobileNetV2 that learns the shapes in ~2800 steps; Adam with a cosine decay learns them far
# faster than the paper's RMSProp schedule, which is built for 300 epochs; mild crops (65-100%
# of the area) keep the one object in view.
# What the three jobs' embedded recipes share is training.EMBEDDED_COMMON; ~2800 steps.
EMBEDDED = ImagenetRecipe(
    **EMBEDDED_COMMON, resolution=64, batch_size=32, epochs=30, learning_rate=5e-3,
    lr_batch_size=32, schedule="cosine", warmup_epochs=0.3, label_smoothing=0.1, use_ema=False,
    dropout=0.0, min_crop_area=0.65,
    validate=True,  # val curves in curves.png; ~1 s an epoch
)
# 3000 train and 500 val images of 10 classes, 115-144 px: ~10 s to generate.
SYNTHETIC = dict(num_train_per_class=300, num_val_per_class=50, num_classes=10, image_size=144,
                 seed=0)


def check_recipe(recipe):
    """Raises ValueError, naming the field and its allowed values, for a recipe that cannot run
    (before any data is read)."""
    from pipelines.jobs import training

    training.check_recipe(recipe, ranges={
        "resolution": "[32, inf)", "steps_per_epoch": "[0, inf)", "lr_batch_size": "[1, inf)",
        "lr_decay": "(0, 1]", "lr_decay_epochs": "(0, inf)", "rmsprop_rho": "[0, 1)",
        "momentum": "[0, 1)", "rmsprop_epsilon": "(0, inf)", "label_smoothing": "[0, 1)",
        "ema_momentum": "[0, 1)", "dropout": "[0, 1)", "min_crop_area": "(0, 1]",
        "crop_fraction": "(0, 1]", "shuffle_buffer": "[1, inf)",
    }, choices={"schedule": ("exponential", "cosine")})


# ----------------------------------------------------------------------------- model


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SmoothedCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy of logits against integer labels, with label smoothing
    (Szegedy et al. 2016, "Rethinking the Inception architecture", section 7)."""

    def __init__(self, num_classes, label_smoothing=0.1, name="smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), [-1]),
                                   self.num_classes)
        return keras.losses.categorical_crossentropy(
            labels, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_mnv2")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 over ``warmup_steps``, then ``schedule`` (counted from the end of
    the warm-up)."""

    def __init__(self, schedule, warmup_steps):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = keras.ops.cast(self.warmup_steps, "float32")
        after = self.schedule(keras.ops.maximum(step - warm, 0.0))
        return keras.ops.where(step < warm, after * step / keras.ops.maximum(warm, 1.0), after)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def build_model(recipe, num_classes, weights=None):
    """MobileNetV2 with logits out; the shared weight decay (L2 on the conv and logits kernels,
    ``pipelines.jobs.weight_decay``) and synchronized batch norm as the recipe says (set in a
    clone of the builder's model, which keeps its layer names)."""
    from keras_mnv2 import MobileNetV2
    from pipelines.jobs.weight_decay import add_weight_decay

    size = recipe.resolution
    model = MobileNetV2(alpha=recipe.alpha, input_shape=(size, size, 3), classes=num_classes,
                        classifier_activation=None, dropout_rate=recipe.dropout,
                        bn_momentum=recipe.bn_momentum, weights=weights)
    if recipe.sync_bn:
        def configure(layer):
            config = layer.get_config()
            if isinstance(layer, keras.layers.BatchNormalization):
                config["synchronized"] = True
            return layer.__class__.from_config(config)

        inputs = keras.Input(model.input_shape[1:], name=model.layers[0].name)
        clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=configure)
        clone.set_weights(model.get_weights())
        model = clone
    return add_weight_decay(model, recipe.weight_decay)


def peak_learning_rate(recipe):
    """The recipe's learning rate scaled linearly from ``lr_batch_size`` to ``batch_size``."""
    return recipe.learning_rate * recipe.batch_size / recipe.lr_batch_size


def make_schedule(recipe, steps_per_epoch):
    """The peak learning rate (``peak_learning_rate``) decayed by ``lr_decay`` every
    ``lr_decay_epochs`` (staircase) or cosine to 0, after a linear warm-up of
    ``warmup_epochs``."""
    from pipelines.jobs import training

    peak = peak_learning_rate(recipe)
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "cosine":
        return training.cosine_schedule(peak, total, warmup)
    if recipe.schedule != "exponential":
        raise InputError(f"schedule must be 'exponential' or 'cosine', got {recipe.schedule!r}")
    schedule = keras.optimizers.schedules.ExponentialDecay(
        peak, decay_steps=max(1, int(round(recipe.lr_decay_epochs * steps_per_epoch))),
        decay_rate=recipe.lr_decay, staircase=True)
    return Warmup(schedule, warmup) if warmup else schedule


def make_optimizer(recipe, steps_per_epoch):
    """The recipe's optimizer on ``make_schedule``, with the recipe's weight EMA."""
    from pipelines.jobs import training

    return training.make_optimizer(
        recipe.optimizer, make_schedule(recipe, steps_per_epoch), momentum=recipe.momentum,
        rho=recipe.rmsprop_rho, epsilon=recipe.rmsprop_epsilon, nesterov=True,
        use_ema=recipe.use_ema, ema_momentum=recipe.ema_momentum)


def compile_args(recipe, num_classes):
    """The recipe's loss; metrics top1 and top5 (weighted, so that zero-weight placeholders of
    undecodable val images do not count); the recipe's ``jit_compile``."""
    k = min(5, num_classes)
    return dict(
        loss=SmoothedCrossentropy(num_classes, recipe.label_smoothing),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                          keras.metrics.SparseTopKCategoricalAccuracy(k=k, name="top5")],
        jit_compile=recipe.jit_compile,
    )


def compile_model(model, recipe, num_classes, steps_per_epoch):
    """Compiles with the recipe's optimizer and ``compile_args``."""
    model.compile(optimizer=make_optimizer(recipe, steps_per_epoch),
                  **compile_args(recipe, num_classes))
    return model


# ----------------------------------------------------------------------------- distribution
# The distribution path is the one all jobs share (``pipelines.jobs.training``); these names stay
# importable from here.
from pipelines.jobs.training import (  # noqa: E402,F401
    STRATEGIES, distribute, is_chief, make_strategy, prepare_fit)


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, dataset, top_k=5):
    """Top-1 and top-k accuracy over every image of ``dataset`` (an ``eval_dataset``: batches of
    images, labels, weights; weight-0 placeholders of undecodable images are left out).

    Returns {"top1", "top5", "images", "skipped"} (top5 is top-k for ``top_k``, capped at the
    number of classes).
    """
    if keras.backend.backend() == "tensorflow":
        predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    else:  # a JAX or torch model cannot be traced by tf.function: Keras' own compiled predict
        def predict(x):
            return model.predict_on_batch(x.numpy())
    correct1 = correct_k = images = skipped = 0
    for batch in dataset:
        x, labels, weights = batch if len(batch) == 3 else (*batch, None)
        logits = tf.convert_to_tensor(predict(x))
        k = min(top_k, int(logits.shape[-1]))
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        keep = tf.ones_like(labels, tf.bool) if weights is None else weights > 0
        hit1 = tf.math.in_top_k(labels, logits, 1) & keep
        hitk = tf.math.in_top_k(labels, logits, k) & keep
        correct1 += int(tf.reduce_sum(tf.cast(hit1, tf.int64)))
        correct_k += int(tf.reduce_sum(tf.cast(hitk, tf.int64)))
        n = int(tf.reduce_sum(tf.cast(keep, tf.int64)))
        images += n
        skipped += int(labels.shape[0]) - n
    if images == 0:
        raise InputError("evaluate: the dataset held no decodable image")
    return {"top1": correct1 / images, "top5": correct_k / images, "images": images,
            "skipped": skipped}


class SkipReport(keras.callbacks.Callback):
    """Prints, at the end of each epoch, how many images the input pipeline skipped as
    undecodable during it and which files were new (prefetching reads a few batches ahead, so a
    skip near an epoch's end may show in the next)."""

    def __init__(self, skip_log, max_names=10):
        super().__init__()
        self.skip_log = skip_log
        self.max_names = max_names
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        count, new = self.skip_log.take_new()
        self.history.append(count)
        if count:
            names = ", ".join(new[:self.max_names]) + (" ..." if len(new) > self.max_names
                                                       else "")
            print(f"\nepoch {epoch + 1}: skipped {count} undecodable {self.skip_log.split} "
                  f"images ({self.skip_log.skipped} distinct files so far)"
                  + (f"; new: {names}" if new else ""), flush=True)


# ----------------------------------------------------------------------------- the job


def sources(data_dir=None, tfds_data_dir=None, tfds_manual_dir=None, tfrecord_dir=None,
            val_labels=None, data_root="data/synthetic_imagenet"):
    """(train Source, val Source, description) for the given data; the embedded synthetic
    dataset (generated in ``data_root`` if not there yet) when none is given."""
    from pipelines.synthetic import imagenet as synthetic_imagenet

    given = [x for x in (data_dir, tfds_data_dir, tfrecord_dir) if x is not None]
    if len(given) > 1:
        raise InputError("give one of data_dir, tfds_data_dir and tfrecord_dir")
    if tfds_data_dir is not None or tfds_manual_dir is not None:
        train = imagenet_data.tfds_source("train", tfds_data_dir, tfds_manual_dir)
        val = imagenet_data.tfds_source("validation", tfds_data_dir, tfds_manual_dir)
        return train, val, f"tfds:{tfds_data_dir}"
    if tfrecord_dir is not None:
        train = imagenet_data.tfrecord_source(os.path.join(tfrecord_dir, "train-*"))
        val = imagenet_data.tfrecord_source(os.path.join(tfrecord_dir, "validation-*"))
        return train, val, f"tfrecord:{tfrecord_dir}"
    if data_dir is None:
        print(f"No ImageNet given: using the embedded synthetic ImageNet-layout dataset in "
              f"{data_root}", flush=True)
        data_dir = synthetic_imagenet.generate(data_root, **SYNTHETIC)
    train = imagenet_data.folder_source(data_dir, "train")
    val_split = "val" if os.path.isdir(os.path.join(data_dir, "val")) else "validation"
    val = imagenet_data.folder_source(data_dir, val_split, labels_file=val_labels,
                                      class_names=train.class_names)
    return train, val, os.path.abspath(data_dir)


def run(data_dir=None, tfds_data_dir=None, tfds_manual_dir=None, tfrecord_dir=None,
        val_labels=None, run_dir="runs/imagenet", recipe=None, strategy="default",
        data_service=None, data_root="data/synthetic_imagenet", train_source=None,
        val_source=None, verbose="auto", callbacks=(), init=None, freeze_bn=False,
        mixed_precision=False):
    """Trains and evaluates (``training.run_job``); returns the metrics dict (also written to
    run_dir/metrics.json).

    ``init`` (a .keras model, an official .tflite file or a TF checkpoint) starts the model from
    its weights where names and shapes match (``keras_mnv2.convert.init_from``; ``freeze_bn``
    freezes batch norm); a restarted run continues from its own checkpoint as before.

    Restarting the same command after a kill continues from the last finished epoch. Data: see
    the module docstring, or pass ``train_source``/``val_source`` (``imagenet_data.Source``).
    ``strategy`` is a name (``make_strategy``) or a ``tf.distribute.Strategy``;
    ``mixed_precision`` trains under ``training.precision_policy`` (``training.run_job``).
    """
    from pipelines.jobs import driver, training

    given = train_source is not None or val_source is not None
    embedded = not given and data_dir is None and tfds_data_dir is None \
        and tfrecord_dir is None and tfds_manual_dir is None
    recipe = recipe or (EMBEDDED if embedded else PAPER)
    check_recipe(recipe)  # before any data is read (run_job checks it again)
    if given:
        if train_source is None or val_source is None:
            raise InputError("give both train_source and val_source")
        train, val, origin = train_source, val_source, train_source.origin
    else:
        train, val, origin = sources(data_dir, tfds_data_dir, tfds_manual_dir, tfrecord_dir,
                                     val_labels, data_root)
    if val.class_names != train.class_names:
        raise InputError(f"train ({train.num_classes} classes) and val ({val.num_classes}) "
                         "have different classes")
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    train_log = SkipLog("train")
    val_logs = [SkipLog("val")]  # the per-epoch validation's, then the final pass's

    def load(recipe):
        steps = training.steps_per_epoch(recipe, train.num_examples)
        print(f"ImageNet job: {train.num_examples} train / {val.num_examples} val images, "
              f"{train.num_classes} classes, MobileNetV2 {recipe.alpha}/{recipe.resolution}, "
              f"{strategy.num_replicas_in_sync} replica(s), {steps} steps of "
              f"{recipe.batch_size} per epoch", flush=True)
        return training.Data(train, val, train.num_classes, train.num_examples, origin)

    def train_data(model, recipe, data, steps, input_context):
        return imagenet_data.train_dataset(
            train, recipe.batch_size, recipe.resolution, seed=recipe.seed,
            cache=recipe.cache, shuffle_buffer=recipe.shuffle_buffer,
            area_range=(recipe.min_crop_area, 1.0), data_service=data_service,
            skip_log=train_log, input_context=input_context)

    def validation_data(recipe, data):
        if not recipe.validate:
            return None
        return imagenet_data.eval_dataset(val, recipe.batch_size, recipe.resolution,
                                          crop_fraction=recipe.crop_fraction,
                                          cache=recipe.cache, skip_log=val_logs[0],
                                          pad=strategy.num_replicas_in_sync > 1)

    def evaluate_run(model, recipe, data, run_dir, nan):
        # (the chief only) EMA weights, if the recipe has them; a temporary file and a rename
        driver.save_model(model, os.path.join(run_dir, "model.keras"))
        results = {"top1": None, "top5": None, "images": 0, "skipped": 0}
        if nan is None:
            val_logs.append(SkipLog("val"))  # the final pass only
            results = evaluate(model, imagenet_data.eval_dataset(
                val, recipe.batch_size, recipe.resolution, crop_fraction=recipe.crop_fraction,
                skip_log=val_logs[-1]))
        val_log = val_logs[-1]
        print(train_log.summary())
        print(val_log.summary())
        return {
            "top1": results["top1"],
            "top5": results["top5"],
            "val_images": results["images"],
            "skipped_images": {"train": train_log.skipped, "val": val_log.skipped},
            "skipped_files": {"train": train_log.files[:100], "val": val_log.files[:100]},
            "num_classes": data.num_classes,
            # images actually used: those listed, less those skipped
            "train_images": (train.num_examples - train_log.skipped
                             if train.num_examples is not None else None),
            "data_service": data_service,
        }

    job = training.Job(
        check_recipe=check_recipe, load=load,
        build_model=lambda recipe, data: build_model(recipe, data.num_classes),
        make_optimizer=make_optimizer,
        compile_args=lambda recipe, data: compile_args(recipe, data.num_classes),
        train_data=train_data, validation_data=validation_data, evaluate=evaluate_run,
        seed_weights=True,
    )
    return training.run_job(job, recipe, run_dir, init=init, freeze_bn=freeze_bn,
                            verbose=verbose, strategy=strategy, mixed_precision=mixed_precision,
                            callbacks=[SkipReport(train_log), *callbacks])


def run_eval(model="runs/imagenet/model.keras", data_dir=None, tfds_data_dir=None,
             tfds_manual_dir=None, tfrecord_dir=None, val_labels=None, run_dir=None,
             alpha=1.0, resolution=224, batch_size=100, crop_fraction=0.875,
             data_root="data/synthetic_imagenet", val_source=None):
    """``keras-mnv2 eval imagenet``: top-1/top-5 of a saved model (or ``model="imagenet"``, the
    official keras.applications weights at ``alpha``/``resolution``) on the whole val split;
    writes metrics.json into ``run_dir`` (default: the model's folder). Returns the metrics."""
    from pipelines.jobs import driver

    if model == "imagenet":
        from keras_mnv2 import MobileNetV2

        net = MobileNetV2(alpha=alpha, input_shape=(resolution, resolution, 3),
                          weights="imagenet")
        run_dir = run_dir or os.path.join("runs", "imagenet_pretrained")
    else:
        if not os.path.exists(model):
            raise MissingFileError(f"model file not found: {model}")
        net = keras.saving.load_model(model, compile=False)
        resolution = int(net.input_shape[1])
        run_dir = run_dir or os.path.dirname(os.path.abspath(model))
    if val_source is None:
        _, val_source, _ = sources(data_dir, tfds_data_dir, tfds_manual_dir, tfrecord_dir,
                                   val_labels, data_root)
    classes = int(net.output_shape[-1])
    if classes != val_source.num_classes:
        raise InputError(f"the model has {classes} outputs but {val_source.origin} has "
                         f"{val_source.num_classes} classes")
    skip_log = SkipLog("val")
    start = time.time()
    results = evaluate(net, imagenet_data.eval_dataset(
        val_source, batch_size, resolution, crop_fraction=crop_fraction, skip_log=skip_log))
    print(skip_log.summary())
    metrics = {
        "top1": results["top1"],
        "top5": results["top5"],
        "val_images": results["images"],
        "skipped_images": {"val": skip_log.skipped},
        "skipped_files": {"val": skip_log.files[:100]},
        "model": model,
        "resolution": resolution,
        "crop_fraction": crop_fraction,
        "dataset": val_source.origin,
        "seconds": round(time.time() - start, 1),
    }
    os.makedirs(run_dir, exist_ok=True)
    driver.write_metrics(run_dir, metrics)
    return metrics
