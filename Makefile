# The two commands a fresh machine needs (see README):
#   make repro   set up .venv, make sure the data is there, run the whole DVC pipeline
#   make test    set up .venv, make sure the data is there, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get the CPU wheel of torch pinned *before* anything else, so that resolving the
# other dependencies never pulls a multi-GB CUDA build. Where nvidia-smi exists, torch comes from
# the normal index (a CUDA build) and the gpu extra adds faiss-gpu.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.3$(comma)<2.15,torch==2.13.0)
EXTRAS ?= $(if $(HAS_GPU),dev$(comma)inception$(comma)gpu,dev$(comma)inception)
comma := ,
STAMP := $(VENV)/.installed
# The offline page template of `dvc plots show` (.dvc/config: plots.html_template), generated
# from vl-convert-python's bundled vega / vega-lite / vega-embed; git-ignored.
PLOTS_TEMPLATE := .dvc/offline_plots.html

.PHONY: repro test setup data browser lint bench plots push pull clean-venv study-adapters study-long report

repro: setup data
	source $(BIN)/activate && python -m pipeline.config check && dvc repro

# One pytest-xdist worker per core, whole test files to a worker (module fixtures run once), in
# collection order: the end-to-end files first (tests/conftest.py).
test: setup data browser
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

setup: $(STAMP) $(PLOTS_TEMPLATE)

# Re-installs only when pyproject.toml changes: running `make` twice is cheap.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

$(PLOTS_TEMPLATE): scripts/plots_template.py $(STAMP)
	$(BIN)/python scripts/plots_template.py

data: setup
	$(BIN)/python scripts/ensure_data.py

# The offline-plots test opens the page in a real browser, Debian's chromium: installed the way the
# dataset is (as root with apt); elsewhere that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || $(BIN)/python scripts/ensure_data.py --apt chromium \
		|| echo "note: no chromium, so the browser test of the offline plots will be skipped"

lint: setup
	$(BIN)/ruff check .

# dvc_plots/index.html, drawn with no network access (scripts/screenshot_plots.sh pictures it).
plots: setup
	$(BIN)/dvc plots show

# Share data, models and metrics through the default DVC remote (README "Sharing results"), after
# checking that it is configured and reachable; more dvc flags: make push ARGS="-j 4".
push pull: setup
	$(BIN)/python scripts/dvc_remote.py $@ $(ARGS)

# The study's later series (docs/study.md); each is resumable: re-running skips what is recorded.
# Both adapters at 7 x 7 tokens on the same ten fine-tune seeds (reports/study/adapters/).
study-adapters: setup data
	$(BIN)/python scripts/run_experiments.py --results reports/study/adapters --adapters pipeline official \
		--finetune-seeds 0 1 2 3 4 5 6 7 8 9 --second-base --ablation --negative $(ARGS)

# The official adapter at 14 x 14 tokens (reports/study/long/). Its plan (docs/study.md, "Part
# two"): ten fine-tune seeds on base model 0, then five on a second base model (seed 1).
LONG_SEEDS ?= 0 1 2 3 4 5 6 7 8 9
LONG_SECOND_BASE ?= 0 1 2 3 4
study-long: setup data
	$(BIN)/python scripts/run_experiments.py --preset configs/study_196.yaml --results reports/study/long \
		--adapters official --finetune-seeds $(LONG_SEEDS) --second-base $(LONG_SECOND_BASE) \
		--ablation --negative $(ARGS)

report: setup
	$(BIN)/python scripts/make_report.py

# As modules: run as a script, benchmarks/tokenize.py would shadow the standard library's tokenize.
bench: setup
	for script in benchmarks/*.py; do $(BIN)/python -m benchmarks.$$(basename $$script .py) || exit 1; done

clean-venv:
	rm -rf $(VENV)
