# The two commands of the README: `make book` and `make test`. Each sets up .venv by itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On the project's build machines torch 2.13.0 is a local CPU wheel; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.adpf-installed

.PHONY: venv test book book-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[book,dlib,test,export]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check adpf tests benchmarks data_scripts book/build.py book/screenshots.py
	$(PY) -m pytest -q -n auto --ignore=tests/book

# Train the models the chapters share (once, in the cache), execute every chapter (papermill, two at a
# time) and build the HTML (warnings are errors): _build/book-src/_build/html. Prints the wall time of
# every step and writes it to _build/book-times.json. Chapter 10 reads recorded runs from
# benchmarks/results/ (the `adpf experiments ... --record` commands it names).
# BOOK_ARGS passes options to book/build.py, e.g. `make book BOOK_ARGS="--only 02 --workers 1"`.
book: $(STAMP)
	$(PY) book/build.py $(BOOK_ARGS)

# Checks over the executed chapters (needs `make book` first).
book-check: $(STAMP)
	$(PY) -m pytest -q tests/book

clean:
	rm -rf _build .adpf-cache
