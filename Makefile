# Two commands do everything on a fresh machine with Python 3.10+ and make:
#   make book   -> creates .venv, installs requirements.txt, builds the site into _build/html
#   make test   -> same environment; unit tests + every notebook of _toc.yml under nbval in quick mode,
#                  plus the check that committed outputs are stamped and not stale
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.requirements-installed
# Per-cell limit for nbval; quick mode is meant to take seconds.
CELL_TIMEOUT ?= 600

.PHONY: book test test-smoke test-site venv execute check-stamps gpu clean

venv: $(READY)

$(READY): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# If pip is configured with a local wheelhouse (find-links) that holds a torch wheel,
	@# prefer it to a multi-gigabyte download; elsewhere this finds nothing and is skipped.
	-$(BIN)/python -m pip install --quiet --no-index --no-deps "torch>=2.4" 2>/dev/null
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(READY)

book: $(READY)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@test -f _build/html/index.html && echo "site written to _build/html/index.html"

test: $(READY)
	RESNORM_MODE=quick $(BIN)/python -m pytest tests \
	    $$($(BIN)/python -m resnorm.stamps list) \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) -p no:cacheprovider
	$(MAKE) --no-print-directory test-smoke

# The GPU chapters once more, in full mode at toy size on the CPU (RESNORM_SMOKE=1): every cell
# that only full mode reaches runs here first, so a GPU run is never lost to a typo.
GPU_NOTEBOOKS = $$($(BIN)/python -c "from resnorm.execute import GPU_CHAPTERS; print(*GPU_CHAPTERS)")
test-smoke: $(READY)
	RESNORM_MODE=full RESNORM_SMOKE=1 $(BIN)/python -m pytest $(GPU_NOTEBOOKS) \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) -p no:cacheprovider

# The built site in headless Chromium (tests/site): every page of _toc.yml loads without
# JavaScript errors or outside requests, MathJax typesets, images and internal links resolve,
# the Colab and download buttons point to the notebook; screenshots go to _build/screenshots/.
# Needs Debian's chromium and chromium-driver (.ci/run installs them).
SITE_READY := $(VENV)/.site-requirements-installed
$(SITE_READY): requirements-site.txt $(READY)
	$(BIN)/python -m pip install --quiet -r requirements-site.txt
	touch $(SITE_READY)

test-site: book $(SITE_READY)
	RESNORM_SITE_TEST=1 $(BIN)/python -m pytest tests/site -p no:cacheprovider

# Re-execute notebooks and stamp them: make execute NB="book/layernorm.ipynb" MODE=cpu
MODE ?=
execute: $(READY)
	$(BIN)/python -m resnorm.execute $(if $(MODE),--mode $(MODE)) $(NB)

# On a machine with an NVIDIA GPU: execute the GPU chapters in full mode with the executor, one
# after another (training, performance, experiments), printing each one's wall time against its
# budget (10 minutes in all on one H100). GPU_PYTHON: a Python with torch, triton and the
# executor's packages (on the lent GPU machines, python3 with PYTHONPATH set; see CONTRIBUTING).
GPU_PYTHON ?= $(BIN)/python
gpu:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m resnorm.execute --gpu-chapters $(if $(COPY_TO),--copy-to $(COPY_TO))

check-stamps: $(READY)
	$(BIN)/python -m resnorm.stamps check

clean:
	rm -rf _build
