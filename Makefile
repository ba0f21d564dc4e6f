# gpu-deploy: `make plan STACK=prod` and `make test` are all a fresh machine needs.
# `make plan` (and list, diff, render, sources, status, logs, tunnel, preflight) installs only requirements.txt,
# what planning needs (.venv/.runtime); lint, typecheck, unit, real and bench add requirements-dev.txt
# (.venv/.installed). `python -m stacks ...` sets up the same runtime .venv by itself (stacks/bootstrap.py).
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STACK   ?= prod
AGAINST ?= HEAD
PROFILE ?= auto
TAIL    ?= 100

.PHONY: runtime venv plan list diff render sources status logs tunnel preflight \
        test lint typecheck unit real bench clean

runtime: $(VENV)/.runtime

venv: $(VENV)/.installed

# the same steps as stacks/bootstrap.py, which `python -m stacks` runs when the packages are missing
$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

plan: runtime
	$(BIN)/python -m stacks plan $(STACK)

list: runtime
	$(BIN)/python -m stacks list

# what the working tree changes against AGAINST (a git ref, HEAD by default), offline
diff: runtime
	$(BIN)/python -m stacks diff $(STACK) --against $(AGAINST)

# a kubernetes stack's objects as YAML under OUT (new or empty)
render: runtime
	@test -n "$(OUT)" || { echo "make render needs OUT=DIR (new or empty)" >&2; exit 2; }
	$(BIN)/python -m stacks render $(STACK) --out $(OUT)

sources: runtime
	$(BIN)/python -m stacks sources $(STACK) --check

# on the stack's host (over its pinned SSH connection, or this machine for host: local)
status: runtime
	$(BIN)/python -m stacks status $(STACK)

logs: runtime
	@test -n "$(SERVICE)" || { echo "make logs needs SERVICE=NAME (FOLLOW=1 keeps printing)" >&2; exit 2; }
	$(BIN)/python -m stacks logs $(STACK) $(SERVICE) --tail $(TAIL) $(if $(FOLLOW),--follow)

tunnel: runtime
	$(BIN)/python -m stacks tunnel $(STACK)

# this machine's GPU against PROFILE (auto by default)
preflight: runtime
	$(BIN)/python -m components.host.preflight --profile $(PROFILE)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin -q -t=3.8- --violations --no-tips components/host/*.py components/core/*.py stacks/bootstrap.py
	$(BIN)/shellcheck --external-sources --severity=style components/host/scripts/*.sh .ci/*.sh
	$(BIN)/hadolint images/cuda-python/Dockerfile

typecheck: venv
	$(BIN)/mypy .

unit: venv
	$(BIN)/python -m pytest --ignore=tests/real

# the real-engine tier: a real dockerd, sshd and debootstrapped images on this machine (root, Debian;
# .ci/install-real-tier.sh installs what it needs)
real: venv
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then bash .ci/install-real-tier.sh; fi
	$(BIN)/python -m pytest tests/real

test: lint typecheck unit real

# wall-clock limits the unit suite does not assert: plan and stack-file times, the probe's timeouts
bench: venv
	$(BIN)/python tests/bench_plan.py
	$(BIN)/python tests/bench_probe.py
	$(BIN)/python tests/bench_smoke.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
