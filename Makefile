# stdpkt-lab: every target does the set-up it needs, idempotently.
#   make demo   a real chain (client | NAT | firewall | server) with traffic
#   make test   the test suite (real kernels, real traffic)
#   make lab    JupyterLab with the notebooks
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stdpkt-installed
SOURCES := pyproject.toml setup.py $(wildcard lkl/*.c lkl/init.sh lkl/boot-profile lkl/guest-bin/* stdpkt_lab/relay/*.c stdpkt_lab/relay/*.h stdpkt_lab/relay/_build_relay.py)
PYTEST_ARGS ?=

.PHONY: setup demo test lab bench clean system-packages

setup: $(STAMP)

system-packages:
	@sh scripts/install-system-packages.sh

$(VENV)/bin/python:
	@sh scripts/install-system-packages.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python $(SOURCES)
	@sh scripts/install-system-packages.sh
	$(PY) -m pip install -q -e ".[lab,test]"
	@touch $(STAMP)

demo: setup
	STDPKT=$(abspath $(VENV)/bin/stdpkt) bash examples/paper/run-chain.sh

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lab: setup
	@sh deploy/jupyterlab/install-settings.sh $(VENV)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --LabApp.default_url=/lab/tree/01-quickstart.ipynb \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf $(VENV) build *.egg-info stdpkt_lab/_bin stdpkt_lab/relay/_relay*.so lkl/build
