# Set-up is part of every target: the first run creates .venv and installs; later runs only check it.
PY ?= python3
VENV ?= .venv
# The tested stack's exact versions (deploy/constraints.txt): the venv and the cluster image install with them.
PINS := deploy/constraints.txt
# The test tools' versions (deploy/constraints-dev.txt), for the venv only.
DEV_PINS := deploy/constraints-dev.txt
TORCH_SPEC ?= torch torchvision
OUT ?= out
STAMP := $(VENV)/.installed
# The cluster image, tagged from the package version and the pinned Ray and Python (cluster.yaml and deploy/kuberay/
# name it); IMAGE=<registry>/vprlib for a registry the nodes pull from.
IMAGE ?= vprlib
RAY_VERSION := $(shell sed -n 's/^ray==//p' $(PINS))
PYTHON_TAG := $(shell sed -n 's/^\# python \([0-9]*\)\.\([0-9]*\)$$/py\1\2/p' $(PINS))
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)-ray$(RAY_VERSION)-$(PYTHON_TAG)

.PHONY: demo demo-models table study test test-all image image-tag push clean

$(STAMP): pyproject.toml $(PINS) $(DEV_PINS)
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c $(PINS) $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install -q -c $(PINS) -c $(DEV_PINS) -e '.[dev,video]'
	touch $(STAMP)

# The method end to end with the shipped demo models: city, maps (inpaint and synthetic), indexes, Recall@1/5/10,
# located photos. Every step resumes, so a second run only evaluates again.
demo: $(STAMP)
	$(VENV)/bin/python jobs/demo.py --output $(OUT)

# Retrain the demo preset (extractors, refiners, retrievers) into vprlib/models/demo/: about an hour on 2 cores
# (jobs/demo_models.py, the recipe vprlib.demo.models).
demo-models: $(STAMP)
	$(VENV)/bin/python jobs/demo_models.py --work $(OUT)/demo-models

# The paper's Table 1 in kind: the refiners and 11 retrievers retrained on the demo city, Recall@1/5/10 printed
# (jobs/table.py, resumable). `make study`: the shipped demo CosPlace on refined maps against the same recipe trained
# on the photos, by look and crowd (jobs/table.py --parts study).
table: $(STAMP)
	$(VENV)/bin/python jobs/table.py --output $(OUT)

study: $(STAMP)
	$(VENV)/bin/python jobs/table.py --output $(OUT) --parts study

# `make test` (CI) leaves out the tests marked long: a Ctrl-C'd and resumed sweep, training and extraction killed
# and resumed, the compiled extraction, DDP on two workers, make table's job on one row (116 s) and its study
# (225 s), and the jobs on a cluster of several nodes losing a node or the head (tests/test_multinode.py, about 20
# minutes): about 37 minutes together on 2 cores. `make test-all` runs every test.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -m "not long"

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# The cluster image in its two variants (deploy/Dockerfile): CPU (head, CPU workers) and GPU (GPU workers).
image:
	docker build -f deploy/Dockerfile --build-arg BASE=rayproject/ray:$(RAY_VERSION)-$(PYTHON_TAG) \
		--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t $(IMAGE):$(IMAGE_TAG)-cpu .
	docker build -f deploy/Dockerfile --build-arg BASE=rayproject/ray:$(RAY_VERSION)-$(PYTHON_TAG)-gpu \
		-t $(IMAGE):$(IMAGE_TAG)-gpu .

push: image
	docker push $(IMAGE):$(IMAGE_TAG)-cpu
	docker push $(IMAGE):$(IMAGE_TAG)-gpu

image-tag:
	@echo $(IMAGE_TAG)

clean:
	rm -rf $(OUT)
