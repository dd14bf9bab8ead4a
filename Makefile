# One entry point for people and CI. Every target builds its own virtual environment.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test sim bench check clean typings

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

## typings: the ESP32 MicroPython stubs that pyright checks firmware/ against (pyrightconfig.json)
STUBS_VERSION := 1.29.0.post1
TYPINGS_STAMP := typings/.installed-$(STUBS_VERSION)

$(TYPINGS_STAMP): $(STAMP)
	rm -rf typings
	$(PY) -m pip install --quiet --disable-pip-version-check --target typings micropython-esp32-stubs==$(STUBS_VERSION)
	@touch $@

typings: $(TYPINGS_STAMP)

## test: every test: firmware compiled by mpy-cross, core under CPython and the MicroPython VM
test: $(STAMP) $(TYPINGS_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## sim: a simulated cabinet you can watch and drive
sim: $(STAMP)
	$(VENV)/bin/tukar sim $(SIM_ARGS)

## bench: figures measured under the MicroPython VM (fuel, heap, allocations per tick)
bench: $(STAMP)
	$(PY) -m tukar_tools.bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis typings
