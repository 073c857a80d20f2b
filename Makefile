# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_PYTHON := python3.11
export UV_PYTHON_DOWNLOADS := never

.PHONY: help uv sync run migrate test lint format unit integration clean dlq

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

test: sync lint ## Lint, then the whole test suite
	@$(UV) run --locked pytest

dlq: sync ## Dead letters of notifications: make dlq (list) or make dlq ARGS="replay --all|ID..."
	@$(UV) run --locked python -m notifications_service.dlq $(or $(ARGS),list)

clean: ## Remove caches and local state (keeps .venv)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .test-artifacts
