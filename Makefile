# One command each for the main job and the tests; both set up .venv themselves on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo-output
COMPARE_DIR ?= compare-output
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo compare test test-slow lint clean

install: $(VENV)/.installed

# torch goes in first, pinned: an unpinned resolver would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/sfd demo --output-dir $(DEMO_DIR)

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

clean:
	rm -rf $(VENV) runs $(DEMO_DIR) $(COMPARE_DIR) *.egg-info
