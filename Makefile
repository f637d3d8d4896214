# Quick start: `make demo` runs the main job on the built-in synthetic default; `make test` runs the suite.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1

.PHONY: install demo test
install: .installed
.installed: pyproject.toml
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch .installed

demo: .installed
	$(PYTHON) scripts/train.py

test: .installed
	$(PYTHON) -m pytest -q
