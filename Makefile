# wharfd: build, run and test on Debian 12 as root.
#
#   make setup   Debian packages (only the missing ones) + .venv with wharfd and test tools
#   make run     setup, then wharfd in the foreground (ARGS="--log-level debug ...")
#   make test    setup, then ruff, mypy --strict, import-linter and pytest
#   make lint    ruff + mypy + import-linter only
#   make proto   regenerate the BuildKit protobuf code (engine/builder/buildkit/proto)
#   make bench   side-by-side benchmark against dockerd (not part of `make test`)
#   make clean   caches and build leftovers;  make distclean  also the venv

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.wharfd-installed
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

# what the engine, its tests and the benchmarks run on this machine
DEB_PACKAGES := runc crun conmon busybox-static iproute2 util-linux systemd docker.io \
                docker-registry apache2-utils nftables socat tmux python3-venv tini curl \
                docker-compose etcd-server openssl prometheus libfaketime

.PHONY: help setup debs venv run test lint ruff mypy importlint pytest bench proto clean distclean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

setup: debs venv

debs:
	@bash .ci/install-debs $(DEB_PACKAGES)

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# re-install only when pyproject.toml changed since the last install
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

run: setup
	$(BIN)/wharfd $(ARGS)

ruff: venv
	$(BIN)/ruff check engine api tests bench

mypy: venv
	$(BIN)/mypy --strict engine api

importlint: venv
	$(BIN)/lint-imports

lint: ruff mypy importlint

# pytest's exit code 5 ("no tests collected") counts as a failure.
pytest: venv
	@rc=0; $(BIN)/pytest -q -p no:cacheprovider --durations=25 -ra $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

# Every step runs even when an earlier one fails, so one CI run reports everything;
# the target fails when any step failed.
test: setup
	@failed=""; \
	$(MAKE) --no-print-directory ruff || failed="$$failed ruff"; \
	$(MAKE) --no-print-directory mypy || failed="$$failed mypy"; \
	$(MAKE) --no-print-directory importlint || failed="$$failed import-linter"; \
	$(MAKE) --no-print-directory pytest || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed" >&2; exit 1; fi; \
	echo "all checks passed"

# The BuildKit wire messages: regenerate the checked-in code after editing wire.proto
# (grpcio-tools is needed only here; the protoc it bundles must not be newer than the
# protobuf runtime pinned in pyproject.toml).
PROTO_DIR := engine/builder/buildkit/proto
proto: venv
	$(BIN)/python -m pip install -q 'grpcio-tools==1.85.1'
	cd $(PROTO_DIR) && ../../../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. wire.proto

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0r rm -rf

distclean: clean
	rm -rf $(VENV)
