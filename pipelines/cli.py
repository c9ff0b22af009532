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
    print(
        f"keras-mnv2 train {args.job}: not built yet (tracked in issue {ISSUES[args.job]}). "
        "The MobileNetV2 builder, profile and TFLite conversion are available now; see README.md.",
        file=sys.stderr,
    )
    return 2


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
    train.set_defaults(func=_train)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"keras-mnv2: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
