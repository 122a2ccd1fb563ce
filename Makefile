# Two commands do everything on a fresh machine:
#   make app    set up (venv, packages), build the sample store if missing, open the review app
#   make test   set up (venv, packages, Debian chromium for the browser tests), run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: app test setup browser bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[test,ray]'
	touch $(STAMP)

browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

app: setup
	$(BIN)/auditor app

test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: setup browser
	$(BIN)/pip install -q -c requirements.lock -e '.[bench]'
	for b in ingest fuzz planted mine review_yield export app browser_review ivf; do $(BIN)/python bench/$$b.py || exit 1; done
	@echo "bench/scale.py (10M candidates, about an hour and 6 GB of disk) runs on its own: $(BIN)/python bench/scale.py"

clean:
	rm -rf $(VENV) auditor-sample.duckdb auditor-sample.duckdb.wal .pytest_cache
