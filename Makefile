# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv and install the package into it first; nothing else needs to be set up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench reliability venv sysdeps clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo,gpiod]'
	touch $@

venv: $(STAMP)

# mosquitto and stm32flash are real peers in the tests; install them if this machine lacks them.
sysdeps:
	@scripts/sysdeps

demo: $(STAMP)
	$(BIN)/stm32ota demo $(ARGS)

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP) sysdeps
	$(BIN)/python bench/flash.py $(ARGS)

# hostile conditions by category, one row of figures each (README "Reliability")
reliability: $(STAMP)
	$(BIN)/python bench/reliability.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
