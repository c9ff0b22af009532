"""The documentation: the site builds with ``mkdocs build --strict``, every internal link and
anchor of the built pages resolves, and the user documents (README, docs pages, notebooks,
docstrings and comments of the packages) carry no development history or machine paths."""

import ast
import html.parser
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tokenize
import urllib.parse

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# Issue numbers, commit hashes, session diary and paths of the machine a text was written on.
HISTORY = re.compile(
    r"\bissues? #?\d+|\(issue|\bcommit [0-9a-f]{7}|\bthis session\b|/work/|(?<![\w.~])/tmp/",
    re.IGNORECASE)


def _history(text):
    return [m.group(0) for m in HISTORY.finditer(text)]


def test_the_history_pattern_finds_what_it_is_for():
    found = _history("done (issue 4); see issue #12; at commit 5cc80f8 in this session, "
                     "from /work/shared/x and /tmp/tmpab12/data")
    assert len(found) == 6
    assert not _history("a tissue 4 layer, commit the file, runs/tmp/x, ~/tmp/y, data/tmp/z")


def _python_prose(path):
    """(line, text) of every comment and docstring of a Python file."""
    source = path.read_text()
    prose = [(tok.start[0], tok.string) for tok in
             tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                prose.append((node.body[0].lineno, docstring))
    return prose


def _user_documents():
    """(where, text) of every user document."""
    yield "README.md", (REPO / "README.md").read_text()
    yield "CHANGELOG.md", (REPO / "CHANGELOG.md").read_text()
    for path in sorted((REPO / "docs").rglob("*.md")):
        yield str(path.relative_to(REPO)), path.read_text()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            yield f"{path.relative_to(REPO)} cell {index}", "".join(cell["source"])
    for package in ("keras_mnv2", "pipelines", "benchmarks"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, text in _python_prose(path):
                yield f"{path.relative_to(REPO)}:{line}", text


def test_user_documents_carry_no_history_or_machine_paths():
    found = [(where, hits) for where, text in _user_documents() if (hits := _history(text))]
    assert not found, ("development history or machine paths in user documents (history goes "
                       f"to CHANGELOG.md without issue numbers): {found}")


def test_notebook_outputs_name_no_machine_paths():
    machine = re.compile(r"(?<![\w:/.])/(?:tmp|work|home|root|usr|opt|var)/")
    found = []
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            for output in cell.get("outputs", []):
                texts = [output.get("text", "")] + [
                    v if isinstance(v, str) else "".join(v)
                    for k, v in output.get("data", {}).items() if k.startswith("text/")]
                text = "".join(t if isinstance(t, str) else "".join(t) for t in texts)
                if machine.search(text) or str(REPO) in text:
                    found.append(f"{path.name} cell {index}")
    assert not found, f"notebook outputs name paths of the machine they ran on: {found}"


def test_the_readme_links_to_files_that_exist():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    local = [link.partition("#")[0] for link in links if not re.match(r"^[a-z]+:", link)]
    assert len(local) > 10
    missing = [link for link in local if link and not (REPO / link).exists()]
    assert not missing, missing


class _Page(html.parser.HTMLParser):
    """The ids and the internal links (href/src) of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            value = attrs.get(key)
            if value and not re.match(r"^[a-z][a-z0-9+.-]*:|^//", value, re.I):
                self.links.append(value)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built with --strict (any warning: a bad link, anchor or docstring fails)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return out


def test_every_page_of_the_nav_is_built(site):
    for page in ("index.html", "install/index.html", "models/index.html",
                 "training/detection/index.html", "training/distributed/index.html",
                 "deploy/qat/index.html", "official-weights/index.html", "backends/index.html",
                 "troubleshooting/index.html", "benchmarks/index.html", "changelog/index.html",
                 "reference/cli/index.html", "api/index.html", "api/deploy/index.html",
                 "notebooks/04_qat_tflite/index.html"):
        assert (site / page).is_file(), page


def test_generated_pages_have_their_content(site):
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("keras-mnv2 train coco", "keras-mnv2 export", "keras-mnv2 qat",
                    "keras-mnv2 predict", "keras-mnv2 convert", "keras-mnv2 eval imagenet"):
        assert command in cli, command
    for job, field in (("detection", "nms_iou"), ("segmentation", "output_stride"),
                       ("classification", "label_smoothing")):
        page = (site / "training" / job / "index.html").read_text()
        assert "recipe-table" not in page and f"<td><code>{field}</code></td>" in page, job
    api = (site / "api" / "index.html").read_text()
    assert 'id="keras_mnv2.MobileNetV2"' in api
    notebook = (site / "notebooks" / "02_detection" / "index.html").read_text()
    assert "2034 anchors" in notebook  # an output, not only the source


def test_the_api_reference_documents_everything_keras_mnv2_exports(site):
    import keras_mnv2

    api = "".join(path.read_text() for path in (site / "api").rglob("*.html"))
    documented = set(re.findall(r'id="keras_mnv2\.(?:[\w.]+\.)?(\w+)"', api))
    missing = [name for name in keras_mnv2.__all__ if name not in documented]
    assert not missing, f"add them to the API pages (docs/api/): {missing}"


def test_every_internal_link_and_anchor_resolves(site):
    pages = {}
    for path in site.rglob("*.html"):
        parser = _Page()
        parser.feed(path.read_text(errors="replace"))
        pages[path.resolve()] = parser
    broken = []
    for path, page in pages.items():
        if path.name == "404.html":
            continue
        for link in page.links:
            target, _, anchor = link.partition("#")
            target = urllib.parse.unquote(target)
            resolved = (path.parent / target).resolve() if target else path
            if resolved.is_dir():
                resolved = resolved / "index.html"
            if not resolved.exists():
                broken.append(f"{path.relative_to(site)}: {link} (no such file)")
            elif anchor and resolved.suffix == ".html":
                ids = pages[resolved].ids if resolved in pages else set()
                if urllib.parse.unquote(anchor) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken[:50])
