# Jinshui: one command to run, one command to test, on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PKGS := proto libs/kit services/registry services/incidents services/risk services/gateway libs/cli
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint fmt schemas unit clean install browser

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PKGS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt hatchling
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation -c constraints.txt \
		-r requirements-dev.txt $(addprefix -e ,$(PKGS))
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/jinshui up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(BIN)/python -m jinshui.contracts.export

# The desk's browser test drives Debian's Chromium (never `playwright install`), with a CJK font for the console.
browser:
	@command -v chromium >/dev/null && fc-list :lang=zh family 2>/dev/null | grep -q . || \
		(apt-get update && apt-get install -y chromium fonts-wqy-microhei)

# Two workers, one per core: most of a test's time is spent waiting on the services it starts.
PYTEST_WORKERS ?= 2
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .jinshui

# Issue 8's harness: the embedded stack, this machine's floors, the scenarios (SCENARIO=latency runs one).
SCENARIO ?= all
.PHONY: bench bench-smoke
bench: $(STAMP)
	$(BIN)/python -m bench --scenario $(SCENARIO)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --size smoke --scenario $(SCENARIO)

# The fault suite at full size: 20,000 records of mixed load per scenario (make test runs a small size).
.PHONY: faults
faults: $(STAMP)
	FAULTS_SIZE=20000 FAULTS_BATCH=250 $(BIN)/python -m pytest -s tests/faults
