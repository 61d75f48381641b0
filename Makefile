# The two commands a newcomer needs: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The /ops page test drives a real browser: Debian's Chromium (Playwright never downloads one here).
CHROMIUM ?= /usr/bin/chromium
# The benchmark's load generator (its tests run it too): Debian's wrk.
WRK ?= /usr/bin/wrk
# The clock-skew fault test runs a gateway under libfaketime: Debian's faketime.
FAKETIME ?= /usr/bin/faketime
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.DEFAULT_GOAL := help
.PHONY: help serve test bench bench-quick chaos screenshot lint format typecheck check clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)  ## Serve the gateway on :8000 (HOST= PORT= WORKERS=; embedded Postgres and Redis unless GATEWAY_*_URL are set)
	$(BIN)/gateway serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000} --workers $${WORKERS:-1}

$(CHROMIUM):
	@echo "Installing Debian's chromium for the /ops page test"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM) $(WRK) $(FAKETIME)  ## Run the test suite against real Postgres and Redis servers it starts itself
	GATEWAY_TEST_CHROMIUM=$(CHROMIUM) GATEWAY_TEST_FAKETIME=$(FAKETIME) $(BIN)/python -m pytest $(PYTEST_ARGS)

$(FAKETIME):
	@echo "Installing Debian's faketime for the clock-skew test"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends faketime

$(WRK):
	@echo "Installing Debian's wrk for the benchmark"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk

bench: $(STAMP) $(WRK)  ## The side-by-side benchmark (~16 min on a quiet machine); writes docs/benchmarks.md and .json
	$(BIN)/python -m loadtests.bench --out docs/benchmarks.md --json docs/benchmarks.json

bench-quick: $(STAMP) $(WRK)  ## The same, about a minute, written to /tmp/benchmarks-quick.md
	$(BIN)/python -m loadtests.bench --quick --out /tmp/benchmarks-quick.md --json /tmp/benchmarks-quick.json

chaos: $(STAMP)  ## Chaos soak: random Redis/Postgres faults under load, then check (MINUTES=5 SEED= WORKERS=1)
	$(BIN)/gateway chaos --minutes $${MINUTES:-5} --workers $${WORKERS:-1} $${SEED:+--seed $$SEED}

screenshot: $(STAMP) $(CHROMIUM)  ## Retake docs/ops.png, the README's picture of the /ops page
	GATEWAY_TEST_CHROMIUM=$(CHROMIUM) GATEWAY_TEST_SCREENSHOT=docs/ops.png \
		$(BIN)/python -m pytest tests/test_ops_page.py -k screenshot

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests

format: $(STAMP)  ## ruff format
	$(BIN)/ruff format gateway tests loadtests

typecheck: $(STAMP)  ## mypy --strict on gateway/
	$(BIN)/mypy gateway

check: lint typecheck test  ## Everything CI runs

clean:  ## Remove .venv and the embedded servers' data
	rm -rf $(VENV) .gateway-data
