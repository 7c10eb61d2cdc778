# The two commands of the README (`make demo`, `make test`) install what they need first.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
.PHONY: deps test unit integration lint bench demo clean docker-test fuzz sanitize

# Always run: it only checks when everything is there (system packages can vanish while
# the virtualenv stays).
deps:
	VENV=$(VENV) bash scripts/bootstrap.sh

# mypy reads its configuration (which packages, strict on vpn/core) from pyproject.toml;
# stubtest checks the .pyi stubs of the C modules against the built modules.
NATIVE_MODULES := vpn.core.offload._gso vpn.core.offload._gro vpn.core.wireguard._transport \
                  vpn.core.wireguard._screen vpn.core.wireguard._handshake vpn.io._udp
lint: deps
	$(VENV)/bin/ruff check vpn lab tests bench scripts examples
	$(VENV)/bin/mypy --config-file pyproject.toml
	$(PYTHON) -m mypy.stubtest --mypy-config-file pyproject.toml $(NATIVE_MODULES)

unit: deps
	$(PYTHON) -m pytest -q tests/unit

integration: deps
	$(PYTHON) -m pytest -q tests/integration

# The sanitizer run, the compose file and the whole suite (scripts/test.sh runs the slow
# tests beside the sanitizer).
test: deps lint
	PYTHON=$(PYTHON) bash scripts/test.sh

# The native modules built with AddressSanitizer and UBSan, against their property tests (a
# fifth of their examples) and issue 22's reproducers: under a minute, about two beside a
# CPU hog on 2 cores, so part of `make test`.
sanitize: deps
	PYTHON=$(PYTHON) bash scripts/sanitize.sh

# The parsers' property tests (tests/unit/test_fuzz.py) with 20,000 examples each.
fuzz: deps
	HYPOTHESIS_PROFILE=fuzz $(PYTHON) -m pytest -q tests/unit/test_fuzz.py

bench: deps
	$(PYTHON) -m bench.run

demo: deps
	$(PYTHON) scripts/demo.py

# The docker/ topology brought up for real (root): installs docker.io, docker-compose and
# debootstrap itself, starts its own dockerd where none answers, tears everything down.
docker-test: deps
	bash scripts/docker-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis bench/results build
	find vpn -name '*.so' -delete
