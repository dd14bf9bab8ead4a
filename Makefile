# One entry point for people and CI. Every target builds its own virtual environment.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test sim bench check clean typings flash deploy

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

## flash: erase a board and write a MicroPython image: make flash PORT=/dev/ttyUSB0 FIRMWARE=fw.bin
flash: $(STAMP)
	@test -n "$(PORT)" -a -n "$(FIRMWARE)" || { echo "usage: make flash PORT=/dev/ttyUSB0 FIRMWARE=image.bin [FLASH_ARGS=--chip esp32s3]"; exit 2; }
	$(VENV)/bin/tukar flash --port $(PORT) --firmware $(FIRMWARE) $(FLASH_ARGS)

## deploy: the firmware as .mpy onto a board: make deploy PORT=/dev/ttyUSB0 BOARD=tukar-12-wroom
deploy: $(STAMP)
	@test -n "$(PORT)" -a -n "$(BOARD)" || { echo "usage: make deploy PORT=/dev/ttyUSB0 BOARD=tukar-12-wroom [DEPLOY_ARGS=--verbose]"; exit 2; }
	$(VENV)/bin/tukar deploy --port $(PORT) --board $(BOARD) $(DEPLOY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis typings
