# make test : virtual env + requirements, ruff, the whole pytest suite
# make book : virtual env + requirements, the HTML book in _build/html (every chapter executed)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)

.PHONY: venv test lint book clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# vit-pytorch's own requirements pull torchvision, which cannot import here: its vit.py is all we need
	$(PY) -m pip install --quiet --no-deps vit-pytorch==1.26.11
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv lint
	$(PY) -m pytest -q -n 2

book: venv
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going

clean:
	rm -rf _build
