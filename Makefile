# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install the package into it first; nothing else needs to be set up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make test-lowest`: the same suite in a second venv holding exactly the lowest versions
# setup.cfg accepts (constraints-lowest.txt), so the declared ranges are tested, not hoped
LOWEST_VENV ?= .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed

.PHONY: demo test test-lowest dist dist-check bench reliability venv sysdeps clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo,gpiod,dist]'
	touch $@

$(LOWEST_STAMP): setup.cfg pyproject.toml constraints-lowest.txt
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q -c constraints-lowest.txt -e '.[test,demo,gpiod]'
	touch $@

venv: $(STAMP)

# mosquitto and stm32flash are real peers in the tests; install them if this machine lacks them.
sysdeps:
	@scripts/sysdeps

demo: $(STAMP)
	$(BIN)/stm32ota demo $(ARGS)

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q $(ARGS)

test-lowest: $(LOWEST_STAMP) sysdeps
	$(LOWEST_VENV)/bin/python -m pytest -q $(ARGS)

# The sdist and the wheel in dist/, built as pip would (an isolated PEP 517 build).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# What CI checks after the tests: both archives hold what they should and nothing else, and
# the wheel, installed into a fresh venv away from this checkout, runs `--version` and
# `demo --fast` (scripts/dist-check says what it looks at).
dist-check: dist sysdeps
	$(BIN)/python scripts/dist-check dist

bench: $(STAMP) sysdeps
	$(BIN)/python bench/flash.py $(ARGS)

# hostile conditions by category, one row of figures each (README "Reliability")
reliability: $(STAMP)
	$(BIN)/python bench/reliability.py $(ARGS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) build dist *.egg-info .pytest_cache
