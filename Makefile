# `make run` and `make test` each create/refresh the venv they need.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
ARGS ?=
# The suites `make run` runs; the committed leaderboard/ is what this writes on a machine without real data.
SUITES ?= audio-visual audio-multilabel

.PHONY: run test venv clean-cache

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python run_all.py --suite $(SUITES) $(ARGS)

# lint and format check first (settings in .ruff.toml), then the tests
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q tests $(ARGS)

clean-cache:
	rm -rf data/cache results
