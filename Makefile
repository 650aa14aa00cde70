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

# Everything: unit, system (loop devices) and the QEMU end-to-end tests (which build the
# ISO first when it is older than its sources). The VM tests print what they wait for.
test: venv
	@echo "== unit and system tests"
	$(VPY) -m pytest -v -rs -p no:cacheprovider -m "not vm" $(PYTEST_ARGS) tests
	@echo "== QEMU tests: the ISO, the system drive, the whole mission"
	$(VPY) -m pytest -v -rs -s -p no:cacheprovider -m vm $(PYTEST_ARGS) tests

unit: venv
	$(VPY) -m pytest -q -m "not root and not vm" tests

bench: venv
	$(VPY) tests/bench/imaging.py
	$(VPY) tests/bench/browse.py
	$(VPY) tests/bench/badsectors.py
	$(VPY) tests/bench/shrink.py

iso:
	@scripts/build-iso

e2e: venv
	$(VPY) -m pytest -v -rs -s -m vm tests/vm

clean:
	rm -rf $(VENV) build .pytest_cache
