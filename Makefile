# The two commands a new user needs (docs/getting-started.md):
#   make train       - train the notebook's MLP on MNIST (downloads it once)
#   make test        - run the test suite
# and the documentation site (docs/, mkdocs.yml):
#   make docs        - build it into site/
#   make serve-docs  - serve it on http://127.0.0.1:8000, rebuilt on every change
# Each creates ./.venv on first use and installs xpgrad into it with what it
# needs, again only when pyproject.toml has changed since (a stamp file per
# set of extras, in .venv), so from the second run on the first screen is the
# command itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments: make train ARGS="--dataset fashion-mnist --device cuda"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: train test docs serve-docs notebook

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# $(VENV)/.installed-EXTRAS: xpgrad installed (editable) with those extras.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(subst +,$(comma),$*)]'
	touch $@

comma := ,

train: $(VENV)/.installed-train+plot
	$(BIN)/xpgrad train $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# NO_MKDOCS_2_WARNING: Material's notice about its successor, printed on every build.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

serve-docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve

# The tutorial notebook's stored outputs, from a run on the whole dataset (the site shows them).
notebook: $(VENV)/.installed-test+docs
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python docs/hooks/run_notebook.py
