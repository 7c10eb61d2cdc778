# The two commands of the README (`make demo`, `make test`) install what they need first.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
.PHONY: deps test unit integration lint bench demo clean

# Always run: it only checks when everything is there (system packages can vanish while
# the virtualenv stays).
deps:
	VENV=$(VENV) bash scripts/bootstrap.sh

lint: deps
	$(VENV)/bin/ruff check vpn tests bench scripts

unit: deps
	$(PYTHON) -m pytest -q tests/unit

integration: deps
	$(PYTHON) -m pytest -q tests/integration

test: deps lint
	$(PYTHON) -m pytest -q tests

bench: deps
	$(PYTHON) -m bench.run

demo: deps
	$(PYTHON) scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis bench/results
