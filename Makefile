# stdpkt-lab: every target does the set-up it needs, idempotently.
#   make demo   a real chain (client | NAT | firewall | server) with traffic
#   make test   the test suite (real kernels, real traffic)
#   make lab    JupyterLab with the notebooks
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stdpkt-installed
SOURCES := pyproject.toml setup.py $(wildcard lkl/*.c lkl/init.sh lkl/boot-profile lkl/guest-bin/* stdpkt_lab/relay/*.c stdpkt_lab/relay/*.h stdpkt_lab/relay/_build_relay.py)
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 180

.PHONY: setup demo test lab bench clean system-packages fuzz

setup: $(STAMP)

system-packages:
	@sh scripts/install-system-packages.sh

# one line per step; the whole output in build/setup.log (its tail is shown on failure)
$(STAMP): $(SOURCES)
	@sh scripts/setup.sh $(VENV) $(STAMP)

demo: setup
	STDPKT=$(abspath $(VENV)/bin/stdpkt) bash examples/paper/run-chain.sh

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lab: setup
	@sh deploy/jupyterlab/install-settings.sh $(VENV)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --LabApp.default_url=/lab/tree/01-quickstart.ipynb \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# coverage-guided fuzzing of the relay's C parsers, FUZZ_SECONDS per harness (fuzz/run.py)
fuzz: setup
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS) --json bench/results/fuzz.json

clean:
	rm -rf $(VENV) build *.egg-info stdpkt_lab/relay/_relay*.so lkl/build fuzz/build
	find stdpkt_lab/_bin -type f ! -name __init__.py -delete 2>/dev/null || true
