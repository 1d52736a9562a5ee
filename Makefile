# Two commands set everything up: `make test` and `make demo` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs
PORT ?= 8501
CHROMIUM := /usr/bin/chromium

.PHONY: venv browser test lint demo dashboard bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The dashboard's browser test drives Debian's Chromium: install it where we can (as root or
# with password-less sudo, through apt-get); never fails, the test then skips and says why.
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: no $(CHROMIUM) and no apt-get: the dashboard browser test will be skipped"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "note: no $(CHROMIUM) and not root: the dashboard browser test will be skipped"; exit 0; fi; \
	echo "installing Debian's chromium for the dashboard browser test"; \
	log=$$(mktemp); \
	{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium; } >$$log 2>&1 \
		|| { tail -n 5 $$log; echo "note: could not install chromium: the dashboard browser test will be skipped"; }; \
	rm -f $$log

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	$(PY) -m ruff check .

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/interp run experiments/quickstart.yaml --runs-dir $(RUNS)
	@echo "Runs are in $(abspath $(RUNS)); list them with: $(VENV)/bin/interp list --runs-dir $(RUNS)"
	$(VENV)/bin/interp dashboard --runs-dir $(RUNS) --port $(PORT)

dashboard: $(STAMP)
	$(VENV)/bin/interp dashboard --runs-dir $(RUNS) --port $(PORT)

bench: $(STAMP)
	for f in benchmarks/[!_]*.py; do HF_HUB_OFFLINE=1 $(PY) $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
