# Two commands for a fresh machine (only Python 3.11 needed): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TOOLKIT = $(VENV)/bin/toolkit
STAMP   = $(VENV)/.installed

# `make test` runs its own stack (own directory and ports) so it can run beside a developer's stack.
# Each port can be moved (e.g. `make test TEST_PARSE_PORT=21338`) to run two checkouts side by side.
TEST_STACK_DIR     ?= $(CURDIR)/.stack-test
TEST_POSTGRES_PORT ?= 55329
TEST_PARSE_PORT    ?= 21337
TEST_TEMPORAL_PORT ?= 27233
TEST_UI_PORT       ?= 28233
TEST_API_PORT      ?= 28000
TEST_ENV = TOOLKIT_STACK_DIR=$(TEST_STACK_DIR) POSTGRES_PORT=$(TEST_POSTGRES_PORT) PARSE_PORT=$(TEST_PARSE_PORT) \
           TEMPORAL_PORT=$(TEST_TEMPORAL_PORT) TEMPORAL_UI_PORT=$(TEST_UI_PORT) API_PORT=$(TEST_API_PORT)

.PHONY: install run lab test lint stack-up stack-down stack-status clean load

$(STAMP): pyproject.toml parse-server/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(TOOLKIT) stack up
	$(TOOLKIT) run

# JupyterLab on the local stack, the project's venv as kernel, notebooks/ open.
lab: install
	$(TOOLKIT) stack up
	$(TOOLKIT) notebooks lab

test: install
	@env $(TEST_ENV) $(TOOLKIT) stack up && \
	env $(TEST_ENV) $(PY) -m pytest --nbval-lax --nbval-current-env $(PYTEST_ARGS); status=$$?; \
	env $(TEST_ENV) $(TOOLKIT) stack down; exit $$status

lint: install
	$(VENV)/bin/ruff check toolkit tests $(wildcard loadtests)
	$(VENV)/bin/ruff format --check toolkit tests $(wildcard loadtests)

stack-up: install
	$(TOOLKIT) stack up

stack-down: install
	$(TOOLKIT) stack down

stack-status: install
	$(TOOLKIT) stack status

clean:
	-$(TOOLKIT) stack down
	rm -rf .stack .stack-test .stack-faults reports

# Load scenarios against the stack of .stack (or of TOOLKIT_STACK_DIR); records in reports/load/.
#   make load SCENARIO=concurrent|large|sustained|stress LOAD_PATH=reference|legacy|current LOAD_ARGS="--webhooks"
# The path variable is LOAD_PATH, not PATH: PATH is the shell's search path, and overriding it breaks make.
ifeq ($(origin PATH),command line)
$(error PATH=$(PATH) would replace the shell's search path; make load takes LOAD_PATH=reference|legacy|current)
endif
SCENARIO  ?= concurrent
LOAD_PATH ?= current
LOAD_ARGS ?=
load: install
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless --scenario $(SCENARIO) --path $(LOAD_PATH) $(LOAD_ARGS)
