# Set-up is part of every target: the first run creates .venv and installs; later runs only check it.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out
STAMP := $(VENV)/.installed

.PHONY: demo demo-models table study test test-all clean

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

# The paper's Table 1 in kind: the refiners and 11 retrievers retrained on the demo city, Recall@1/5/10 printed
# (jobs/table.py, resumable). `make study`: the shipped demo CosPlace on refined maps against the same recipe trained
# on the photos, by look and crowd (jobs/table.py --parts study).
table: $(STAMP)
	$(VENV)/bin/python jobs/table.py --output $(OUT)

study: $(STAMP)
	$(VENV)/bin/python jobs/table.py --output $(OUT) --parts study

# `make test` (CI) leaves out the tests marked long: a Ctrl-C'd and resumed sweep, training and extraction killed
# and resumed, the compiled extraction, DDP on two workers, make table's job on one row (116 s) and its study
# (225 s): about 17 minutes together on 2 cores. `make test-all` runs every test.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -m "not long"

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(OUT)
