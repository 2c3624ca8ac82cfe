# keras_ssl: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR := runs/simclr_fashion_mnist_demo
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/fortunes.dat

.PHONY: demo test install dataset dataset-text speech-tools data-audio clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[cpu,test]'
	# The serving API's protos (gRPC client, warmup file); --no-deps because it
	# requires the `tensorflow` wheel, which would clash with tensorflow-cpu.
	$(PY) -m pip install --no-deps 'tensorflow-serving-api==2.21.*'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's package when we can install it (root + apt);
# otherwise the loader looks in --data_dir and ~/.keras, then downloads.
dataset:
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Debian's fortunes (about 15,000 English fortunes in 43 categories): the offline text
# corpus (--dataset=fortunes) and its tests.
dataset-text:
	@if [ ! -f $(FORTUNES) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's fortunes"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes; \
	fi

# Debian's speech synthesisers, for the synthetic spoken-digits set (and its test).
speech-tools:
	@if ! command -v espeak-ng >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's espeak-ng and flite"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite; \
	fi

# The synthetic spoken digits (3,600 clips, about 2 minutes), made once.
data-audio: install speech-tools
	test -f data/spoken_digits/speakers.csv || $(PY) -m keras_ssl.bin.make_spoken_digits --output_dir=data/spoken_digits

# The evaluation's grid_* rows read block2:grid3, the middle block's 14x14 map averaged over 3x3
# regions (576 values), where the demo's features beat raw pixels (docs/BENCHMARKS.md); the export
# serves that reading as its embedding.
demo: install dataset
	$(PY) -m keras_ssl.bin.train --flagfile=flags/simclr_fashion_mnist_demo.cfg
	$(PY) -m keras_ssl.bin.evaluate --model_dir=$(DEMO_DIR) --grid_reading=block2:grid3
	$(PY) -m keras_ssl.bin.export --model_dir=$(DEMO_DIR) --export_root=saved_models --reading=block2:grid3

# Two test processes: most tests wait on subprocesses (binaries, workers) or run
# single-threaded Python; whole files go to one process (their fixtures are shared).
TEST_WORKERS ?= 2

test: install dataset dataset-text speech-tools
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf runs saved_models .pytest_cache
