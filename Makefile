# The two commands: `make demo` (a live demo facility) and `make test`.
# Each does its own set-up on a fresh machine: virtualenv, Python packages and
# the Debian packages the tests need (Chromium for the dashboard, promtool).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEBS   := chromium chromium-driver prometheus prometheus-alertmanager xrootd-server xrootd-client \
          munge slurmctld slurmd slurm-client slurmdbd victoria-metrics \
          nginx-light systemd sqlite3

.PHONY: demo test lint bench debs clean

$(BIN)/.afmon-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "afmon needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(BIN)/.afmon-installed
	$(BIN)/afmon demo

test: $(BIN)/.afmon-installed debs
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(BIN)/.afmon-installed
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
