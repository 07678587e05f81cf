# make test     : lint, unit tests, the book (cached execution), then the browser tests of the built book;
#                 installs what it needs first, system packages included (Debian's chromium for the browser tests,
#                 dataset-fashion-mnist for the unit tests on the real files and the Fashion-MNIST chapter)
# make book     : the HTML book in _build/html, every chapter executed (jupyter-cache: unchanged chapters are reused)
# make booktest : only the browser tests (headless chromium) against an existing _build/html
# make workbook : student notebooks in _build/workbook/ (each exercise's solution replaced by a stub), book/student.py
# make lab      : JupyterLab on the workbook, _build/workbook/ (it builds the workbook first)
# make data     : Fashion-MNIST (Debian's dataset-fashion-mnist, apt-get as root; otherwise the command to run)
# make clean    : remove _build (the next `make book` re-executes every chapter)
#
# Chapter execution is cached (_config.yml: execute_notebooks: cache, in _build/.jupyter_cache): a chapter re-runs
# when its code cells change, and every chapter re-runs when vitlib, vit_oracles or requirements.txt change (EXEC_KEY), so
# `make test` right after `make book` rebuilds in seconds. A fresh clone (CI) executes everything once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)
LAB_STAMP := $(VENV)/.lab-installed-$(shell cat requirements-lab.txt | md5sum | cut -c1-8)
# MathJax 3 and the ipywidgets embed bundle, from npm (package-lock.json), copied to $(STATIC) (not committed):
# _config.yml lists it in html_static_path, so the book serves them itself from _build/html/_static/vendor/
STATIC := _build/book_vendor
STATIC_STAMP := $(STATIC)/.installed-$(shell cat package-lock.json | md5sum | cut -c1-8)
# Warnings are errors (-W), nitpicky references (-n); --keep-going reports every warning before failing.
# --all rewrites every page; execution is still cached (_config.yml: execute_notebooks: cache).
JB_FLAGS := --all -W -n --keep-going
BOOK_JOBS ?= 2
# jupyter-cache keys a chapter on its own code cells only. The chapters' outputs also depend on vitlib (its grader
# included), on the torch oracles, on the pinned packages and on the committed results chapter 15 reads
# (benchmarks/results/), so a change to any of them empties the cache (every
# chapter re-executes); otherwise a rebuild reuses it.
EXEC_KEY := _build/.executed-with-$(shell cat requirements.txt vitlib/*.py vitlib/grade/*.py vit_oracles/*.py \
	benchmarks/results/*/* 2>/dev/null | md5sum | cut -c1-8)

.PHONY: venv chromium node data test unit lint book book-static booktest workbook lab clean

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

# System packages, installed by the targets that need them: as root with apt-get (Debian's packages, offline from the
# registry); as another user the build stops with the exact command to run.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package(s) $(1) (apt-get)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1); \
	else \
		echo "error: $(2) is not installed and this is not root; run:  sudo apt-get install -y $(1)" >&2; exit 1; \
	fi

# headless Chromium for the browser tests (tests/test_book.py); Playwright's own browser download is never used
chromium:
	@command -v chromium >/dev/null || { $(call APT_INSTALL,chromium,chromium); }
	@command -v chromium >/dev/null

# node and npm for `npm ci` (MathJax and the widget bundle of the book)
node:
	@{ command -v node && command -v npm; } >/dev/null || { $(call APT_INSTALL,nodejs npm,node/npm); }
	@{ command -v node && command -v npm; } >/dev/null

# Fashion-MNIST for `python -m vitlib train --dataset fashion-mnist` and the book's chapter 15: Debian's dataset-fashion-mnist,
# the four official idx .gz files in /usr/share/datasets/fashion-mnist (30 MB, from the Debian registry)
data:
	@test -d /usr/share/datasets/fashion-mnist || { $(call APT_INSTALL,dataset-fashion-mnist,Fashion-MNIST); }
	@ls /usr/share/datasets/fashion-mnist/*-ubyte.gz

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: venv
	$(PY) -m pytest -q -n 2 -m "not book"

# lint, unit tests, book, browser tests: in this order, stopping at the first failure
test: venv chromium node data
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) book
	$(MAKE) booktest

book-static: node $(STATIC_STAMP)

$(STATIC_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	rm -rf $(STATIC)
	mkdir -p $(STATIC)/vendor
	cp -r node_modules/mathjax/es5 $(STATIC)/vendor/mathjax
	cp -r node_modules/@jupyter-widgets/html-manager/dist $(STATIC)/vendor/html-manager
	touch $@

book: venv book-static data
	@test -e $(EXEC_KEY) || { echo "vitlib or requirements.txt changed (or first build): every chapter re-executes"; \
		rm -rf _build/.jupyter_cache _build/.executed-with-*; mkdir -p _build; touch $(EXEC_KEY); }
	# chapters not in the cache are executed two at a time first (jupyter-book alone runs them one by one)
	$(PY) book/prerun.py --jobs $(BOOK_JOBS)
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

# BOOK_TESTS=1: a missing _build/html or chromium is a failure, not a skip
booktest: venv chromium
	BOOK_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider -m book tests/test_book.py tests/test_workbook.py

$(LAB_STAMP): requirements-lab.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-lab.txt
	# .md chapters open as notebooks on double-click; the setting lives in the venv, not in $$HOME
	JUPYTER_CONFIG_DIR=$(abspath $(VENV))/etc/jupyter $(VENV)/bin/jupytext-config set-default-viewer markdown
	rm -f $(VENV)/.lab-installed-*
	touch $@

# one source, two outputs: the book folds each exercise's solution, the workbook replaces it by a stub
workbook: venv
	$(PY) book/student.py --out _build/workbook

# root (containers, CI machines) needs --allow-root
lab: $(LAB_STAMP) workbook
	cd _build/workbook && $(abspath $(VENV))/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build
