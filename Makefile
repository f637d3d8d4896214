# Quick start: `make demo` runs the main job on the built-in synthetic default; `make test` runs the suite.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1

.PHONY: install demo test
install: .installed
.installed: pyproject.toml
	$(PYTHON) -m pip install -q -e ".[dev,space]"
	@# Debian's chromium for the Space's browser test (tests/test_space.py skips without it); best effort
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
		echo "note: could not install chromium; the Space's browser test will be skipped"
	touch .installed

demo: .installed
	$(PYTHON) scripts/train.py

test: .installed
	$(PYTHON) -m pytest -q
