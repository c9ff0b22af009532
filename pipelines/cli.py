"""The ``keras-mnv2`` command line."""

import argparse
import sys

JOBS = ("coco", "imagenet", "voc")
ISSUES = {"coco": 4, "imagenet": 3, "voc": 5}


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


def _train(args):
    if args.job != "coco":
        print(
            f"keras-mnv2 train {args.job}: not built yet (tracked in issue {ISSUES[args.job]}).",
            file=sys.stderr,
        )
        return 2
    import dataclasses

    from pipelines import detection

    embedded = args.coco_dir is None and args.tfds_data_dir is None
    recipe = detection.EMBEDDED if embedded else detection.PAPER
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(recipe)
                 if getattr(args, f.name, None) is not None}
    recipe = dataclasses.replace(recipe, **overrides)
    metrics = detection.run(coco_dir=args.coco_dir, tfds_data_dir=args.tfds_data_dir,
                            run_dir=args.run_dir, recipe=recipe,
                            backbone_weights=args.backbone_weights)
    return 1 if metrics.get("stopped_on_nan") else 0


def _add_recipe_flags(parser, recipe_class):
    """One --flag per recipe field (default None: the recipe's own value applies)."""
    import dataclasses

    for field in dataclasses.fields(recipe_class):
        kind = type(field.default)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"),
                                default=None, metavar="BOOL")
        else:
            parser.add_argument(flag, type=kind, default=None)


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-mnv2", description=__doc__)
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
    train.add_argument("job", choices=JOBS)
    train.add_argument("--coco-dir", default=None,
                       help="COCO-format directory (annotations/instances_<split>.json + images)")
    train.add_argument("--tfds-data-dir", default=None, help="TFDS data dir holding coco/2017")
    train.add_argument("--run-dir", default=None, help="where checkpoints and figures go")
    train.add_argument("--backbone-weights", default=None,
                       help="'imagenet' or a MobileNetV2 weights file")
    from pipelines.detection import CocoRecipe

    _add_recipe_flags(train, CocoRecipe)
    train.set_defaults(func=_train)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "run_dir", "") is None:
        args.run_dir = f"runs/{args.job}"
    try:
        return args.func(args)
    except ValueError as err:
        print(f"keras-mnv2: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
