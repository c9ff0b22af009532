"""The ``keras-mnv2`` command line."""

import argparse
import errno
import os
import re
import sys

BACKENDS = ("tensorflow", "jax", "torch")
TENSORFLOW_ONLY = ("export", "qat")  # TFLite conversion and TFMOT need the TF backend


def select_backend(argv):
    """Sets KERAS_BACKEND before anything imports Keras: ``--backend`` for training and
    evaluation (default: KERAS_BACKEND, else tensorflow); always tensorflow for export and qat,
    which reload the run's ``.keras`` there, whichever backend trained it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("--backend", choices=BACKENDS, default=None)
    known, _ = pre.parse_known_args(argv)
    backend = known.backend
    if known.command in TENSORFLOW_ONLY:
        backend = "tensorflow"
    if backend is None:
        return os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != backend:
            raise ValueError(f"Keras was already imported with the {current} backend; "
                             f"{backend} must be chosen before (KERAS_BACKEND={backend})")
    os.environ["KERAS_BACKEND"] = backend
    return backend


def parse_bool(text):
    """A strict boolean flag value: 1/true/yes/on or 0/false/no/off (any case); else an error."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (1/0, yes/no), got {text!r}")


# The ones our readers raise inside tf.data (py_function), found again in TensorFlow's message.
_WRAPPED = re.compile(r"\b((?:Voc|Coco)FormatError|FileNotFoundError|ValueError): (.+)")


def error_line(err):
    """One line for an expected failure: the message naming the file or argument, without
    TensorFlow's wrapping (an error raised inside the input pipeline)."""
    import tensorflow as tf

    if isinstance(err, tf.errors.OpError):
        found = _WRAPPED.search(err.message or "")
        if found:
            return found.group(2).strip().rstrip(".")
        if isinstance(err, tf.errors.NotFoundError):
            return err.message.splitlines()[0].split(" [Op:")[0]
        return f"{type(err).__name__}: {(err.message or '').splitlines()[0]}"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return (f"the disk is full{where}: free some space and run the same command again (a "
                "training run resumes from its last finished epoch; no file is left half "
                "written)")
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    text = str(err).strip()
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return text.splitlines()[0] if len(text.splitlines()) > 3 else text


def _expected_errors():
    import tensorflow as tf

    return (ValueError, OSError, KeyError, tf.errors.OpError)


def _profile(args):
    import keras_mnv2

    model = keras_mnv2.MobileNetV2(
        alpha=args.alpha,
        input_shape=(args.size, args.size, 3),
        include_top=not args.no_top,
        classes=args.classes,
        output_stride=args.output_stride,
    )
    print(keras_mnv2.profile(model).table(max_rows=None if args.all else 0))
    return 0


def finetune_recipe(recipe):
    """The fine-tuning variant of a training recipe: a tenth of the learning rate, a tenth of the
    epochs (at least 1), no warmup. Flags given on the command line still override it."""
    import dataclasses

    return dataclasses.replace(recipe, learning_rate=recipe.learning_rate / 10,
                               epochs=max(1, recipe.epochs // 10), warmup_epochs=0.0)


def _recipe(args, module, embedded):
    """The job's EMBEDDED or PAPER recipe (its fine-tuning variant with --finetune) with every
    flag given on the command line applied."""
    import dataclasses

    recipe = module.EMBEDDED if embedded else module.PAPER
    if getattr(args, "finetune", False):
        recipe = finetune_recipe(recipe)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(recipe)
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(recipe, **overrides)


def _train_coco(args):
    from pipelines.jobs import detection

    embedded = args.coco_dir is None and args.tfds_data_dir is None
    metrics = detection.run(coco_dir=args.coco_dir, tfds_data_dir=args.tfds_data_dir,
                            run_dir=args.run_dir, recipe=_recipe(args, detection, embedded),
                            backbone_weights=args.backbone_weights, init=args.init,
                            freeze_bn=args.freeze_bn)
    return 1 if metrics.get("stopped_on_nan") else 0


def _train_voc(args):
    from pipelines.jobs import segmentation

    embedded = args.voc_dir is None
    metrics = segmentation.run(voc_dir=args.voc_dir, sbd_dir=args.sbd_dir, run_dir=args.run_dir,
                               recipe=_recipe(args, segmentation, embedded),
                               backbone_weights=args.backbone_weights, init=args.init,
                               freeze_bn=args.freeze_bn)
    return 1 if metrics.get("stopped_on_nan") else 0


def _train_imagenet(args):
    from pipelines.jobs import classification

    embedded = all(getattr(args, k) is None for k in
                   ("data_dir", "tfds_data_dir", "tfds_manual_dir", "tfrecord_dir"))
    metrics = classification.run(
        data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir,
        tfds_manual_dir=args.tfds_manual_dir, tfrecord_dir=args.tfrecord_dir,
        val_labels=args.val_labels, run_dir=args.run_dir,
        recipe=_recipe(args, classification, embedded), strategy=args.strategy,
        data_service=args.data_service, init=args.init, freeze_bn=args.freeze_bn)
    return 1 if metrics.get("stopped_on_nan") else 0


SPLITS_HELP = ("split-expansion blocks (paper sec. 5.1): an int (every block), or per block from the "
               "stem, e.g. 3,6,3 (the rest whole); the files get a _split suffix")


def _convert(args):
    import os

    from keras_mnv2 import convert

    if not args.output.endswith(".keras"):
        raise ValueError(f"--output must end in .keras, got {args.output}")
    kwargs = {"drop_background": args.drop_background}
    if not args.source.endswith(".tflite"):
        kwargs.update(input_size=args.input_size, output_stride=args.output_stride)
    elif args.input_size or args.output_stride:
        raise ValueError("--input-size and --output-stride apply to checkpoints; a .tflite file "
                         "has its own")
    model = convert.load(args.source, **kwargs)
    tmp = args.output[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, args.output)
    facts = ", ".join(f"{k}={v}" for k, v in model.official.items() if k != "source")
    print(f"{args.source} -> {args.output}: {facts}; {model.count_params():,} parameters")
    return 0


def _qat(args):
    from pipelines.jobs import deploy

    deploy.run_qat(args.job, run_dir=args.run_dir, epochs=args.epochs,
                   learning_rate=args.learning_rate, steps_per_epoch=args.steps_per_epoch,
                   io_dtype=args.io_dtype, scheme=args.scheme,
                   expansion_splits=deploy.parse_expansion_splits(args.expansion_splits))
    if not args.no_compare:
        deploy.compare(args.job, run_dir=args.run_dir)
    return 0


def _export(args):
    from pipelines.jobs import deploy

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    deploy.run_export(args.job, run_dir=args.run_dir, modes=modes, io_dtype=args.io_dtype,
                      expansion_splits=deploy.parse_expansion_splits(args.expansion_splits),
                      metadata=False if args.no_metadata else "auto",
                      quantizer=args.quantizer)
    if not args.no_compare:
        deploy.compare(args.job, run_dir=args.run_dir)
    return 0


def _predict(args):
    from pipelines import predict

    return predict.main(args)


def _eval(args):
    import json
    import os

    from pipelines.jobs import deploy

    if (args.model is None) == (args.tflite is None):
        raise ValueError("give one of --model PATH (a .keras file) and --tflite PATH")
    if args.tflite is not None:
        run_dir = args.run_dir or f"runs/{args.job}"
        result = deploy.evaluate_tflite(args.job, args.tflite, run_dir,
                                        keras_metrics=not args.no_keras)
    elif args.job == "imagenet":
        from pipelines.jobs import classification

        classification.run_eval(model=args.model, data_dir=args.data_dir,
                                tfds_data_dir=args.tfds_data_dir,
                                tfds_manual_dir=args.tfds_manual_dir,
                                tfrecord_dir=args.tfrecord_dir, val_labels=args.val_labels,
                                run_dir=args.run_dir)
        return 0
    else:
        _check_model_file(args.model)
        run_dir = args.run_dir or os.path.dirname(os.path.abspath(args.model))
        result = deploy.evaluate_keras(args.job, args.model, run_dir)
    print(json.dumps(result, indent=2))
    return 0


def _check_model_file(path):
    """Raises naming ``path`` when it is missing or not a .keras archive (a zip)."""
    import os
    import zipfile

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model file (not a zip archive: cut short, or "
                         "another kind of file)")


def _imagenet_data_flags(parser):
    parser.add_argument("--data-dir", default=None,
                        help="ImageNet folder layout: train/<wnid>/*.JPEG and val/")
    parser.add_argument("--val-labels", default=None,
                        help="labels file for a flat val/ folder (one wnid or index per image)")
    parser.add_argument("--tfds-data-dir", default=None, help="TFDS data dir with imagenet2012")
    parser.add_argument("--tfds-manual-dir", default=None,
                        help="TFDS manual dir with the ImageNet tar files")
    parser.add_argument("--tfrecord-dir", default=None,
                        help="TF-slim/Inception TFRecord shards (train-*, validation-*)")


def _add_recipe_flags(parser, recipe_class):
    """One --flag per recipe field (default None: the recipe's own value applies)."""
    import dataclasses

    for field in dataclasses.fields(recipe_class):
        kind = type(field.default)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=parse_bool, default=None, metavar="BOOL")
        else:
            parser.add_argument(flag, type=kind, default=None)


def _deploy_flags(parser, jobs):
    """What ``qat`` and ``export`` both take: the job, its run, the int8 file's input/output
    type, the comparison table and the split expansions."""
    parser.add_argument("job", choices=jobs)
    parser.add_argument("--run-dir", default=None, help="the trained run (default runs/<job>)")
    parser.add_argument("--io-dtype", default="float32", choices=("float32", "int8", "uint8"),
                        help="input/output type of the int8 file")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison table")
    parser.add_argument("--expansion-splits", default=None, help=SPLITS_HELP)


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-mnv2", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also accepted after the "
                             "subcommand)")
    sub = parser.add_subparsers(dest="command", required=True)

    prof = sub.add_parser("profile", help="parameters, MAdds and peak memory of MobileNetV2")
    prof.add_argument("--alpha", type=float, default=1.0)
    prof.add_argument("--size", type=int, default=224)
    prof.add_argument("--classes", type=int, default=1000)
    prof.add_argument("--output-stride", type=int, default=None, choices=(8, 16, 32))
    prof.add_argument("--no-top", action="store_true")
    prof.add_argument("--all", action="store_true", help="print every layer")
    prof.set_defaults(func=_profile)

    train = sub.add_parser("train", help="train a model on a dataset")
    jobs = train.add_subparsers(dest="job", required=True)
    from pipelines.jobs.classification import STRATEGIES, ImagenetRecipe
    from pipelines.jobs.detection import CocoRecipe
    from pipelines.jobs.segmentation import VocRecipe

    coco = jobs.add_parser("coco", help="SSDLite on COCO (embedded synthetic data by default)")
    coco.add_argument("--coco-dir", default=None,
                      help="COCO-format directory (annotations/instances_<split>.json + images)")
    coco.add_argument("--tfds-data-dir", default=None, help="TFDS data dir holding coco/2017")
    _add_recipe_flags(coco, CocoRecipe)
    coco.set_defaults(func=_train_coco)

    voc = jobs.add_parser("voc", help="DeepLabV3 on PASCAL VOC (embedded synthetic by default)")
    voc.add_argument("--voc-dir", default=None, help="VOCdevkit/VOC2012 directory")
    voc.add_argument("--sbd-dir", default=None,
                     help="SBD 'dataset' directory (cls/*.mat) for the train_aug split")
    _add_recipe_flags(voc, VocRecipe)
    voc.set_defaults(func=_train_voc)

    imagenet = jobs.add_parser("imagenet", help="the classifier on ImageNet (embedded synthetic "
                                                "data by default)")
    _imagenet_data_flags(imagenet)
    imagenet.add_argument("--strategy", default="default", choices=STRATEGIES)
    imagenet.add_argument("--data-service", default=None,
                          help="tf.data service dispatcher, e.g. grpc://host:5000")
    _add_recipe_flags(imagenet, ImagenetRecipe)
    imagenet.set_defaults(func=_train_imagenet)

    for job in (coco, voc, imagenet):
        job.add_argument("--run-dir", default=None, help="where checkpoints and figures go")
        job.add_argument("--backend", default=None, choices=BACKENDS,
                         help="Keras backend to train on (default: KERAS_BACKEND, else "
                              "tensorflow); the .keras checkpoints load on any backend")
        if job is not imagenet:
            job.add_argument("--backbone-weights", default=None,
                             help="'imagenet' or a MobileNetV2 weights file")
        job.add_argument("--init", default=None,
                         help="start from another model: a .keras file, an official .tflite "
                              "file or a TF checkpoint (layers matching in name and shape)")
        job.add_argument("--finetune", action="store_true",
                         help="the recipe's fine-tuning variant (1/10 learning rate and epochs)")
        job.add_argument("--freeze-bn", action="store_true",
                         help="with --init: freeze batch norm (inference statistics)")

    conv = sub.add_parser("convert", help="an official .tflite file or TF checkpoint into a "
                                          ".keras model")
    conv.add_argument("source", help=".tflite file or TF1 checkpoint prefix")
    conv.add_argument("-o", "--output", required=True, help="the .keras file to write")
    conv.add_argument("--drop-background", action="store_true",
                      help="1001-class classifier: keep the 1000 ImageNet classes")
    conv.add_argument("--input-size", type=int, default=None,
                      help="checkpoints: the input side (default from the name, or the "
                           "family's: 224, 300, 513)")
    conv.add_argument("--output-stride", type=int, default=None, choices=(8, 16),
                      help="DeepLab checkpoints: the output stride (default 16)")
    conv.set_defaults(func=_convert, job="convert")

    from pipelines.jobs.deploy import JOBS

    qat_cmd = sub.add_parser("qat", help="quantization-aware fine-tuning of a trained run, "
                                         "then its int8 .tflite and the comparison table")
    _deploy_flags(qat_cmd, JOBS)
    qat_cmd.add_argument("--epochs", type=int, default=2)
    qat_cmd.add_argument("--learning-rate", type=float, default=None,
                         help="default: 1/50 of the recipe's peak")
    qat_cmd.add_argument("--steps-per-epoch", type=int, default=None,
                         help="default: the float run's")
    qat_cmd.add_argument("--scheme", default="tfmot", choices=("tfmot", "keras"),
                         help="tfmot (tf_keras twin + TFMOT) or keras (Keras 3 QAT, plain fit; "
                              "file <job>_qat_keras.tflite)")
    qat_cmd.set_defaults(func=_qat)

    exp = sub.add_parser("export", help="TFLite files of a trained run, then the comparison "
                                        "table (deploy.md/png)")
    _deploy_flags(exp, JOBS)
    exp.add_argument("--modes", default="float32,int8",
                     help="comma-separated: float32, float16, dynamic, int8")
    exp.add_argument("--no-metadata", action="store_true",
                     help="leave out the TFLite metadata (labels, normalization) that MediaPipe "
                          "Tasks needs")
    exp.add_argument("--quantizer", default="converter", choices=("converter", "litert"),
                     help="who makes the int8 file: the TFLite converter, or LiteRT Quantizer "
                          "(file <job>_int8_litert.tflite)")
    exp.set_defaults(func=_export)

    pred = sub.add_parser("predict", help="run a .keras or .tflite model on image files: an "
                                          "annotated PNG per image and a JSON of the results")
    pred.add_argument("job", choices=JOBS)
    pred.add_argument("--model", required=True, help=".keras or .tflite file")
    pred.add_argument("images", nargs="+", metavar="IMAGE")
    pred.add_argument("--runtime", default="litert", choices=("litert", "mediapipe"),
                      help=".tflite files: LiteRT, or MediaPipe Tasks (in .venv-mediapipe)")
    pred.add_argument("--out-dir", default=None, help="default <run dir>/predict")
    pred.add_argument("--run-dir", default=None,
                      help="the run whose class names apply (default runs/<job>)")
    pred.add_argument("--min-score", type=float, default=0.3, help="detector boxes drawn")
    pred.set_defaults(func=_predict)

    ev = sub.add_parser("eval", help="evaluate a .keras model or a .tflite file")
    evjobs = ev.add_subparsers(dest="job", required=True)
    for name in JOBS:
        job = evjobs.add_parser(name)
        job.add_argument("--model", default=None, help=".keras model file")
        job.add_argument("--tflite", default=None, help=".tflite file (evaluated with the "
                                                        "interpreter on the run's val split)")
        job.add_argument("--run-dir", default=None,
                         help="the trained run whose data and recipe apply (default runs/<job>)")
        job.add_argument("--no-keras", action="store_true",
                         help="with --tflite: skip the float Keras model's metric")
        if name == "imagenet":
            _imagenet_data_flags(job)
        job.set_defaults(func=_eval)
    return parser


def main(argv=None):
    """Runs a command. An expected failure (bad data, a bad file or argument, a full disk) is one
    line on stderr naming the file or argument, exit status 2; anything else is one line too,
    exit status 1. ``--debug`` (anywhere) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        select_backend(argv)
    except ValueError as err:
        print(f"keras-mnv2: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if getattr(args, "run_dir", "") is None and args.command != "eval":
        args.run_dir = f"runs/{args.job}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("keras-mnv2: interrupted (a training run resumes from its last finished epoch "
              "when the same command is run again)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure becomes one readable line
        if debug:
            raise
        if isinstance(err, _expected_errors()):
            print(f"keras-mnv2: error: {error_line(err)}", file=sys.stderr)
            return 2
        print(f"keras-mnv2: internal error: {type(err).__name__}: {error_line(err)} (run again "
              "with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
