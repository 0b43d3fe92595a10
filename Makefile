# The README's two set-up commands are `make demo` and `make test`; each installs what it needs.
SHELL := /bin/bash
VENV = $(shell scripts/venv.sh)
PYTEST_ARGS ?=

.PHONY: deps venv test lint typecheck unit fuzz chaos demo bench packages image proto vagrant clean

deps:
	@scripts/system-deps.sh

venv: deps
	@echo "venv: $(VENV)"

# lint-imports checks the import layers in pyproject's [tool.importlinter] (docs/architecture.md).
lint: deps
	@v=$(VENV); $$v/bin/ruff check vmagent tests bench && $$v/bin/ruff format --check vmagent tests bench && \
	  $$v/bin/lint-imports --no-cache --no-logo

typecheck: deps
	@v=$(VENV); $$v/bin/mypy vmagent

proto: deps
	@v=$(VENV); $$v/bin/python -m vmagent.api.generate

test: deps
	@v=$(VENV); set -e; \
	  $$v/bin/ruff check vmagent tests bench; \
	  $$v/bin/ruff format --check vmagent tests bench; \
	  $$v/bin/lint-imports --no-cache --no-logo; \
	  $$v/bin/mypy vmagent; \
	  PATH=$$v/bin:$$PATH $$v/bin/python -m pytest $(PYTEST_ARGS)

unit: deps
	@v=$(VENV); PATH=$$v/bin:$$PATH $$v/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# The fuzz tier with a longer budget: examples per target (`make test` runs 200; FUZZ_EXAMPLES=N), and
# the control-plane crash test with the issue's 50 SIGKILLs (`make test` runs 5; CRASH_ROUNDS=N), and the
# agent's (50 kills during join and 50 during rotation; `make test` runs 6 of each).
FUZZ_EXAMPLES ?= 5000
CRASH_ROUNDS ?= 50
fuzz: deps
	@v=$(VENV); VMAGENT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) VMAGENT_CRASH_ROUNDS=$(CRASH_ROUNDS) \
	  VMAGENT_AGENT_CRASH_ROUNDS=$(CRASH_ROUNDS) VMAGENT_AGENT_CRASH_SECONDS=900 PATH=$$v/bin:$$PATH \
	  $$v/bin/python -m pytest tests/fuzz tests/integration/test_cp_crash_consistency.py \
	  tests/integration/test_agent_crash_consistency.py $(PYTEST_ARGS)

# The fault tests at the issue's lengths (`make test` runs shorter ones, docs/reliability.md): the control
# plane down for 60 s (CP_DOWN=N) and a VM cut from it for 300 s (PARTITION=N), about 8 minutes in all.
CP_DOWN ?= 60
PARTITION ?= 300
chaos: deps
	@v=$(VENV); VMAGENT_CP_DOWN_SECONDS=$(CP_DOWN) VMAGENT_PARTITION_SECONDS=$(PARTITION) PATH=$$v/bin:$$PATH \
	  $$v/bin/python -m pytest -s tests/system/test_cp_killed.py tests/system/test_partition.py \
	  tests/system/test_agent_crash.py $(PYTEST_ARGS)

demo: deps
	@v=$(VENV); PATH=$$v/bin:$$PATH $$v/bin/python -m vmagent.demo

# The benchmarks (the other bench/*.py are their helper modules); tests/unit/test_bench_list.py keeps
# this list equal to the bench/*.py files that run as a program.
BENCHMARKS = csr registration xds_convergence dataplane agent_footprint fleet kube_source

bench: deps
	@v=$(VENV); set -e; for b in $(BENCHMARKS); do echo "== bench/$$b.py" >&2; \
	  PATH=$$v/bin:$$PATH $$v/bin/python bench/$$b.py; done

packages: deps
	@v=$(VENV); PATH=$$v/bin:$$PATH packaging/build.sh

# The container image (docs/kubernetes.md "The image"): localhost/vmagent:VERSION in the podman store and
# dist/vmagent-image_VERSION_ARCH.oci.tar, from the .debs (built first) on the package tier's Debian tree.
image: deps
	@v=$(VENV); set -e; PATH=$$v/bin:$$PATH FORMATS=deb packaging/build.sh; \
	  PATH=$$v/bin:$$PATH $$v/bin/python packaging/image.py --debs dist

# The VM tier (docs/vagrant.md): real VMs under Vagrant + libvirt, not part of `make test`. It installs its
# own Debian packages (scripts/vagrant-deps.sh), starts libvirt itself and leaves nothing behind.
vagrant: deps
	@scripts/vagrant-deps.sh
	@v=$(VENV); PATH=$$v/bin:$$PATH $$v/bin/python -m pytest tests/vagrant $(PYTEST_ARGS)

clean:
	rm -rf dist build *.egg-info .mypy_cache .pytest_cache .ruff_cache
