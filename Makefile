# gpu-deploy: `make plan STACK=prod` and `make test` are all a fresh machine needs.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STACK  ?= prod

.PHONY: venv plan test lint typecheck unit real bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

plan: venv
	$(BIN)/python -m stacks plan $(STACK)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin -q -t=3.8- --violations --no-tips components/host/*.py components/core/*.py
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
