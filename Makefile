# Two user-facing targets: `make demo` and `make test`. Both bootstrap .venv first.
# The bootstrap re-runs only when pyproject.toml or constraints.txt change (stamp file),
# so a second `make test` installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bootstrap-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test bootstrap clean-venv

# After the run: export its last stage as a llava-hf model and check that transformers' own
# AutoProcessor + LlavaForConditionalGeneration give our chat's prompt and greedy answer (exit 1 if
# not). Image 003000 is held out (never trained on) at the demo's 3,000 images: a red diamond.
demo: $(STAMP)
	$(BIN)/vcla build-and-train
	$(BIN)/vcla export --format llava-hf
	$(BIN)/python -m training.export check runs/demo/train/stage2 runs/demo/export/stage2-llava-hf \
		--image runs/demo/demo-data/images/003000.jpg --text "$$(printf '菱形是什么颜色？\n请用一个词或短语回答。')"

# The browser test drives the system Chromium: installed here when missing and we can (root, apt).
test: $(STAMP)
	@sh .ci/ensure-chromium.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bootstrap: $(STAMP)

# torch first: it is the CPU build on disk; anything else would pull a multi-GB CUDA build.
# img2dataset drags in the `dataclasses` backport, which shadows the standard library in
# Prefect's server process: remove it last.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PIP) uninstall -y dataclasses 2>/dev/null || true
	$(BIN)/python -c "import dataclasses, sys; assert 'site-packages' not in dataclasses.__file__, dataclasses.__file__"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
