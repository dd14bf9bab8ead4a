# One entry point for people and CI. Every target builds its own virtual environment.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test sim bench explore soak mutate check clean typings flash deploy micropython needs image crashpoints web-assets

## micropython: the 32-bit unix port with the firmware frozen, as the production image freezes it.
## Source: MICROPYTHON_SRC (a pinned tarball, sha256 checked), else the v1.28.0 tag (commit checked).
MICROPYTHON := build/micropython
FROZEN := firmware/manifest.py $(wildcard firmware/tukar/*.py) $(wildcard tools/tukar_tools/mpshim/*.py) \
	$(wildcard tools/tukar_tools/mpshim/c/*/*)
export MICROPYTHON_SRC

$(MICROPYTHON): tools/build/micropython.sh $(FROZEN)
	tools/build/micropython.sh build

micropython: $(MICROPYTHON)

## needs: the Debian packages the tests use (a 32-bit C toolchain, Mosquitto)
needs:
	@tools/build/needs.sh

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
# The end-to-end tests mostly wait on brokers and simulated time: 4 workers on 2 cores.
PYTEST_WORKERS ?= 4
test: needs $(STAMP) $(TYPINGS_STAMP) $(MICROPYTHON)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## sim: a simulated cabinet you can watch and drive (RUNTIME=micropython: the firmware in MicroPython)
RUNTIME ?= cpython
sim: $(STAMP) $(if $(filter micropython,$(RUNTIME)),$(MICROPYTHON))
	$(VENV)/bin/tukar sim --runtime $(RUNTIME) $(SIM_ARGS)

## web-assets: the web console's MQTT client (mqtt.js, pinned in tools/web/package-lock.json) into
## tools/tukar_tools/console/mqtt.min.js, which is committed: only whoever updates it needs npm
web-assets:
	cd tools/web && npm ci --no-audit --no-fund
	cp tools/web/node_modules/mqtt/dist/mqtt.min.js tools/tukar_tools/console/mqtt.min.js

## bench: figures measured under the MicroPython VM (fuel, heap, allocations per tick)
bench: $(STAMP) $(MICROPYTHON)
	$(PY) -m tukar_tools.bench $(BENCH_ARGS)

## explore: every reachable state of a 3-slot cabinet, checked against the safety invariants; each
## violation is written as a scenario under build/explore (EXPLORE_ARGS: --slots 2, --verbose, ...)
explore: $(STAMP)
	$(VENV)/bin/tukar explore $(EXPLORE_ARGS)

## soak: randomized property runs (1 M control ticks, or SOAK_ARGS="--minutes 30"), then one cabinet
## for 30 simulated days across three wraps of ticks_ms; prints the seed, exits 1 on a violation
## (SOAK_ARGS: properties | month, --seed N, --days 5 ...)
soak: $(STAMP)
	$(VENV)/bin/tukar soak $(SOAK_ARGS)

## crashpoints: a swap in the MicroPython runtime with the power cut at each of its flash writes and
## output changes in turn (make test cuts at those up to the dispense door's unlock); prints each
## point and what the rider and the events made of it; exits 1 on a broken invariant
## (CRASHPOINTS_ARGS: --only dispense, --points 3,7, --json)
crashpoints: $(STAMP) $(MICROPYTHON)
	$(VENV)/bin/tukar crashpoints $(CRASHPOINTS_ARGS)

## mutate: mutation testing of the safety modules (mutmut; the modules and tests: [tool.mutmut] in
## pyproject.toml); prints the score per module. MUTATE_ARGS: --survivors, --fresh, --max-children 1
mutate: $(STAMP)
	$(PY) -m tukar_tools.mutate $(MUTATE_ARGS)

## flash: erase a board and write a MicroPython image: make flash PORT=/dev/ttyUSB0 FIRMWARE=fw.bin
flash: $(STAMP)
	@test -n "$(PORT)" -a -n "$(FIRMWARE)" || { echo "usage: make flash PORT=/dev/ttyUSB0 FIRMWARE=image.bin [FLASH_ARGS=--chip esp32s3]"; exit 2; }
	$(VENV)/bin/tukar flash --port $(PORT) --firmware $(FIRMWARE) $(FLASH_ARGS)

## deploy: the firmware as .mpy onto a board: make deploy PORT=/dev/ttyUSB0 BOARD=tukar-12-wroom
deploy: $(STAMP)
	@test -n "$(PORT)" -a -n "$(BOARD)" || { echo "usage: make deploy PORT=/dev/ttyUSB0 BOARD=tukar-12-wroom [DEPLOY_ARGS=--verbose]"; exit 2; }
	$(VENV)/bin/tukar deploy --port $(PORT) --board $(BOARD) $(DEPLOY_ARGS)

## image: the production image with the firmware frozen: make image BOARD=tukar-12-wroom
## (ESP-IDF on PATH and MICROPYTHON_DIR, a MicroPython v1.28.0 checkout; fails clearly without)
image:
	@test -n "$(BOARD)" || { echo "usage: make image BOARD=tukar-12-wroom [MICROPYTHON_DIR=...]"; exit 2; }
	tools/build/image.sh $(BOARD)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis typings build
