# Set-up is part of every target: the first run creates .venv and installs; later runs only check it.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The city is regenerated (and its maps dropped) only when its generator changed; the extraction resumes, so a
# second run writes nothing new.
$(OUT)/city/manifest.parquet: $(STAMP) vprlib/data/synthcity.py jobs/synthcity.py
	rm -rf $(OUT)/maps
	$(VENV)/bin/python jobs/synthcity.py --output $(OUT)/city

demo: $(OUT)/city/manifest.parquet
	$(VENV)/bin/python jobs/extract.py --input $(OUT)/city --output $(OUT)/maps --strategy inpaint --models tiny --side 128

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(OUT)
