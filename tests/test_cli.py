"""The ``keras-mnv2`` command line (pipelines/cli.py): one shape, ``<verb> <job> [flags]``, one
flag per concept, every recipe flag with its help and both recipes' defaults, the recipe a
``train`` run uses said on stdout, old spellings still parsed with a warning."""

import dataclasses
import re

import pytest

import keras_mnv2
from keras_mnv2.errors import InputError, MissingFileError
from pipelines import cli
from pipelines.jobs import classification, deploy, detection, segmentation

MODULES = {"coco": detection, "voc": segmentation, "imagenet": classification}
JOB_VERBS = ("train", "eval", "export", "qat", "predict")
VERB_NEEDS = {"predict": ["--model", "m.tflite", "photo.png"]}  # its required flags


def _help(capsys, *argv):
    """The --help text of ``keras-mnv2 *argv``."""
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _help_entries(text):
    """``{first flag: its help entry, whitespace collapsed}`` of a --help text."""
    entries = {}
    for chunk in re.split(r"\n(?=  -)", text)[1:]:
        entries[chunk.split()[0].rstrip(",")] = " ".join(chunk.split())
    return entries


@pytest.mark.parametrize("verb", JOB_VERBS)
def test_every_verb_takes_the_job_as_its_first_word(verb):
    assert cli.JOBS == deploy.JOBS
    parser = cli.build_parser()
    for job in cli.JOBS:
        args = parser.parse_args([verb, job, *VERB_NEEDS.get(verb, [])])
        assert (args.command, args.job) == (verb, job)
    for wrong in ([verb], [verb, "mnist", *VERB_NEEDS.get(verb, [])]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(wrong)
        assert info.value.code == 2


def test_convert_and_profile_take_no_job():
    parser = cli.build_parser()
    args = parser.parse_args(["convert", "model.tflite", "-o", "m.keras"])
    assert (args.source, args.output, args.func) == ("model.tflite", "m.keras", cli._convert)
    args = parser.parse_args(["profile", "--input-size", "160"])
    assert (args.input_size, args.func) == (160, cli._profile)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"keras-mnv2 {keras_mnv2.__version__}\n"


@pytest.mark.parametrize("argv, field, value, old, new", [
    (["train", "imagenet", "--resolution", "96"], "resolution", 96, "--resolution",
     "--input-size"),
    (["train", "imagenet", "--size", "96"], "resolution", 96, "--size", "--input-size"),
    (["train", "coco", "--size", "300"], "input_size", 300, "--size", "--input-size"),
    (["profile", "--size", "160"], "input_size", 160, "--size", "--input-size"),
    (["train", "imagenet", "--dropout", "0.3"], "dropout", 0.3, "--dropout", "--dropout-rate"),
    (["train", "voc", "--dropout", "0.3"], "dropout_rate", 0.3, "--dropout", "--dropout-rate"),
    (["train", "coco", "--cache", "true"], "cache", True, "--cache true", "--cache"),
    (["train", "coco", "--cache", "false"], "cache", False, "--cache false", "--no-cache"),
    (["train", "voc", "--flip=no"], "flip", False, "--flip no", "--no-flip"),
])
def test_old_spellings_parse_to_the_new_field_and_warn(capsys, argv, field, value, old, new):
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, field) == value
    assert capsys.readouterr().err == (f"keras-mnv2: warning: {old} is deprecated; use {new} "
                                       "(the old spelling goes in the next release)\n")


def test_new_spellings_say_nothing(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "imagenet", "--input-size", "96", "--dropout-rate", "0.3"])
    assert (args.resolution, args.dropout) == (96, 0.3)
    assert parser.parse_args(["train", "coco", "--input-size", "300"]).input_size == 300
    assert capsys.readouterr().err == ""


def test_recipe_booleans_are_flag_pairs(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["train", "coco", "--cache"]).cache is True
    assert parser.parse_args(["train", "coco", "--no-cache"]).cache is False
    assert parser.parse_args(["train", "coco"]).cache is None  # the recipe's value applies
    args = parser.parse_args(["train", "imagenet", "--no-use-ema", "--validate"])
    assert (args.use_ema, args.validate) == (False, True)
    recipe = cli._recipe(parser.parse_args(["train", "voc", "--no-flip"]), segmentation, True)
    assert recipe == dataclasses.replace(segmentation.EMBEDDED, flip=False)
    assert capsys.readouterr().err == ""
    for bad in (["train", "coco", "--cache", "abc"], ["train", "coco", "--cache=abc"],
                ["train", "coco", "--no-cache", "true"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(bad)
        assert info.value.code == 2
    assert "argument --cache: expected true or false" in capsys.readouterr().err


@pytest.mark.parametrize("job", cli.JOBS)
def test_every_recipe_flag_has_help_and_both_recipes_defaults(capsys, monkeypatch, job):
    monkeypatch.setenv("COLUMNS", "100")
    entries = _help_entries(_help(capsys, "train", job))
    module = MODULES[job]
    comments = cli.field_comments(type(module.PAPER))
    for field in dataclasses.fields(module.PAPER):
        flag = cli.recipe_flag(field.name)
        paper, embedded = getattr(module.PAPER, field.name), getattr(module.EMBEDDED, field.name)
        assert comments.get(field.name), f"{field.name} has no comment to be its help"
        entry = entries[flag]
        assert " ".join(comments[field.name].split()) in entry, entry
        default = f"{embedded}" if paper == embedded else f"{embedded} embedded, {paper} paper"
        assert entry.endswith(f"(default: {default})"), entry
    assert not {"--size", "--resolution", "--dropout"} & set(entries)  # old spellings hidden
    assert entries["--recipe"].endswith("else embedded)")


def test_no_flag_shows_a_default_of_none(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    helps = [_help(capsys), _help(capsys, "convert"), _help(capsys, "profile")]
    for verb in JOB_VERBS:
        helps.append(_help(capsys, verb))
        helps.extend(_help(capsys, verb, job) for job in cli.JOBS)
    assert all("(default: None)" not in text for text in helps)
    assert "(default: 2)" in _help_entries(_help(capsys, "qat", "coco"))["--epochs"]
    assert "<verb> <job> [flags]" in helps[0]


@pytest.mark.parametrize("argv, job, name, line", [
    (["train", "coco"], "coco", "embedded",
     "recipe: embedded (small and quick, for the synthetic data: 16 epochs, batch 32, 160 px), "
     "the default without a data flag; --recipe paper for the paper's"),
    (["train", "coco", "--coco-dir", "/data/coco"], "coco", "paper",
     "recipe: paper (the TF Object Detection API's ssdlite_mobilenet_v2_coco: 100 epochs, "
     "batch 24, 320 px), the default with --coco-dir; --recipe embedded for the small quick "
     "one"),
    (["train", "coco", "--coco-dir", "/data/coco", "--recipe", "embedded"], "coco", "embedded",
     "recipe: embedded (small and quick, for the synthetic data: 16 epochs, batch 32, 160 px), "
     "from --recipe"),
    (["train", "voc", "--recipe", "paper"], "voc", "paper",
     "recipe: paper (DeepLabv3 as the MobileNetV2 paper trained it, sec. 6.3: 46 epochs, batch "
     "16, 513 px), from --recipe"),
    (["train", "imagenet", "--tfrecord-dir", "/shards"], "imagenet", "paper",
     "recipe: paper (the MobileNetV2 paper, sec. 6.1: 300 epochs, batch 96, 224 px), the "
     "default with --tfrecord-dir; --recipe embedded for the small quick one"),
])
def test_the_recipe_is_chosen_explicitly_and_said(capsys, argv, job, name, line):
    args = cli.build_parser().parse_args(argv)
    recipe = cli.chosen_recipe(args, MODULES[job])
    assert recipe == getattr(MODULES[job], name.upper())
    assert capsys.readouterr().out == line + "\n"


def test_the_recipe_line_shows_the_flags_applied(capsys):
    args = cli.build_parser().parse_args(["train", "coco", "--finetune", "--input-size", "300"])
    recipe = cli.chosen_recipe(args, detection)
    assert (recipe.input_size, recipe.epochs) == (300, detection.EMBEDDED.epochs // 10)
    assert capsys.readouterr().out.startswith(
        "recipe: embedded, fine-tuning variant (small and quick, for the synthetic data: 1 "
        "epochs, batch 32, 300 px)")


def test_train_runs_the_chosen_recipe_and_prints_it_first(tmp_path, capsys, monkeypatch):
    """`make train-coco COCO_DIR=...` (train coco --coco-dir DIR) runs the paper's recipe, as
    before; the job itself is replaced here, only what the CLI hands it is checked."""
    calls = []

    def run(**kwargs):
        calls.append((kwargs, capsys.readouterr().out))
        return {}

    monkeypatch.setattr(detection, "run", run)
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "coco", "--coco-dir", str(tmp_path), "--run-dir", run_dir,
                     "--epochs", "3"]) == 0
    kwargs, printed = calls[0]
    assert kwargs["recipe"] == dataclasses.replace(detection.PAPER, epochs=3)
    assert (kwargs["coco_dir"], kwargs["run_dir"]) == (str(tmp_path), run_dir)
    assert printed.startswith("recipe: paper (the TF Object Detection API's")
    assert cli.main(["train", "coco", "--run-dir", run_dir]) == 0
    assert calls[1][0]["recipe"] == detection.EMBEDDED


@pytest.mark.parametrize("error, code", [
    (KeyError("num_anchors"), 1),  # a bug of ours: not bad input
    (ValueError("operands could not be broadcast together"), 1),
    (OSError("[Errno 5] Input/output error"), 1),
    (InputError("--epochs must be >= 1, got 0"), 2),
    (MissingFileError("COCO dataset root not found: /nope"), 2),
])
def test_input_errors_are_one_line_exit_2_and_bugs_show_their_traceback(
        tmp_path, capsys, monkeypatch, error, code):
    def run(**kwargs):
        raise error

    monkeypatch.setattr(detection, "run", run)
    argv = ["train", "coco", "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    if code == 2:
        assert err == f"keras-mnv2: error: {error}\n"
    else:
        assert "Traceback (most recent call last)" in err and "in run" in err
        assert err.rstrip().splitlines()[-1].startswith(
            f"keras-mnv2: internal error: {type(error).__name__}: ")
    with pytest.raises(type(error)):  # --debug: raised as it is, either kind
        cli.main(argv + ["--debug"])
