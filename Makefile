# Two commands on a fresh machine:  `make serve` (the service with the bundled model) and `make test`.
# Both build .venv themselves; re-running is fast because installs are keyed on pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# CPU build of torch that lies on this machine's disk; a CUDA image overrides TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-slow lint clean docker-test

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e . "$(TORCH_SPEC)"
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e ".[dev,train]" "$(TORCH_SPEC)"
	touch $@

serve: $(VENV)/.stamp-base
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
	  $(VENV)/bin/lieprop serve --host $(HOST) --port $(PORT)

test: $(VENV)/.stamp-dev
	$(PY) -m ruff check lieprop tests benchmarks
	$(PY) -m pytest -q

test-slow: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -m slow

# Build docker/Dockerfile with podman from a debootstrap base, run it and compare its predictions with the library's
# (docker/smoke_test.py; installs podman, buildah, runc and debootstrap with apt when missing; needs root).
docker-test: $(VENV)/.stamp-base
	$(PY) docker/smoke_test.py

lint: $(VENV)/.stamp-dev
	$(PY) -m ruff check lieprop tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
