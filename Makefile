# keras_mnv2: every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv mediapipe-venv test test-fast test-torch docs bench gpu-check train-coco train-imagenet eval-imagenet train-voc qat tflite clean

venv: $(STAMP)

# MediaPipe Tasks in its own environment (it needs absl-py 2; tfmot pins 1.x): the metadata tests
# and `keras-mnv2 predict --runtime mediapipe` run it there (pipelines/mediapipe_runner.py).
MP_VENV  ?= .venv-mediapipe
MP_STAMP := $(MP_VENV)/.installed

mediapipe-venv: $(MP_STAMP)

$(MP_STAMP): requirements-mediapipe.txt
	$(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/python -m pip install --upgrade pip
	$(MP_VENV)/bin/python -m pip install -r requirements-mediapipe.txt
	touch $(MP_STAMP)

# The library and the keras-mnv2 command with what the tests, the benchmarks and the docs need:
# jax (the JAX backend checks), bench (keras-cv, for the peer benchmark), docs (mkdocs).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,jax,bench,docs]"
	touch $(STAMP)

# Two pytest workers (pytest-xdist), a test file per worker so module fixtures are built once:
# much of a test's time is single-threaded Python (building Keras graphs, the converter).
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

# tests/test_docs.py builds the documentation site too (mkdocs build --strict) and checks its links.
test: $(STAMP) $(MP_STAMP)
	$(PY) -m pytest -ra --durations=15 $(XDIST) $(PYTEST_ARGS)

# The documentation site into site/ (mkdocs.yml); any warning fails the build. (The two variables
# silence a notice about MkDocs 2 that the installed plugins print.)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PY) -m mkdocs build --strict

# On another backend: KERAS_BACKEND=jax make test-fast (torch: install the torch extra first);
# tests/conftest.py skips the TensorFlow-only tests there, saying why (docs/backends.md).
test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The three-backend checks and the COCO and VOC jobs on JAX and torch, with torch too
# (tests/test_backends.py and tests/test_backend_jobs.py skip torch where it is not installed):
# the torch extra is ~5.6 GB installed (CUDA libraries from PyPI's default wheel).
test-torch: $(STAMP)
	$(PY) -m pip install -e ".[test,torch]"
	$(PY) -m pytest -ra tests/test_backends.py tests/test_backend_jobs.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

# The embedded COCO job with and without mixed precision and XLA: images/s and AP50 of each
# (benchmarks/gpu_check.sh; docs/benchmarks.md). Without a GPU: a short CPU version.
gpu-check: $(STAMP)
	PY=$(PY) bash benchmarks/gpu_check.sh

# COCO_DIR=<COCO-format dir> or TFDS_DIR=<TFDS data dir> for real data; neither: embedded data.
train-coco: $(STAMP)
	$(PY) -m pipelines.cli train coco $(if $(COCO_DIR),--coco-dir $(COCO_DIR)) \
		$(if $(TFDS_DIR),--tfds-data-dir $(TFDS_DIR)) $(ARGS)

# IMAGENET_DIR=<train/ + val/ folders>, IMAGENET_TFRECORDS=<shards> or TFDS_DIR; none: embedded.
train-imagenet: $(STAMP)
	$(PY) -m pipelines.cli train imagenet $(if $(IMAGENET_DIR),--data-dir $(IMAGENET_DIR)) \
		$(if $(IMAGENET_TFRECORDS),--tfrecord-dir $(IMAGENET_TFRECORDS)) \
		$(if $(TFDS_DIR),--tfds-data-dir $(TFDS_DIR)) $(ARGS)

eval-imagenet: $(STAMP)
	$(PY) -m pipelines.cli eval imagenet $(if $(IMAGENET_DIR),--data-dir $(IMAGENET_DIR)) $(ARGS)

# VOC_DIR=<VOCdevkit/VOC2012> (SBD_DIR=<SBD dataset/> for train_aug); none: embedded.
train-voc: $(STAMP)
	$(PY) -m pipelines.cli train voc $(if $(VOC_DIR),--voc-dir $(VOC_DIR)) \
		$(if $(SBD_DIR),--sbd-dir $(SBD_DIR)) $(ARGS)

# Deployment, per job in JOBS (default all three): trains the embedded model first when
# runs/<job> has none, exports float32 + PTQ int8 (tflite), adds PTQ int8 by LiteRT Quantizer and
# QAT int8 by both schemes, TFMOT and Keras 3 (qat), and writes the comparison table
# runs/<job>/deploy.md (+ .png, .json). E.g. make qat JOBS=coco QAT_EPOCHS=1
JOBS       ?= coco voc imagenet
QAT_EPOCHS ?= 2
MODEL_coco     := last.keras
MODEL_voc      := last.keras
MODEL_imagenet := model.keras

define trained
[ -f runs/$(1)/$(MODEL_$(1)) ] && [ -f runs/$(1)/metrics.json ] || \
	$(PY) -m pipelines.cli train $(1) || exit 1;
endef

tflite: $(STAMP)
	@set -e; $(foreach job,$(JOBS),$(call trained,$(job)) \
		$(PY) -m pipelines.cli export $(job) $(ARGS);)

qat: $(STAMP)
	@set -e; $(foreach job,$(JOBS),$(call trained,$(job)) \
		$(PY) -m pipelines.cli export $(job) --no-compare; \
		$(PY) -m pipelines.cli export $(job) --modes int8 --quantizer litert --no-compare; \
		$(PY) -m pipelines.cli qat $(job) --epochs $(QAT_EPOCHS) --no-compare $(ARGS); \
		$(PY) -m pipelines.cli qat $(job) --epochs $(QAT_EPOCHS) --scheme keras $(ARGS);)

clean:
	rm -rf $(VENV) $(MP_VENV) build *.egg-info site
