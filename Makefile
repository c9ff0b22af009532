# keras_mnv2: every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-fast bench train-coco train-imagenet train-voc clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

# COCO_DIR=<COCO-format dir> or TFDS_DIR=<TFDS data dir> for real data; neither: embedded data.
train-coco: $(STAMP)
	$(PY) -m pipelines.cli train coco $(if $(COCO_DIR),--coco-dir $(COCO_DIR)) \
		$(if $(TFDS_DIR),--tfds-data-dir $(TFDS_DIR)) $(ARGS)

train-imagenet: $(STAMP)
	$(PY) -m pipelines.cli train imagenet $(ARGS)

train-voc: $(STAMP)
	$(PY) -m pipelines.cli train voc $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
