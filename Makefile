# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and by exact version: on machines whose pip has a local wheel this avoids a
# multi-GB download; override with e.g. `make test TORCH_SPEC="torch torchvision"` elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The venv takes about 6 GB (torch's CUDA build); pip also unpacks into TMPDIR. A full disk is refused up front
# with a message instead of a pip OSError halfway through the install.
MIN_FREE_GB ?= 8

.PHONY: install diskcheck browser test test-fast demo lint clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory diskcheck
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

diskcheck:
	@$(PYTHON) -c "import glob, os, shutil, sys, tempfile; need = $(MIN_FREE_GB); \
	  glob.glob('$(VENV)/lib/python*/site-packages/torch') and sys.exit(0); \
	  low = [(d, shutil.disk_usage(d).free / 2**30) for d in sorted({os.path.dirname(os.path.abspath('$(VENV)')), tempfile.gettempdir()})]; \
	  low = [(d, f) for d, f in low if f < need]; \
	  low and sys.exit('make: installing needs about %d GB free (torch alone is about 6 GB); only %s. Free some space, ' \
	    'or point VENV / TMPDIR at a larger disk (or MIN_FREE_GB=N to lower this check).' \
	    % (need, ', '.join('%.1f GB on %s' % (f, d) for d, f in low)))"

# Headless Chromium renders report.html in a test. Installed from Debian's packages when we are root with apt-get;
# elsewhere that one test skips and says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	        echo "warning: could not install chromium; the report rendering test will skip"; \
	    else echo "note: chromium not found; the report rendering test will skip"; fi; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check nnunet_tubeconv architectures trainers benchmarks tests
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# the unit tests (tests/unit/); tests/integration/ holds the slow ones (real nnU-Net runs)
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/nnunet-tubeconv demo

lint: $(STAMP)
	$(VENV)/bin/ruff check nnunet_tubeconv architectures trainers benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
