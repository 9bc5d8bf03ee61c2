# Fully Convolutional Networks on real Caffe.
#   make demo            train a small FCN-8s on generated data, score it, segment images
#   make test            set up everything that is missing, then run the tests
#   make test-fast       the edit loop (after one make caffe): the tests not marked slow
#                        or gpu (tests/conftest.py), under a minute
#   make caffe           only build pycaffe (cached under ~/.cache/fcn-caffe) and link it
#   make caffe-selftest  Caffe's own Python test suite against the built pycaffe
#   make bench           CPU speed and memory benchmark: Caffe beside PyTorch, ONNX Runtime
#                        and OpenVINO
#   make clean           remove the virtual environment (the Caffe build cache stays)
# FCN_CAFFE_CPU=1 forces a CPU build where nvcc exists; PYTHON=python3.X picks the Python.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed

.PHONY: test test-fast caffe caffe-selftest demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Python dependencies are declared once, in pyproject.toml ([bench]: OpenVINO, for make bench
# and tests/test_export.py's OpenVINO check).
$(DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check ".[test,export,cluster,bench]"
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"  # the tests' CPU build (extra [torch])
	touch $@

caffe: $(DEPS)
	$(PY) tools/build_caffe.py

caffe-selftest: $(DEPS)
	$(PY) tools/build_caffe.py --selftest

test: caffe
	$(PY) -m pytest -q tests

test-fast: $(DEPS)
	$(PY) -m pytest -q -m "not slow and not gpu" tests

demo: caffe
	$(PY) demo.py

bench: caffe
	$(PY) tools/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
