# The newcomer's contract (README): as root on Debian,
#   make iso    builds build/rescue-VERSION-amd64.iso
#   make test   installs what the tests need and runs them
# and, as any user, `make check` (lint, types, unit and wizard tests) in a few minutes.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST := $(VPY) -m pytest -p no:cacheprovider
# A stamp, not $(VPY): that is a symlink to /usr/bin/python3, and touching it touched Debian's
# interpreter (and fails without root).
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
# The tools tests drive without root (sfdisk, blkid, mkfs.* on plain files) live in /usr/sbin,
# which a normal user's PATH on Debian lacks.
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: test check lint unit deps venv bench fuzz iso pxe e2e clean

# Debian packages (config/apt-test.txt) need root; without it they are only checked, and
# the tools of a missing one fail or skip their tests.
deps:
	@if [ "$$(id -u)" -eq 0 ]; then scripts/apt-install config/apt-test.txt; \
	else echo "== not root: not installing Debian packages (as root: make deps)"; fi

# Created once: re-creating it in place under running tests makes their subprocesses lose
# Debian's packages for a moment.
$(VPY):
	@echo "== creating $(VENV) on Debian's python3 (same interpreter and packages as the ISO)"
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(INSTALLED): pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# Development tools Debian does not package (ruff), pinned.
$(VENV)/.dev-tools: config/requirements-dev.txt $(INSTALLED)
	$(VPY) -m pip install --quiet -r config/requirements-dev.txt
	@touch $@

venv: deps $(INSTALLED) $(VENV)/.dev-tools

# ruff (pyproject.toml [tool.ruff]) and mypy (pyproject.toml [tool.mypy]: strict on
# rescue/model, rescue/repo, rescue/hw).
lint: venv
	@echo "== lint: ruff check, ruff format --check, mypy"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VPY) -m mypy

# Without root, in a few minutes: lint and types, the unit tests, the wizard's tests.
check: lint unit

unit: venv
	@echo "== unit and wizard tests (no root)"
	$(PYTEST) -q -m "not root and not vm" $(PYTEST_ARGS) tests/unit tests/tui

# Everything: `make check`, then the root tier (loop devices, filesystems: tests marked root,
# and every test outside tests/unit and tests/tui, see tests/conftest.py), then the QEMU
# end-to-end tests (which build the ISO first when it is older than its sources), as two
# parallel streams (tests/vm/streams.py). The VM tests print what they wait for.
test: check
	@echo "== root tier: loop devices and filesystem tools"
	$(PYTEST) -v -rs -m "root and not vm" $(PYTEST_ARGS) tests
	@echo "== QEMU tests: the ISO, the system drive, the whole mission, in two streams at once"
	$(VPY) tests/vm/streams.py $(PYTEST_ARGS)

# The repository fuzz test (tests/system/test_fuzz.py, root) far longer than `make test` runs
# it: FUZZ_EXAMPLES mutated repositories (about a second each) from seed FUZZ_SEED (a new one each
# run unless given; it is printed, so a failure can be run again).
FUZZ_EXAMPLES ?= 1500
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif
fuzz: venv
	@echo "== fuzz: $(FUZZ_EXAMPLES) mutated repositories, seed $(FUZZ_SEED)"
	RESCUE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) RESCUE_FUZZ_SEED=$(FUZZ_SEED) \
		$(PYTEST) -v -rs -m root $(PYTEST_ARGS) tests/system/test_fuzz.py

bench: venv
	$(VPY) tests/bench/imaging.py
	$(VPY) tests/bench/browse.py
	$(VPY) tests/bench/badsectors.py
	$(VPY) tests/bench/shrink.py
	$(VPY) tests/bench/remote.py
	$(VPY) tests/bench/clonezilla.py
	$(VPY) tests/bench/encrypted.py
	$(VPY) tests/bench/incremental.py
	$(VPY) tests/bench/scaling.py
	$(VPY) tests/bench/multicast.py

iso:
	@scripts/build-iso

# Netboot files (docs/fleet.md) from the ISO: SERVER is the URL build/pxe is served at, as the
# netbooted machines reach it; PXE_PARAMS are added to the kernel command line (rescue.*).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' rescue/__init__.py)
SERVER ?= http://10.0.0.5/rescue
PXE_PARAMS ?=
ISO := build/rescue-$(VERSION)-amd64.iso
pxe:
	@test -f $(ISO) || $(MAKE) iso
	rm -rf build/pxe
	scripts/make-pxe $(ISO) build/pxe $(SERVER) $(PXE_PARAMS)

e2e: venv
	$(PYTEST) -v -rs -s -m vm tests/vm

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
