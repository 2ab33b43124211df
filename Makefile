# The two commands a new user needs (README.md):
#   make train   - train the notebook's MLP on MNIST (downloads it once)
#   make test    - run the test suite
# Both create ./.venv on first use and install xpgrad into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments: make train ARGS="--dataset fashion-mnist --device cuda"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: train test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

train: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[train,plot]'
	$(BIN)/xpgrad train $(ARGS)

test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pytest $(PYTEST_ARGS)
