# Two entry points for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8443
METRICS_PORT ?= 9999

.PHONY: run test lock lock-check release chart-docs chart-docs-check manifests lint typecheck layers unit e2e e2e-node e2e-tools demo demo-down image bench clean

# Every dependency comes from the hashed locks (scripts/lock.sh writes them); the project
# itself goes in last, without dependencies, built by the locked setuptools.
LOCKS := requirements/dev.txt requirements/runtime.txt requirements/build.txt
$(STAMP): pyproject.toml $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt -r requirements/build.txt
	@# setuptools warns about every editable install ("Editable installation ... folders in your
	@# working directory"): nothing to act on here, so keep `make run` quiet.
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## lock: re-resolve requirements/*.txt from pyproject.toml (keeps the versions already pinned)
# Upgrade one package: make lock LOCK_ARGS='--upgrade-package kubernetes'; all: LOCK_ARGS=--upgrade
lock: $(STAMP)
	bash scripts/lock.sh $(LOCK_ARGS)

## lock-check: fail when pyproject.toml and the locks disagree (needs PyPI, nothing else)
lock-check: $(STAMP)
	bash scripts/lock.sh --check

## run: serve on https://127.0.0.1:$(PORT) with the bundled example objects (no cluster needed)
run: $(STAMP)
	@bash certs/dev-localhost.sh
	@echo
	@echo "Webhook on https://127.0.0.1:$(PORT)  (metrics: http://127.0.0.1:$(METRICS_PORT)/metrics)"
	@echo "In another terminal, post the example review and decode the patch:"
	@echo
	@echo "  curl -s --cacert certs/out/ca.crt -H 'Content-Type: application/json' \\"
	@echo "    --data-binary @webhook/examples/review.json https://127.0.0.1:$(PORT)/mutate \\"
	@echo "    | $(PY) -c 'import sys,json,base64; r=json.load(sys.stdin)[\"response\"]; print(json.dumps(r, indent=1)); print(json.dumps(json.loads(base64.b64decode(r[\"patch\"])), indent=1))'"
	@echo
	@echo "The CLI the README's examples call is $(BIN)/pod-identity-webhook (or: source $(VENV)/bin/activate)."
	@echo
	$(BIN)/pod-identity-webhook serve --bind-address 127.0.0.1 --port $(PORT) --metrics-port $(METRICS_PORT) \
		--tls-cert certs/out/tls.crt --tls-key certs/out/tls.key \
		--objects webhook/examples/objects.yaml --watch-config-map -v=4

## test: everything — lint, types, layers, fast tests, e2e against a real kube-apiserver
test: lock-check lint typecheck layers unit e2e

lint: $(STAMP) chart-docs-check
	$(BIN)/ruff check webhook tests e2e bench charts
	$(BIN)/ruff format --check webhook tests e2e bench charts
	@# GitHub workflows cannot run here: actionlint (pinned in e2e/tools) checks them. Its
	@# shellcheck/pyflakes passes are off so the result does not depend on what is on PATH.
	@set -o pipefail; tools="$${PIW_E2E_TOOLS_DIR:-$$(bash e2e/tools/build.sh | tail -n 1)}"; status=$$?; \
	if [ $$status -eq 3 ]; then \
		echo "!! actionlint SKIPPED: no Go toolchain to build it (see README)"; \
		if [ "$${CI:-}" = "true" ]; then exit 1; fi; exit 0; \
	elif [ $$status -ne 0 ]; then exit $$status; fi; \
	echo "actionlint .github/workflows"; "$$tools/actionlint" -shellcheck= -pyflakes= .github/workflows/*.yml

## chart-docs: regenerate the chart README's values table (helm-docs, pinned in e2e/tools)
HELM_DOCS = --chart-search-root charts --sort-values-order file --log-level warning
chart-docs:
	@tools="$${PIW_E2E_TOOLS_DIR:-$$(bash e2e/tools/build.sh | tail -n 1)}" && "$$tools/helm-docs" $(HELM_DOCS)

chart-docs-check:
	@set -o pipefail; tools="$${PIW_E2E_TOOLS_DIR:-$$(bash e2e/tools/build.sh | tail -n 1)}"; status=$$?; \
	if [ $$status -eq 3 ]; then \
		echo "!! chart README check SKIPPED: no Go toolchain to build helm-docs (see README)"; \
		if [ "$${CI:-}" = "true" ]; then exit 1; fi; exit 0; \
	elif [ $$status -ne 0 ]; then exit $$status; fi; \
	"$$tools/helm-docs" $(HELM_DOCS) --dry-run | diff -u charts/pod-identity-webhook/README.md - \
		|| { echo "!! the chart README is stale: run make chart-docs"; exit 1; }; \
	echo "helm-docs: charts/pod-identity-webhook/README.md is current"

## manifests: regenerate deploy/base (kustomize, cert-manager TLS) from the chart's `helm template`
manifests: $(STAMP)
	@tools="$${PIW_E2E_TOOLS_DIR:-$$(bash e2e/tools/build.sh | tail -n 1)}" && $(PY) deploy/generate.py "$$tools/helm"

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests -q

## unit-random: the fast tests in a random order (pytest-randomly prints the seed; SEED=N repeats it)
.PHONY: unit-random
unit-random: $(STAMP)
	$(BIN)/pytest tests -q -p randomly $(if $(SEED),--randomly-seed=$(SEED))

## e2e-tools: build or reuse kube-apiserver, etcd, helm and the upstream webhook (pinned)
e2e-tools:
	@bash e2e/tools/build.sh

e2e: $(STAMP)
	@set -o pipefail; tools=$$(bash e2e/tools/build.sh | tail -n 1); status=$$?; \
	if [ $$status -eq 3 ]; then \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		echo "!! e2e SKIPPED: no Go toolchain and no PIW_* prebuilt binaries (see README)  !!"; \
		echo "!! run it with: make e2e   (after installing Go, or setting PIW_* env vars) !!"; \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		if [ "$${CI:-}" = "true" ]; then echo "CI=true: a skipped e2e suite is a failure"; exit 1; fi; \
		exit 0; \
	elif [ $$status -ne 0 ]; then exit $$status; fi; \
	export PIW_E2E_TOOLS_DIR="$$tools" PIW_E2E_REQUIRED=1; \
	$(BIN)/pytest e2e -q -p no:cacheprovider && \
	$(MAKE) --no-print-directory e2e-node

## e2e-node: the single-node cluster suites (image, chart, walkthrough, rollout, audit); root
# Their own pytest process: the session moves into the node's network namespace.
e2e-node: $(STAMP)
	@set -o pipefail; tools="$${PIW_E2E_TOOLS_DIR:-$$(bash e2e/tools/build.sh | tail -n 1)}"; \
	PIW_E2E_TOOLS_DIR="$$tools" PIW_E2E_REQUIRED=1 $(BIN)/pytest e2e/node -q -p no:cacheprovider --durations=8

## demo: the single-node cluster with the chart installed and the walkthrough run, left running
demo: $(STAMP)
	@set -o pipefail; tools="$$(bash e2e/tools/build.sh | tail -n 1)"; \
	PIW_E2E_TOOLS_DIR="$$tools" $(PY) -m e2e.node.demo up

## demo-down: stop the demo cluster and remove everything it made
demo-down: $(STAMP)
	@$(PY) -m e2e.node.demo down

## image: build the container image with podman or docker (BASE_IMAGE=... overrides the base)
# IMAGE names it (default localhost/pod-identity-webhook); the tag is the package version.
# Without systemd (containers, CI VMs) podman runs with e2e/images/containers.conf.
IMAGE ?= localhost/pod-identity-webhook
image:
	@set -euo pipefail; \
	engine="$${CONTAINER_ENGINE:-$$(command -v podman || command -v docker || true)}"; \
	[ -n "$$engine" ] || { echo "make image: install podman (apt-get install podman) or docker" >&2; exit 1; }; \
	version="$$(sed -n 's/^__version__ = "\(.*\)"$$/\1/p' webhook/__init__.py)"; \
	ref="$(IMAGE):$$version"; args=(--build-arg "VERSION=$$version"); \
	if [ -n "$${BASE_IMAGE:-}" ]; then args+=(--build-arg "BASE_IMAGE=$$BASE_IMAGE"); fi; \
	if [ "$$(basename "$$engine")" = podman ]; then \
		[ -d /run/systemd/system ] || export CONTAINERS_CONF="$${CONTAINERS_CONF:-$(CURDIR)/e2e/images/containers.conf}"; \
		ca=/etc/ssl/certs/ca-certificates.crt; \
		if [ -f "$$ca" ]; then args+=(-v "$$ca:/run/piw-build-ca.crt:ro" --build-arg PIP_CERT=/run/piw-build-ca.crt); fi; \
	fi; \
	"$$engine" build --network=host "$${args[@]}" -t "$$ref" .; \
	e="$$(basename "$$engine")"; save="$$e save -o pod-identity-webhook.tar"; \
	[ "$$e" = podman ] && save="podman save --format docker-archive -o pod-identity-webhook.tar"; \
	echo; echo "Built $$ref ($$("$$engine" image inspect --format '{{.Size}}' "$$ref") bytes) with $$e."; \
	echo "Load it into a node's containerd (the name stays $$ref; use imagePullPolicy: Never):"; \
	echo "  $$save $$ref"; \
	echo "  ctr -n k8s.io images import pod-identity-webhook.tar"; \
	echo "  (kind: kind load image-archive pod-identity-webhook.tar)"; \
	echo "Or push it to a registry:"; \
	echo "  $$e tag $$ref <registry>/pod-identity-webhook:$$version"; \
	echo "  $$e push <registry>/pod-identity-webhook:$$version"

## release: dist/ from HEAD: wheel, sdist, image (OCI archive), chart, CycloneDX SBOM, SHA256SUMS
# BASE_IMAGE=... as for make image; RELEASE_ARGS=--no-image leaves the image out.
release: $(STAMP)
	bash scripts/release.sh $(RELEASE_ARGS)

## bench: open-loop latency and CPU against the upstream Go webhook (same run), then latency while the cluster changes
bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/churn.py

clean:
	rm -rf $(VENV) certs/out dist .mypy_cache .ruff_cache .pytest_cache
