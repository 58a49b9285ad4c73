# The two commands: `make demo` (a live demo facility; `make demo PORT=8700` for another port)
# and `make test`. Each does its own set-up on a fresh machine: a virtualenv in .venv with the
# Python packages it needs (the demo: afmon[server] only; the tests: afmon[test]), and for the
# tests the Debian packages they need (Chromium for the dashboard, promtool, ...).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The demo's port: `make demo PORT=8700`. `:=`, so a PORT in the environment is not taken.
PORT   := 8600
DEBS   := chromium chromium-driver prometheus prometheus-alertmanager xrootd-server xrootd-client \
          munge slurmctld slurmd slurm-client slurmdbd victoria-metrics \
          nginx-light systemd sqlite3

.PHONY: demo test lint bench debs clean

# The virtualenv, then one stamp per extra: the demo installs what the server and dashboard
# need (afmon[server]), the tests everything (afmon[test], which includes afmon[server]).
$(BIN)/.venv-made:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "afmon needs Python 3.11 or newer")'
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@touch $@

$(BIN)/.afmon-server-installed: pyproject.toml $(BIN)/.venv-made
	$(BIN)/python -m pip install --quiet -e ".[server]"
	@touch $@

$(BIN)/.afmon-installed: pyproject.toml $(BIN)/.venv-made
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@ $(BIN)/.afmon-server-installed

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(BIN)/.afmon-server-installed
	$(BIN)/afmon demo --port $(PORT)

test: $(BIN)/.afmon-installed debs
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(BIN)/.afmon-installed
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
