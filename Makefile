# selfhost.textgen: one entry point for set-up, tests and the demo.
#   make test   install everything needed, then lint, sanity and unit (side by side), integration and every
#               Molecule scenario
#   make demo   deploy the embedded default (a local systemd target with CPU vLLM and a tiny model)
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

PY          ?= python3
VENV        := $(CURDIR)/.venv
BIN         := $(VENV)/bin
BUILD       := $(CURDIR)/.build
export TEXTGEN_CACHE_DIR ?= /var/cache/selfhost-textgen
export TEXTGEN_STATE_DIR := $(BUILD)
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections
export ANSIBLE_ROLES_PATH := $(CURDIR)/roles
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Scenarios `make test` runs (one with `make molecule SCENARIO=NAME`), in lanes side by side (see
# tests/testbed/molecule.sh): `stack` then `fleet`, beside `edge` then `gpu_driver` (they end while fleet
# converges, before its rollouts and their timed gates).
SCENARIOS   ?= stack,fleet edge,gpu_driver
SCENARIO    ?=

.PHONY: test venv collection lint sanity unit integration molecule images wheelhouse tiny-model \
        docker-up docker-down demo demo-clean clean bench

test: venv collection
	bash tests/testbed/host-packages.sh
	status=0
	$(MAKE) --no-print-directory -j3 --output-sync=target lint sanity unit || status=$$?
	if [ $$status -eq 0 ]; then
	  bash tests/testbed/docker-up.sh
	  $(MAKE) --no-print-directory images wheelhouse integration molecule || status=$$?
	  bash tests/testbed/docker-down.sh || true
	fi
	exit $$status

venv: $(BIN)/.installed
$(BIN)/.installed: requirements-dev.txt $(wildcard proxy/pyproject.toml)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	if [ -f proxy/pyproject.toml ]; then $(BIN)/pip install -q -e ./proxy; fi
	touch $@

# The collection as Ansible sees it: .build/collections/ansible_collections/selfhost/textgen -> repo
collection:
	mkdir -p $(BUILD)/collections/ansible_collections/selfhost
	ln -sfn $(CURDIR) $(BUILD)/collections/ansible_collections/selfhost/textgen

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint --profile production

# ansible-test needs the collection at .../ansible_collections/NS/NAME: sanity runs on a copy there (the
# collection's content plus tests/unit; the test harness, Molecule and benchmarks are ruff-checked), from
# its own venv holding ansible-test's pinned sanity requirements (its --requirements bootstrap needs a
# host that is not reachable from CI).
SANITY_VENV := $(BUILD)/sanity-venv
$(SANITY_VENV)/.installed: requirements-dev.txt
	$(PY) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install -q $$(grep '^ansible-core==' requirements-dev.txt)
	reqs=$$($(SANITY_VENV)/bin/python -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_data/requirements
	for t in ansible-doc changelog import pep8 pylint runtime-metadata validate-modules yamllint; do
	  $(SANITY_VENV)/bin/pip install -q -r $$reqs/sanity.$$t.txt
	done
	touch $@

# ansible-test bootstraps pip in its test venvs with get-pip.py from a host CI cannot reach: give it
# the same pip release from PyPI through a small stand-in script in its cache.
ANSIBLE_TEST_PIP := 24.2
ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
$(ANSIBLE_TEST_CACHE)/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py: tests/testbed/get_pip_shim.py
	mkdir -p $(ANSIBLE_TEST_CACHE)
	$(PY) -m pip download -q --no-deps -d $(ANSIBLE_TEST_CACHE) pip==$(ANSIBLE_TEST_PIP)
	cp tests/testbed/get_pip_shim.py $@

sanity: $(SANITY_VENV)/.installed $(ANSIBLE_TEST_CACHE)/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py $(SANITY_VENV)/.installed
	rm -rf $(BUILD)/sanity && mkdir -p $(BUILD)/sanity/ansible_collections/selfhost/textgen
	git ls-files -co --exclude-standard | grep -vE '^(proxy/tests|molecule|benchmarks|tests/(integration|testbed|gpu|tiny_model))/' | \
	  tar -cf - -T - | tar -xf - -C $(BUILD)/sanity/ansible_collections/selfhost/textgen
	cd $(BUILD)/sanity/ansible_collections/selfhost/textgen
	git init -q . && git add -A
	PATH=$(SANITY_VENV)/bin:$$PATH $(SANITY_VENV)/bin/ansible-test sanity --python 3.11 --color no

unit: venv collection
	$(BIN)/pytest -q tests/unit $(wildcard proxy/tests/unit)

integration: venv tiny-model
	$(BIN)/pytest -q tests/integration

bench: venv tiny-model
	failed=()
	for b in benchmarks/*.py; do
	  case $$b in *_fake_*|*_alt_*|*_guide_*) continue ;; esac
	  echo "===== $$b ====="
	  $(BIN)/python $$b || failed+=("$$b")
	done
	[ $${#failed[@]} -eq 0 ] || { echo "benchmarks below their bar: $${failed[*]}"; exit 1; }

images:
	bash tests/testbed/build-image.sh bookworm
	bash tests/testbed/build-image.sh noble || { rc=$$?; [ $$rc -eq 3 ] && echo "##### WARNING: Ubuntu archive unreachable: noble targets will be SKIPPED #####" || exit $$rc; }

wheelhouse:
	bash tests/testbed/wheelhouse.sh

tiny-model: venv
	[ -f $(BUILD)/tiny-model/model.safetensors ] || $(BIN)/python tests/tiny_model/build.py $(BUILD)/tiny-model

molecule: venv collection tiny-model
	export TEXTGEN_WHEELHOUSE=$$(bash tests/testbed/wheelhouse.sh | tail -n 1)
	export TEXTGEN_TINY_MODEL=$(BUILD)/tiny-model
	bash tests/testbed/molecule.sh $(if $(SCENARIO),$(SCENARIO),$(SCENARIOS))

docker-up:
	bash tests/testbed/docker-up.sh

docker-down:
	bash tests/testbed/docker-down.sh

demo: venv collection tiny-model
	bash tests/testbed/docker-up.sh
	bash tests/testbed/build-image.sh bookworm
	bash tests/testbed/wheelhouse.sh >/dev/null
	bash tests/testbed/demo.sh up

demo-clean:
	bash tests/testbed/demo.sh down

clean:
	rm -rf $(BUILD)
