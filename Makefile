# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zooflow-installed

.PHONY: run test install clean gpu-wheels gpu-data gpu-check gpu-check-dry

# Reinstall when pyproject.toml is newer than the last install (a stale venv).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/zooflow run

test: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf data outputs reports mlartifacts mlruns mlflow.db

# The GPU check (bench/gpu_check.py; README "GPU check"). A GPU machine has python3 with torch but no
# .venv and no pydantic, and reaches no registry: gpu-wheels and gpu-data prepare here what travels
# there (the git-ignored .whl/ and .gpu/, carried by the device call); gpu-check runs with plain python3.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions
HOST_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
SHARED ?= ../shared
GPU_OUT ?= bench/results/gpu_check

# pydantic and what it needs, the versions installed here, as cp312 manylinux x86_64 wheels.
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(HOST_PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
		$$($(HOST_PYTHON) -c 'from importlib.metadata import version as v; print(*(f"{n}=={v(n)}" for n in "$(GPU_WHEELS)".split()))')
	@ls -l .whl && du -sh .whl

# CIFAR-10 as JPEGs and the airbench94 peer (never part of the project: read from .gpu/ at run time).
gpu-data:
	mkdir -p .gpu/airbench
	install -m 644 $(SHARED)/datasets/cifar10-jpg.tar.gz .gpu/
	install -m 644 $(SHARED)/peers/airbench/airbench94.py $(SHARED)/peers/airbench/LICENSE .gpu/airbench/
	@du -sh .gpu

gpu-check:
	$(PYTHON) bench/gpu_check.py --data .gpu/cifar10-jpg.tar.gz --airbench .gpu/airbench --out $(GPU_OUT)

gpu-check-dry:
	$(HOST_PYTHON) bench/gpu_check.py --dry-run --out $(GPU_OUT)-dry
