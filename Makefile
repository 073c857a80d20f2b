# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_PYTHON := python3.11
export UV_PYTHON_DOWNLOADS := never

.PHONY: help uv sync run migrate test lint format bench bench-tools clean browser

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

uv: ## Install the pinned uv if it is missing
	@command -v uv >/dev/null 2>&1 || [ -x $(HOME)/.local/bin/uv ] || \
		python3 -m pip install --quiet --user "uv==$(UV_VERSION)"

sync: uv ## Install the locked environment into .venv
	@$(UV) sync --locked --quiet

run: sync ## Start the whole mesh in the foreground (Ctrl-C stops it)
	@$(UV) run --locked python -m meshdev.run

migrate: sync ## Create missing databases and migrate them
	@$(UV) run --locked python -m meshdev.run --migrate-only

lint: sync ## ruff check, ruff format --check, mypy
	@$(UV) run --locked ruff check .
	@$(UV) run --locked ruff format --check .
	@$(UV) run --locked mypy

format: sync ## Format and fix what ruff can
	@$(UV) run --locked ruff format .
	@$(UV) run --locked ruff check --fix .

browser: ## Install Debian's chromium for the browser test of the gateway's /docs
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

test: sync lint browser ## Lint, then the whole test suite
	@$(UV) run --locked pytest

bench-tools: ## Install wrk and nginx (Debian packages) for the benchmarks, if missing
	@command -v wrk >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }

bench: sync bench-tools ## Measure the mesh against nginx; writes bench/results/latest.{json,md}
	@cd bench && $(UV) run --locked python mesh_bench.py

clean: ## Remove caches and local state (keeps .venv)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .test-artifacts
