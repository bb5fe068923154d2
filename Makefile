# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install with constraints.txt (torch pinned to a CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
PROMPT ?= def fibonacci(n):

.PHONY: demo test install install-dev chromium sandbox data data-code train-tiny clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev chromium sandbox

# The playground test drives Debian's chromium through Playwright (Playwright's own browser download
# cannot work offline). Installed once when missing; without root or apt the test skips and says why.
chromium:
	@[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: could not install chromium (needs root and apt-get); the playground test will be skipped"

# The evaluation sandbox's boundary is Debian's bubblewrap (docs/evaluation.md). Installed once when
# missing; without root or apt the sandbox refuses to run untrusted code and says how to get it.
sandbox:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
	  echo "note: could not install bubblewrap (needs root and apt-get); the sandbox will refuse to run code"

demo: install
	$(BIN)/quicksilver generate "$(PROMPT)" --model coder-tiny --max-new-tokens 96 --block-length 32
	$(BIN)/quicksilver generate "$(PROMPT)" --model coder-tiny-ar --max-new-tokens 96 --no-live

# Two workers (pytest-xdist, in the dev extra), tests handed out one by one: most of the suite is CPU-bound
# with one torch thread per process, so a 2-core machine runs two at once.
test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The recipe of the bundled models (see docs/models.md): corpus, then both runs side by side.
data: install
	$(BIN)/quicksilver data build --out data/stdlib-8k --vocab-size 8192

# The larger code corpus (docs/corpus.md): stdlib + pinned PyPI sdists, deduplicated, with the bundled
# models' tokenizer.  Downloads the sdists once into data/cache/sdists (about 0.44 GB).
data-code: install
	$(BIN)/quicksilver data build --source stdlib --source pypi --out data/code-8k

train-tiny: data
	$(BIN)/quicksilver train configs/coder-tiny.toml --resume --no-progress > runs-coder-tiny.log 2>&1 & \
	$(BIN)/quicksilver train configs/coder-tiny-ar.toml --resume --no-progress > runs-coder-tiny-ar.log 2>&1; wait
	$(BIN)/quicksilver export runs/coder-tiny src/quicksilver/models/coder-tiny
	$(BIN)/quicksilver export runs/coder-tiny-ar src/quicksilver/models/coder-tiny-ar

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
