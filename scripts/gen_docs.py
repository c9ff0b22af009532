"""Pages the documentation site builds from the code (mkdocs-gen-files runs this at every build,
so they never go stale):

- ``reference/cli.md``: the help of every ``keras-mnv2`` command, from
  ``pipelines.cli.build_parser()``;
- the recipe tables of the training pages: a line
  ``<!-- recipe-table: pipelines.jobs.detection -->`` becomes the table of that job's ``PAPER``
  and ``EMBEDDED`` recipes, each field with its ``keras-mnv2 train`` flag and the comment beside
  it in the source;
- ``notebooks/*.ipynb``: the repository's notebooks, with their outputs, for mkdocs-jupyter.
"""

import argparse
import dataclasses
import importlib
import inspect
import os
import pathlib
import re
import sys

import mkdocs_gen_files

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines import cli  # noqa: E402

RECIPE_MARKER = re.compile(r"^<!-- recipe-table: ([\w.]+) -->$", re.M)


def _subcommands(parser):
    """(name, subparser) of each subcommand of ``parser``, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _command_sections(parser, prog, depth=2):
    parser.prog = prog
    yield f"{'#' * depth} `{prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"
    for name, sub in _subcommands(parser):
        yield from _command_sections(sub, f"{prog} {name}", min(depth + 1, 4))


def cli_reference():
    parser = cli.build_parser()
    os.environ["COLUMNS"] = "100"  # argparse wraps the help at this width
    parts = [
        "# Command line: `keras-mnv2`\n",
        "Every command and its options, as `keras-mnv2 <command> --help` prints them (this page "
        "is generated from the parser at each build of the site). `python -m pipelines.cli` is "
        "the same program.\n",
    ]
    parts += _command_sections(parser, "keras-mnv2")
    return "\n".join(parts)


def _field_comments(cls):
    """{field: the comment beside it in the class source, or on the lines just above it}."""
    comments, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment = re.match(r"\s+#\s*(.+)$", line)
        field = re.match(r"\s+(\w+): [^=]+=([^#]*)(?:#\s*(.+))?$", line)
        if comment:
            above.append(comment.group(1).strip())
        elif field:
            text = field.group(3) or " ".join(above)
            if text:
                comments[field.group(1)] = text.strip()
            above = []
        else:
            above = []
    return comments


def _find_parser(parser, path):
    """The subparser at the end of the command ``path`` (e.g. ``["train", "coco"]``), or None."""
    for name, sub in _subcommands(parser):
        if name == path[0]:
            return sub if len(path) == 1 else _find_parser(sub, path[1:])
    return None


def _train_flags(job):
    """{recipe field: flag} of ``keras-mnv2 train <job>``."""
    parser = _find_parser(cli.build_parser(), ["train", job])
    if parser is None:
        raise SystemExit(f"gen_docs: keras-mnv2 has no command 'train {job}'")
    flags = {}
    for action in parser._actions:
        options = [o for o in action.option_strings
                   if o.startswith("--") and not o.startswith("--no-")]
        if options and action.help != argparse.SUPPRESS:
            named = "--" + action.dest.replace("_", "-")
            flags[action.dest] = named if named in options else options[0]
    return flags


def _cell(value):
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def recipe_table(module_name):
    module = importlib.import_module(module_name)
    paper, embedded = module.PAPER, module.EMBEDDED
    job = {"detection": "coco", "segmentation": "voc", "classification": "imagenet"}[
        module_name.rsplit(".", 1)[-1]]
    flags = _train_flags(job)
    comments = _field_comments(type(paper))
    rows = [
        f"Every field of `{module_name}.{type(paper).__name__}` is a flag of `keras-mnv2 train "
        f"{job}`; `PAPER` is what real data trains with, `EMBEDDED` the embedded default "
        "(table generated from the source).\n",
        "| field | flag | `PAPER` | `EMBEDDED` | meaning |",
        "|---|---|---|---|---|",
    ]
    for field in dataclasses.fields(paper):
        a, b = getattr(paper, field.name), getattr(embedded, field.name)
        shown_b = _cell(b) if a != b else "same"
        flag = flags.get(field.name)
        rows.append(f"| `{field.name}` | {f'`{flag}`' if flag else ''} | {_cell(a)} | {shown_b} "
                    f"| {comments.get(field.name, '').replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def main():
    with mkdocs_gen_files.open("reference/cli.md", "w") as page:
        page.write(cli_reference())
    for path in sorted((REPO / "docs").rglob("*.md")):
        text = path.read_text()
        if RECIPE_MARKER.search(text):
            name = path.relative_to(REPO / "docs").as_posix()
            with mkdocs_gen_files.open(name, "w") as page:
                page.write(RECIPE_MARKER.sub(lambda m: recipe_table(m.group(1)), text))
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        with mkdocs_gen_files.open(f"notebooks/{notebook.name}", "w") as page:
            page.write(notebook.read_text())


main()
