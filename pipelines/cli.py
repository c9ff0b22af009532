"""The ``keras-mnv2`` command line: ``keras-mnv2 <verb> <job> [flags]``."""

import argparse
import errno
import os
import re
import sys
import traceback

BACKENDS = ("tensorflow", "jax", "torch")
TENSORFLOW_ONLY = ("export", "qat")  # TFLite conversion and TFMOT need the TF backend

# The jobs, the same three under every verb that takes one (train, eval, export, qat, predict).
JOBS = ("coco", "voc", "imagenet")
JOB_HELP = {"coco": "SSDLite on COCO", "voc": "Mobile DeepLabv3 on PASCAL VOC",
            "imagenet": "the MobileNetV2 classifier on ImageNet"}
JOB_MODULES = {"coco": "detection", "voc": "segmentation", "imagenet": "classification"}
# The flags naming real data: given one, ``train`` runs the paper's recipe unless --recipe says
# otherwise; given none, the embedded synthetic data and recipe.
DATA_FLAGS = {"coco": ("coco_dir", "tfds_data_dir"), "voc": ("voc_dir",),
              "imagenet": ("data_dir", "tfds_data_dir", "tfds_manual_dir", "tfrecord_dir")}
PAPER_SOURCES = {"coco": "the TF Object Detection API's ssdlite_mobilenet_v2_coco",
                 "voc": "DeepLabv3 as the MobileNetV2 paper trained it, sec. 6.3",
                 "imagenet": "the MobileNetV2 paper, sec. 6.1"}
SIZE_FIELDS = {"coco": "input_size", "voc": "crop_size", "imagenet": "resolution"}

# One flag per concept across the jobs: the recipe fields whose flag is not their own name.
FIELD_FLAGS = {"resolution": "--input-size", "dropout": "--dropout-rate"}
# Old spellings: parsed for one more release, with a warning on stderr.
OLD_SPELLINGS = {"--input-size": ("--size", "--resolution"), "--dropout-rate": ("--dropout",)}


def warn_deprecated(old, new):
    print(f"keras-mnv2: warning: {old} is deprecated; use {new} (the old spelling goes in the "
          "next release)", file=sys.stderr)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, except None and a store_true's False: there the help
    says what applies."""

    def _get_help_string(self, action):
        if action.default is None or (action.default is False and action.nargs == 0):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the old boolean spelling: ``--cache true`` / ``--cache false`` (now
    ``--cache`` / ``--no-cache``) still parse, with a warning."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.booleans = set()  # the --flag (of --flag/--no-flag) pairs

    def parse_known_args(self, args=None, namespace=None):
        if args is not None and self.booleans:
            args = self._new_booleans(list(args))
        return super().parse_known_args(args, namespace)

    def _new_booleans(self, args):
        """``--flag VALUE`` and ``--flag=VALUE`` of a boolean become ``--flag`` or ``--no-flag``
        (a parser with booleans has no positionals, so a word after one is its old value)."""
        out, i = [], 0
        while i < len(args):
            flag, eq, value = args[i].partition("=")
            if args[i] == "--":
                return out + args[i:]
            if flag in self.booleans and not eq and i + 1 < len(args) \
                    and not args[i + 1].startswith("-"):
                eq, value = "=", args[i + 1]
                i += 1
            if flag in self.booleans and eq:
                try:
                    on = parse_bool(value)
                except argparse.ArgumentTypeError as err:
                    self.error(f"argument {flag}: {err}")
                new = flag if on else "--no-" + flag[2:]
                warn_deprecated(f"{flag} {value}", new)
                out.append(new)
            else:
                out.append(args[i])
            i += 1
        return out


class OldSpelling(argparse.Action):
    """An old spelling of a flag, hidden from --help: sets the same field, with a warning."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        kwargs.update(default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.new)
        setattr(namespace, self.dest, values)


def add_flag(parser, flag, **kwargs):
    """``parser.add_argument(flag, ...)`` and the flag's OLD_SPELLINGS beside it."""
    action = parser.add_argument(flag, **kwargs)
    for old in OLD_SPELLINGS.get(flag, ()):
        parser.add_argument(old, action=OldSpelling, new=flag, dest=action.dest,
                            type=action.type, choices=action.choices, metavar=action.metavar)
    return action


def version():
    """The installed package's version (keras_mnv2.__version__ when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("keras_mnv2")
    except metadata.PackageNotFoundError:
        import keras_mnv2

        return keras_mnv2.__version__


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
            from keras_mnv2.errors import InputError  # keras_mnv2 imports Keras: not before

            raise InputError(f"Keras was already imported with the {current} backend; "
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


def _wrapped_input_error(message):
    """An input error our readers raised inside tf.data (a py_function), found again in
    TensorFlow's message: the match (group 2 its own message), or None."""
    from keras_mnv2.errors import InputError

    names, todo = set(), [InputError]
    while todo:  # InputError and every subclass defined so far (VocFormatError, ...)
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return re.search(r"\b(" + "|".join(sorted(names)) + r"): (.+)", message or "")


def is_input_error(err):
    """Whether ``err`` is an expected failure, bad input rather than a bug: an ``InputError``
    (``keras_mnv2.errors``: raised where an argument, recipe field, file or folder is checked),
    one raised inside the input pipeline, a file TensorFlow did not find, or a full disk."""
    from keras_mnv2.errors import InputError

    if isinstance(err, InputError):
        return True
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(err, tf.errors.OpError):
        return (isinstance(err, tf.errors.NotFoundError)
                or _wrapped_input_error(err.message) is not None)
    return False


def error_line(err):
    """One line for an expected failure: the message naming the file or argument, without
    TensorFlow's wrapping (an error raised inside the input pipeline)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(err, tf.errors.OpError):
        found = _wrapped_input_error(err.message)
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


def _profile(args):
    import keras_mnv2

    model = keras_mnv2.MobileNetV2(
        alpha=args.alpha,
        input_shape=(args.input_size, args.input_size, 3),
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


def recipe_choice(args):
    """``(name, why)``: the recipe a ``train`` run starts from. --recipe when given; else paper
    when a data flag names real data, embedded when none does (the synthetic data)."""
    if getattr(args, "recipe", None):
        return args.recipe, "from --recipe"
    given = [name for name in DATA_FLAGS[args.job] if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        return "paper", f"the default with {flag}; --recipe embedded for the small quick one"
    return "embedded", "the default without a data flag; --recipe paper for the paper's"


def chosen_recipe(args, module):
    """The recipe ``train <job>`` runs, after printing one line saying which it is and why."""
    name, why = recipe_choice(args)
    recipe = _recipe(args, module, embedded=name == "embedded")
    source = (PAPER_SOURCES[args.job] if name == "paper"
              else "small and quick, for the synthetic data")
    variant = ", fine-tuning variant" if getattr(args, "finetune", False) else ""
    size = getattr(recipe, SIZE_FIELDS[args.job])
    print(f"recipe: {name}{variant} ({source}: {recipe.epochs} epochs, batch "
          f"{recipe.batch_size}, {size} px), {why}", flush=True)
    return recipe


def _train_coco(args):
    from pipelines.jobs import detection

    metrics = detection.run(coco_dir=args.coco_dir, tfds_data_dir=args.tfds_data_dir,
                            run_dir=args.run_dir, recipe=chosen_recipe(args, detection),
                            backbone_weights=args.backbone_weights, init=args.init,
                            freeze_bn=args.freeze_bn, strategy=args.strategy,
                            mixed_precision=args.mixed_precision,
                            data_service=args.data_service, jit_compile=args.jit_compile)
    return 1 if metrics.get("stopped_on_nan") else 0


def _train_voc(args):
    from pipelines.jobs import segmentation

    metrics = segmentation.run(voc_dir=args.voc_dir, sbd_dir=args.sbd_dir, run_dir=args.run_dir,
                               recipe=chosen_recipe(args, segmentation),
                               backbone_weights=args.backbone_weights, init=args.init,
                               freeze_bn=args.freeze_bn, strategy=args.strategy,
                               mixed_precision=args.mixed_precision,
                               data_service=args.data_service, jit_compile=args.jit_compile)
    return 1 if metrics.get("stopped_on_nan") else 0


def _train_imagenet(args):
    from pipelines.jobs import classification

    metrics = classification.run(
        data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir,
        tfds_manual_dir=args.tfds_manual_dir, tfrecord_dir=args.tfrecord_dir,
        val_labels=args.val_labels, run_dir=args.run_dir,
        recipe=chosen_recipe(args, classification), strategy=args.strategy,
        data_service=args.data_service, init=args.init, freeze_bn=args.freeze_bn,
        mixed_precision=args.mixed_precision)
    return 1 if metrics.get("stopped_on_nan") else 0


SPLITS_HELP = ("split-expansion blocks (paper sec. 5.1): an int (every block), or per block from the "
               "stem, e.g. 3,6,3 (the rest whole); the files get a _split suffix")


def _convert(args):
    from keras_mnv2 import convert
    from keras_mnv2.errors import InputError
    from keras_mnv2.files import write_file

    if not args.output.endswith(".keras"):
        raise InputError(f"--output must end in .keras, got {args.output}")
    kwargs = {"drop_background": args.drop_background}
    if not args.source.endswith(".tflite"):
        kwargs.update(input_size=args.input_size, output_stride=args.output_stride)
    elif args.input_size or args.output_stride:
        raise InputError("--input-size and --output-stride apply to checkpoints; a .tflite file "
                         "has its own")
    model = convert.load(args.source, **kwargs)
    write_file(args.output, model.save)
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


def _predict_model(args):
    from pipelines import predict

    args.preset = args.preset or args.model
    return predict.main(args)


def _export_model(args):
    from pipelines.export_model import export_model

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip()) if args.modes else None
    export_model(args.preset or args.model, modes=modes,
                 calibration_images=args.calibration_images, out_dir=args.out_dir,
                 io_dtype=args.io_dtype, metadata=False if args.no_metadata else "auto",
                 quantizer=args.quantizer)
    return 0


def _eval(args):
    import json
    import os

    from keras_mnv2.errors import InputError
    from pipelines.jobs import deploy

    if (args.model is None) == (args.tflite is None):
        raise InputError("give one of --model PATH (a .keras file) and --tflite PATH")
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

    from keras_mnv2.errors import InputError, MissingFileError

    if not os.path.exists(path):
        raise MissingFileError(f"model file not found: {path}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a .keras model file (not a zip archive: cut short, or "
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


def field_comments(recipe_class):
    """``{field: comment}`` from the recipe's source: the comment after each field, else the
    comment line(s) right above it (the recipe dataclass is where each field is explained)."""
    import inspect

    comments, above = {}, []
    for line in inspect.getsource(recipe_class).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        found = re.match(r"(\w+): \w+ = [^#]*(?:#\s*(.*))?$", text)
        if found:
            comments[found.group(1)] = found.group(2) or " ".join(above)
        above = []
    return comments


def recipe_flag(field_name):
    """The ``--flag`` of a recipe field (FIELD_FLAGS, else the field's name)."""
    return FIELD_FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def _add_recipe_flags(parser, job):
    """--recipe, --finetune, and one flag per field of the job's recipe. A field flag's default is
    None (the chosen recipe's value applies); its help shows both recipes' values."""
    import dataclasses
    import importlib

    module = importlib.import_module(f"pipelines.jobs.{JOB_MODULES[job]}")
    sources = ", ".join(f"--{f.replace('_', '-')}" for f in DATA_FLAGS[job])
    group = parser.add_argument_group(
        "recipe", "--recipe picks the recipe; each flag below overrides one of its fields, "
                  "whose value in each recipe is the flag's default")
    group.add_argument("--recipe", default=None, choices=("paper", "embedded"),
                       help=f"paper: {PAPER_SOURCES[job]}; embedded: small and quick, for the "
                            f"synthetic data (default: paper with {sources}, else embedded)")
    group.add_argument("--finetune", action="store_true",
                       help="the recipe's fine-tuning variant (1/10 learning rate and epochs, no "
                            "warmup)")
    comments = field_comments(type(module.PAPER))
    for field in dataclasses.fields(module.PAPER):
        paper, embedded = getattr(module.PAPER, field.name), getattr(module.EMBEDDED, field.name)
        default = f"{embedded}" if paper == embedded else f"{embedded} embedded, {paper} paper"
        flag = recipe_flag(field.name)
        text = (comments.get(field.name) or field.name).replace("%", "%%")
        kwargs = dict(dest=field.name, default=None, help=f"{text} (default: {default})")
        if isinstance(paper, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            parser.booleans.add(flag)
        else:
            add_flag(group, flag, type=type(paper), metavar=flag[2:].upper().replace("-", "_"),
                     **kwargs)


def _deploy_flags(parser):
    """What ``qat`` and ``export`` both take: the run, the int8 file's input/output type, the
    comparison table and the split expansions."""
    parser.add_argument("--run-dir", default=None, help="the trained run (default runs/<job>)")
    parser.add_argument("--io-dtype", default="float32", choices=("float32", "int8", "uint8"),
                        help="input/output type of the int8 file")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison table")
    parser.add_argument("--expansion-splits", default=None, help=SPLITS_HELP)


def _train_flags(parser, job):
    from pipelines.jobs.training import STRATEGIES

    data = parser.add_argument_group("data", "none given: the embedded synthetic data "
                                             "(generated once under data/)")
    if job == "coco":
        data.add_argument("--coco-dir", default=None, help="COCO-format directory "
                          "(annotations/instances_<split>.json + images)")
        data.add_argument("--tfds-data-dir", default=None, help="TFDS data dir holding coco/2017")
    elif job == "voc":
        data.add_argument("--voc-dir", default=None, help="VOCdevkit/VOC2012 directory")
        data.add_argument("--sbd-dir", default=None,
                          help="SBD 'dataset' directory (cls/*.mat) for the train_aug split")
    else:
        _imagenet_data_flags(data)
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="tf.distribute strategy (multi_worker: TF_CONFIG names the cluster)")
    parser.add_argument("--data-service", default=None,
                        help="tf.data service dispatcher, e.g. grpc://host:5000")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="train in mixed_float16 (GPU, loss scaling) or mixed_bfloat16 "
                             "(CPU, TPU); the saved model stays float32")
    parser.add_argument("--run-dir", default=None,
                        help="where checkpoints and figures go (default runs/<job>)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help="Keras backend to train on (default: KERAS_BACKEND, else "
                             "tensorflow); the .keras checkpoints load on any backend")
    if job != "imagenet":  # the ImageNet recipe has its own jit_compile field (--jit-compile)
        parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                            default=None,
                            help="compile the training step with XLA (torch: torch.compile), or "
                                 "not (default: Keras' choice: XLA on JAX, and on TensorFlow "
                                 "with a GPU)")
        parser.booleans.add("--jit-compile")
        parser.add_argument("--backbone-weights", default=None,
                            help="'imagenet' or a MobileNetV2 weights file")
    parser.add_argument("--init", default=None,
                        help="start from another model: a .keras file, an official .tflite "
                             "file or a TF checkpoint (layers matching in name and shape)")
    parser.add_argument("--freeze-bn", action="store_true",
                        help="with --init: freeze batch norm (inference statistics)")
    _add_recipe_flags(parser, job)
    parser.set_defaults(func={"coco": _train_coco, "voc": _train_voc,
                              "imagenet": _train_imagenet}[job])


def _eval_flags(parser, job):
    parser.add_argument("--model", default=None, help=".keras model file")
    parser.add_argument("--tflite", default=None, help=".tflite file (evaluated with the "
                                                       "interpreter on the run's val split)")
    parser.add_argument("--run-dir", default=None,
                        help="the trained run whose data and recipe apply (default runs/<job>)")
    parser.add_argument("--no-keras", action="store_true",
                        help="with --tflite: skip the float Keras model's metric")
    if job == "imagenet":
        _imagenet_data_flags(parser)
    parser.set_defaults(func=_eval)


def _export_flags(parser, job):
    _deploy_flags(parser)
    parser.add_argument("--modes", default="float32,int8",
                        help="comma-separated: float32, float16, dynamic, int8")
    parser.add_argument("--no-metadata", action="store_true",
                        help="leave out the TFLite metadata (labels, normalization) that "
                             "MediaPipe Tasks needs")
    parser.add_argument("--quantizer", default="converter", choices=("converter", "litert"),
                        help="who makes the int8 file: the TFLite converter, or LiteRT Quantizer "
                             "(file <job>_int8_litert.tflite)")
    parser.set_defaults(func=_export)


def _qat_flags(parser, job):
    _deploy_flags(parser)
    parser.add_argument("--epochs", type=int, default=2, help="QAT epochs")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 1/50 of the recipe's peak")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="default: the float run's")
    parser.add_argument("--scheme", default="tfmot", choices=("tfmot", "keras"),
                        help="tfmot (tf_keras twin + TFMOT) or keras (Keras 3 QAT, plain fit; "
                             "file <job>_qat_keras.tflite)")
    parser.set_defaults(func=_qat)


def _predict_flags(parser, job):
    parser.add_argument("--model", required=True, help=".keras or .tflite file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--runtime", default="litert", choices=("litert", "mediapipe"),
                        help=".tflite files: LiteRT, or MediaPipe Tasks (in .venv-mediapipe)")
    parser.add_argument("--out-dir", default=None, help="default <run dir>/predict")
    parser.add_argument("--run-dir", default=None,
                        help="the run whose class names apply (default runs/<job>)")
    parser.add_argument("--min-score", type=float, default=0.3, help="detector boxes drawn")
    parser.set_defaults(func=_predict)


# The verbs that take a job: (help, the function adding a job's flags).
JOB_VERBS = {
    "train": ("train a model (embedded synthetic data unless a data flag names real data)",
              _train_flags),
    "eval": ("evaluate a .keras model or a .tflite file", _eval_flags),
    "export": ("TFLite files of a trained run, then the comparison table (deploy.md/png); "
               "any model: keras-mnv2 export --model FILE.keras | --preset NAME "
               "[--calibration-images DIR]", _export_flags),
    "qat": ("quantization-aware fine-tuning of a trained run, then its int8 .tflite and the "
            "comparison table", _qat_flags),
    "predict": ("run a .keras or .tflite model on image files: an annotated PNG per image and a "
                "JSON of the results; an official model: keras-mnv2 predict --preset NAME "
                "IMAGE...", _predict_flags),
}


# The verbs that also take a model instead of a job: ``keras-mnv2 predict --preset NAME
# IMAGE...``, ``keras-mnv2 export --model FILE.keras``; the model says what it is.
MODEL_VERBS = ("predict", "export")


def takes_a_model(argv):
    """Whether ``argv`` is a model form: a ``MODEL_VERBS`` verb followed by a flag, not a job."""
    return (len(argv) > 1 and argv[0] in MODEL_VERBS and argv[1].startswith("-")
            and argv[1] not in ("-h", "--help"))


def build_model_parser(verb):
    """The parser of ``keras-mnv2 <verb> --preset NAME | --model FILE.keras ...`` (no job)."""
    parser = Parser(prog=f"keras-mnv2 {verb}", description=(
        f"keras-mnv2 {verb} --preset NAME | --model FILE.keras: "
        + ("run a model on image files or folders: an annotated PNG per image and a JSON of "
           "the results, named with the model's own class names" if verb == "predict" else
           "TFLite files of any model, with its class names in the metadata")
        + "; the model says what it is (no job)."))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", default=None,
                        help="a name of keras_mnv2.presets() (downloaded once into the Keras "
                             "cache), or a local official file or folder: the publisher's "
                             "archive, a checkpoint, a .tflite or .h5 file")
    source.add_argument("--model", default=None, help="a .keras model file")
    if verb == "predict":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
        parser.add_argument("--out-dir", default=None,
                            help="default runs/<preset or model name>/predict")
        parser.add_argument("--min-score", type=float, default=0.3, help="detector boxes drawn")
        parser.set_defaults(func=_predict_model)
    else:
        parser.add_argument("--calibration-images", default=None, metavar="DIR",
                            help="photos like those the model will see, for int8 (up to 100)")
        parser.add_argument("--modes", default=None, help="comma-separated: float32, float16, "
                            "dynamic, int8 (default float32, and int8 with "
                            "--calibration-images)")
        parser.add_argument("--io-dtype", default="float32",
                            choices=("float32", "int8", "uint8"),
                            help="input/output type of the int8 file")
        parser.add_argument("--out-dir", default=None, help="default: the .keras file's folder; "
                            "runs/<preset>/tflite for a preset")
        parser.add_argument("--no-metadata", action="store_true",
                            help="leave out the TFLite metadata (labels, normalization)")
        parser.add_argument("--quantizer", default="converter", choices=("converter", "litert"),
                            help="who makes the int8 file: the TFLite converter or LiteRT "
                                 "Quantizer")
        parser.set_defaults(func=_export_model)
    parser.set_defaults(command=verb, job=None)
    return parser


def build_parser():
    parser = Parser(prog="keras-mnv2", description=(
        "keras-mnv2 <verb> <job> [flags]: train, evaluate, export and run MobileNetV2 models; "
        "jobs: coco (SSDLite), voc (Mobile DeepLabv3), imagenet (the classifier)."), epilog=(
        "`keras-mnv2 <verb> --help` lists the jobs; `keras-mnv2 <verb> <job> --help` the flags. "
        "convert and profile take no job: convert's file says what it holds, profile measures "
        "the classifier."))
    parser.add_argument("--version", action="version", version=f"keras-mnv2 {version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also accepted after the "
                             "verb)")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    for verb, (help_text, add_flags) in JOB_VERBS.items():
        verb_parser = verbs.add_parser(verb, help=help_text, description=help_text)
        jobs = verb_parser.add_subparsers(dest="job", required=True, metavar="<job>")
        for job in JOBS:
            add_flags(jobs.add_parser(job, help=JOB_HELP[job],
                                      description=f"keras-mnv2 {verb} {job}: {help_text}"), job)

    conv = verbs.add_parser("convert", help="an official .tflite file or TF checkpoint into a "
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

    prof = verbs.add_parser("profile", help="parameters, MAdds and peak memory of MobileNetV2")
    prof.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    add_flag(prof, "--input-size", type=int, default=224, help="input side in pixels")
    prof.add_argument("--classes", type=int, default=1000, help="classifier outputs")
    prof.add_argument("--output-stride", type=int, default=None, choices=(8, 16, 32),
                      help="input side / feature side (default 32: no dilation)")
    prof.add_argument("--no-top", action="store_true", help="without the classifier head")
    prof.add_argument("--all", action="store_true", help="print every layer")
    prof.set_defaults(func=_profile)
    return parser


def main(argv=None):
    """Runs a command. An expected failure (``is_input_error``: bad data, a bad file or
    argument, a full disk) is one line on stderr naming the file or argument, exit status 2;
    anything else is a bug: its traceback, then one line, exit status 1. ``--debug`` (anywhere)
    raises every error as it is."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        select_backend(argv)
    except ValueError as err:
        print(f"keras-mnv2: error: {err}", file=sys.stderr)
        return 2
    if takes_a_model(argv):  # predict / export --preset NAME | --model FILE: no job
        args = build_model_parser(argv[0]).parse_args(argv[1:])
    else:
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
    except Exception as err:  # noqa: BLE001 - input errors one line, bugs their traceback
        if debug:
            raise
        if is_input_error(err):
            print(f"keras-mnv2: error: {error_line(err)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"keras-mnv2: internal error: {type(err).__name__}: {error_line(err)} (a bug, "
              "not bad input: please report it with the traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
