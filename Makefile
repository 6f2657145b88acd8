# thorfleet: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need: Python packages into .venv (pinned by constraints.txt);
# the lab installs its own Debian packages (systemd-container, debootstrap, ...) on `up`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# Keep Ansible's temporary and collection paths inside the checkout's environment.
export ANSIBLE_LOCAL_TEMP := $(CURDIR)/$(VENV)/ansible-tmp

LAB_HOSTS ?= 2

.PHONY: all venv demo test lint unit lab bench check-cuda lab-up lab-down clean

all: test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,lab]'
	touch $@

## demo: boot the lab fleet, run the main job against thor01, show its services
demo: venv
	$(BIN)/thorfleet lab up --hosts $(LAB_HOSTS)
	$(BIN)/ansible-playbook site.yml -l thor01
	$(BIN)/thorfleet status -l thor01

## test: lint, then the unit and lab tests in two pytest sessions at once (tests/suite.py):
## one on two workers here (the unit tests, and the lab tests on a 4-host lab), the other
## the fleet modules on a second 4-host lab, in a copy of this checkout; each ends with
## where its time went and its ten slowest tests, then the total against the budget
test: venv
	@start=$$(date +%s) && $(MAKE) --no-print-directory lint && \
	  THORFLEET_LINT_SECONDS=$$(( $$(date +%s) - start )) \
	  $(BIN)/python -m tests.suite

lint: venv
	$(BIN)/ruff check src library filter_plugins collections roles strategy_plugins tests bench scripts
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production

unit: venv
	$(BIN)/pytest -q tests/unit

lab: venv
	$(BIN)/pytest -q tests/lab

## bench: a no-op re-run against ansible-core's defaults; an engine's clean build, re-run and
## ref bump; a 4-host fleet's upstream bytes and compiles with and without fetching once
bench: venv
	$(BIN)/python bench/noop_rerun.py
	$(BIN)/python bench/engine_rebuild.py
	$(BIN)/python bench/fleet_fetch.py

## check-cuda: compile whisper-server with ggml-cuda for arch 110 with this machine's nvcc (opt-in)
check-cuda: venv
	$(BIN)/python scripts/check_cuda.py

lab-up: venv
	$(BIN)/thorfleet lab up --hosts $(LAB_HOSTS)

lab-down: venv
	$(BIN)/thorfleet lab down

clean: lab-down
	rm -rf $(VENV)
