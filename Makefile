# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test install clean benchmarks mutation

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mechanoscope demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 tests

benchmarks: $(STAMP)
	$(PY) benchmarks/simulate.py

# Mutation testing of the numerical core (mutmut; about an hour on 2 cores; resumes where it stopped).
# Prints the score and every surviving mutant as JSON. Not part of `make test`.
mutation: $(STAMP)
	$(PY) benchmarks/mutation.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) mutants
