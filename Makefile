# Everything a newcomer or CI needs, each target doing its own set-up.
# `make cluster-up` and `make test` are the two commands the README promises.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_SOURCES := operator tooling tests bench docs/hooks
# The site, strictly: a broken link, a missing page or a page left out of the nav fails.
# (NO_MKDOCS_2_WARNING quiets the theme's notice printed on every build.)
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

.DEFAULT_GOAL := help
.PHONY: help deps system-deps cluster-up cluster-down cluster-status cluster-build \
        test lint unit docs demo corpus bench bench-eval bench-fleet bench-cut kind-up kind-deploy kind-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

system-deps: ## Debian packages (prometheus) and a check of the Go toolchain
	@cluster/install-system-deps

# The operator's package and, beside it, the developer tooling's (tooling/: its own
# distribution, which the operator's image leaves out).
$(VENV)/.installed: pyproject.toml tooling/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./tooling
	@touch $@

deps: system-deps $(VENV)/.installed ## everything below needs these

cluster-up: deps ## build (first time: many minutes) and start the local cluster; print its GPU nodes
	$(BIN)/breaker cluster up

cluster-down: ## stop the local cluster and remove its state
	@if [ -x $(BIN)/breaker ]; then $(BIN)/breaker cluster down; else echo "no $(BIN): nothing was started"; fi

cluster-status: deps ## what runs, and the GPU nodes
	$(BIN)/breaker cluster status

cluster-build: deps ## only build the Go binaries into the cache
	$(BIN)/breaker cluster build

lint: $(VENV)/.installed ## ruff, mypy --strict, the layer contracts and the strict docs build (only the venv: no Go, no Debian packages)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(DOCS_BUILD)

docs: $(VENV)/.installed ## build the documentation site into site/ (MkDocs, strict)
	$(DOCS_BUILD)
	@echo "site/index.html"

unit: deps ## the tests that need no cluster
	$(BIN)/pytest tests/unit

# lint first, so a CI run fails fast before any Go or apt work (.ci/run is `make test`).
test: lint deps ## lint, then every test against the real local cluster and Prometheus
	$(BIN)/pytest --durations=25

corpus: deps ## the detection-quality table: every scenario through `breaker backtest`, into the README
	$(BIN)/python -m breaker_tooling.corpus

demo: deps ## the ROME incident on the local cluster: detected, contained, reset (KEEP=1 leaves it running)
	$(BIN)/breaker demo $(if $(KEEP),--keep,)

$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	@touch $@

bench: deps $(VENV)/.bench ## every benchmark, breaker beside the naive design: bench/results/summary.{json,png}
	$(BIN)/python bench/run.py

bench-eval: deps ## only one evaluation at 1,000, 10,000 and 50,000 pods, both designs
	$(BIN)/python bench/evaluation.py

bench-fleet: deps ## only time to contain, memory and API at rest on a bench cluster (DESIGN=baseline, SHARDS=2)
	$(BIN)/python bench/fleet.py --design $(or $(DESIGN),breaker) --shards $(or $(SHARDS),1)

bench-cut: deps ## only time to cut a live tunnel on the real node (20 trips per mode)
	$(BIN)/python bench/cut.py

kind-up: ## a kind cluster with fake GPU capacity on its workers (needs Docker and kind)
	@command -v kind >/dev/null || { echo "kind is not installed: see https://kind.sigs.k8s.io (needs Docker)"; exit 1; }
	kind create cluster --config kind-config.yaml
	for node in $$(kubectl get nodes -l nvidia.com/gpu.present=true -o name); do \
	  kubectl patch $$node --subresource=status --type=json \
	    -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"}]'; \
	done
	kubectl get nodes -o custom-columns=NODE:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu

# The image kind-deploy builds and loads, and the Prometheus the operator will query there.
IMAGE          ?= breaker-operator:dev
PROMETHEUS_URL ?= http://prometheus-operated.monitoring.svc:9090
HELM           ?= $(shell command -v helm || echo $(HOME)/.local/state/breaker/cluster/bin/helm)

kind-deploy: ## build the image, load it into kind, install the chart and the examples (needs Docker)
	@command -v docker >/dev/null || { echo "docker is not installed: kind-deploy builds the operator image"; exit 1; }
	docker build -t $(IMAGE) .
	kind load docker-image $(IMAGE) --name breaker
	$(HELM) upgrade --install breaker helm/breaker --namespace breaker-system --create-namespace \
	  --set image.repository=$(word 1,$(subst :, ,$(IMAGE))) --set image.tag=$(word 2,$(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --set prometheus.url=$(PROMETHEUS_URL) --wait
	kubectl create namespace agents --dry-run=client -o yaml | kubectl apply -f -
	kubectl -n agents apply -f examples/policies/namespaced.yaml -f examples/trainingjobs/small.yaml
	kubectl get trainingjobs,breakers -A

kind-down: ## delete the kind cluster
	kind delete cluster --name breaker

clean: cluster-down ## remove the virtualenv too (the Go build cache in ~/.cache/breaker stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
