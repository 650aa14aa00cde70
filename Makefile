# The newcomer's contract (README): as root on Debian,
#   make iso    builds build/rescue-VERSION-amd64.iso
#   make test   installs what the tests need and runs them
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test deps venv unit bench iso e2e clean

deps:
	@scripts/apt-install config/apt-test.txt

$(VPY): pyproject.toml
	@echo "== creating $(VENV) on Debian's python3 (same interpreter and packages as the ISO)"
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(VPY)

venv: deps $(VPY)

test: venv
	$(VPY) -m pytest -v -rs $(PYTEST_ARGS) tests

unit: venv
	$(VPY) -m pytest -q -m "not root and not vm" tests

bench: venv
	$(VPY) tests/bench/imaging.py

iso:
	@scripts/build-iso

e2e: venv
	$(VPY) -m pytest -v -rs -m vm tests/vm

clean:
	rm -rf $(VENV) build .pytest_cache
