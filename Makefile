# The two commands of the README: `make book` and `make test`. Each sets up .venv by itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On the project's build machines torch 2.13.0 is a local CPU wheel; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.adpf-installed

.PHONY: venv test book clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[book,dlib,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto

clean:
	rm -rf _build .adpf-cache
