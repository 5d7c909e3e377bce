# Two entry points for a fresh machine: `make demo` (phantom end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
SNAKE  := $(VENV)/bin/snakemake
CORES  ?= 2
# make demo: the full phantom demo (~4 h on 2 cores); DEMO=quick: the same DAG, smaller (~20 min);
# DEMO=realistic: the same DAG on a phantom as hard as real data, with a ground-truth oracle (~45 min)
DEMO   ?= full
ifeq ($(DEMO),quick)
DEMO_ARGS := --configfile config/demo-quick.yaml
ARCHIVE   := quick
else ifeq ($(DEMO),realistic)
DEMO_ARGS := --configfile config/demo-realistic.yaml
ARCHIVE   := realistic
else ifeq ($(DEMO),full)
DEMO_ARGS :=
ARCHIVE   := demo
else
$(error DEMO must be full, quick or realistic, not '$(DEMO)')
endif
# Optional index for the CPU torch build on machines without a local wheel,
# e.g. make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install sysdeps demo test lint clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# CPU torch first, pinned, so nothing below can pull a CUDA build.
	$(PIP) install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -c requirements.txt -e ".[workflow,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(SNAKE) --cores $(CORES) $(DEMO_ARGS)
	$(SNAKE) --cores $(CORES) $(DEMO_ARGS) --report results/report-$(ARCHIVE).html
	@echo "release:  results/archive/$(ARCHIVE)/release/   (synthcxr verify results/archive/$(ARCHIVE)/release)"
	@echo "card:     results/archive/$(ARCHIVE)/release/README.md"
	@echo "report:   results/report-$(ARCHIVE).html"
	@echo "numbers:  results/validate/$(ARCHIVE)/*.json"

sysdeps:
	bash tools/sysdeps.sh

# The suite on ATen's default kernels, then the tests that compare floats across runs (marker kernels)
# again on AVX2 ones: a CPU with AVX-512 takes other reduction orders there. Where ATen's default already
# is AVX2, the first pass ran them.
test: install sysdeps
	SYNTHCXR_NO_PROGRESS=1 $(VENV)/bin/pytest -q
	@cap=$$($(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	if [ "$$cap" = AVX2 ]; then echo "ATen's default kernels here are AVX2: the pass above covered the kernels tests"; \
	else echo "ATen's default kernels here: $$cap; the kernels tests again on AVX2"; \
	  SYNTHCXR_NO_PROGRESS=1 ATEN_CPU_CAPABILITY=avx2 $(VENV)/bin/pytest -q -m kernels -p no:cacheprovider; fi

lint: install
	$(SNAKE) --lint
	$(SNAKE) -n --quiet

clean:
	rm -rf results .snakemake
