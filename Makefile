# Two commands do all the set-up on a fresh machine:
#   make book   - create .venv, install the pinned dependencies, build the book (default profile)
#   make test   - lint (ruff, the import layers, the GitHub workflow) and the test suite (pytest)
#   make publish TO=DIR - the book as a static site in DIR
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
STAMP := $(VENV)/.installed

TO ?= site

.PHONY: install book publish test lint format bench clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is needed: run make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/python -m collab_lib book --profile $(PROFILE)

# the book as a static site in $(TO) (any web server; the GitHub Pages workflow uses it)
publish: $(STAMP)
	$(BIN)/python -m collab_lib book --profile $(PROFILE) --to $(TO)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet .github/workflows

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=15

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/dedup.py

clean:
	rm -rf _build
