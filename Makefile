# Set-up is part of every target: the first run creates .venv and installs; later runs only check it.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out
STAMP := $(VENV)/.installed

.PHONY: demo demo-models test clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The method end to end with the shipped demo models: city, maps (inpaint and synthetic), indexes, Recall@1/5/10,
# located photos. Every step resumes, so a second run only evaluates again.
demo: $(STAMP)
	$(VENV)/bin/python jobs/demo.py --output $(OUT)

# Retrain the demo preset (extractors, refiners, retrievers) into vprlib/models/demo/: about an hour on 2 cores.
demo-models: $(STAMP)
	PY=$(VENV)/bin/python WORK=$(OUT)/demo-models bash jobs/demo_models.sh

# Two pytest workers, a test file each at a time (its module fixtures, such as a city or a Ray session, stay shared):
# the Ray jobs under test wait on process start-up and scheduling as much as they compute.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(OUT)
