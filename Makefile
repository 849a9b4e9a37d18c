# tfattn developer commands. Every target creates .venv and installs the project if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Layer test modules also run under JAX: the layers must be backend-portable.
JAX_TESTS := tests/layers tests/test_visualize.py
PYTEST_ARGS ?=

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data data-speech data-detection test test-tf test-jax test-notebooks demo demo-layers bench bench-vit bench-forecast bench-speech bench-detection lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Real offline data from Debian packages (root + apt); otherwise loaders fall back to TFDS.
data:
	@test -f $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
	    || echo "could not install dataset-fashion-mnist: Fashion-MNIST will come from TFDS"; \
	  else echo "not root or no apt-get: Fashion-MNIST will come from TFDS"; fi; }

# Synthetic speech corpus for apps/speech: Debian's espeak-ng and festival voices (installed
# when root + apt), then the default 600-utterance corpus (about 25 s on 2 cores) if missing.
SPEECH_PACKAGES := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
SPEECH_CORPUS := data/speech/digits

data-speech: $(STAMP)
	@if command -v espeak-ng >/dev/null 2>&1 && command -v festival >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -qq $(SPEECH_PACKAGES) >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -qq $(SPEECH_PACKAGES); } \
	  || echo "could not install $(SPEECH_PACKAGES): no speech corpus"; \
	else echo "not root or no apt-get: install $(SPEECH_PACKAGES) to build the speech corpus"; fi
	@if [ -f $(SPEECH_CORPUS)/metadata.csv ]; then echo "$(SPEECH_CORPUS) exists"; \
	elif command -v espeak-ng >/dev/null 2>&1; then \
	  $(PY) data/make_speech_corpus.py --out $(SPEECH_CORPUS) --utterances 600 --seed 0 \
	  || echo "speech corpus generation failed"; \
	else echo "espeak-ng missing: $(SPEECH_CORPUS) not generated"; fi

# COCO-format scenes of real Fashion-MNIST objects for apps/detection (10k/1k/1k images,
# about 40 s on 2 cores, ~340 MB), generated when missing.
DETECTION_SCENES := data/detection/fashion_scenes

data-detection: $(STAMP) data
	@if [ -f $(DETECTION_SCENES)/annotations/instances_test.json ]; then echo "$(DETECTION_SCENES) exists"; \
	else $(PY) data/make_detection_scenes.py --out $(DETECTION_SCENES) --seed 0; fi

# The notebooks run inside test-tf (tests/test_notebooks.py, which also checks their figures).
test: test-tf test-jax

test-tf: $(STAMP) data data-speech
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS) tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 --durations=5 $(PYTEST_ARGS) $(JAX_TESTS)

# Notebooks run top to bottom in a fresh kernel (quick settings).
test-notebooks: $(STAMP) data
	TFATTN_QUICK=1 KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --nbmake $(PYTEST_ARGS) notebooks

# The ViT app's tiny preset on real Fashion-MNIST: trains, logs to TensorBoard, exports.
demo: $(STAMP) data
	$(PY) -m apps.vit.train --preset tiny --workdir runs/demo

# The layer demo (tiny ViT on scikit-learn digits, attention heatmap PNGs).
demo-layers: $(STAMP)
	$(PY) -m tfattn.demo --workdir runs/demo_layers

bench: $(STAMP)
	$(PY) benchmarks/attention.py --out benchmarks/results/attention.json
	KERAS_BACKEND=jax $(PY) benchmarks/attention_jax.py --out benchmarks/results/attention_jax.json
	$(MAKE) bench-vit
	$(MAKE) bench-forecast
	$(MAKE) bench-speech
	$(MAKE) bench-detection

# ViT throughput vs keras-hub (minutes); `--quality` adds the 2 x 30-minute accuracy runs.
bench-vit: $(STAMP) data
	$(PY) benchmarks/vit.py --out benchmarks/results/vit.json

# Forecasting: PatchTST vs LSTM, Transformer, DLinear, ridge and statsforecast on NYC weather,
# and on the S&P 500 vs the random walk (~35 min on 2 CPU cores).
bench-forecast: $(STAMP)
	$(PY) benchmarks/forecast.py --out benchmarks/results/forecast.json

# Speech: Conformer + CTC vs the keras.io CTC ASR model, same corpus and budget (2 x 60 min).
bench-speech: $(STAMP) data-speech
	$(PY) benchmarks/speech.py --out benchmarks/results/speech.json

# Both detection heads vs keras-hub RetinaNet and D-FINE, 4 x 60 minutes + evaluation.
bench-detection: $(STAMP) data-detection
	$(PY) benchmarks/detection.py --out benchmarks/results/detection.json

lint: $(STAMP)
	$(PY) -m ruff check tfattn apps tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
