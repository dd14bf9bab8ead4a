# One entry point for people and CI. Every target builds its own virtual environment.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test sim bench check clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

## test: every test: firmware compiled by mpy-cross, core under CPython and the MicroPython VM
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## sim: a simulated cabinet you can watch and drive
sim: $(STAMP)
	$(VENV)/bin/tukar sim $(SIM_ARGS)

## bench: figures measured under the MicroPython VM (fuel, heap, allocations per tick)
bench: $(STAMP)
	$(PY) -m tukar_tools.bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
