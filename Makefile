# Every target creates the environment it needs, so a fresh clone needs only `make train` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: venv data train test test-fast app bench bench-scaling rpeaks clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

data: $(STAMP)
	$(PY) -m ecg_rnn data

train: $(STAMP)
	$(PY) -m ecg_rnn train

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

app: $(STAMP)
	$(PY) -m streamlit run app.py --server.address localhost --server.port $(PORT)

bench: $(STAMP) bench-scaling
	$(PY) -m benchmarks.run --out benchmarks/results.md
	$(PY) -m benchmarks.timings

bench-scaling: $(STAMP)
	$(PY) -m benchmarks.dask_scaling --out benchmarks/scaling.md

rpeaks: $(STAMP)
	$(PY) -m benchmarks.rpeaks --out benchmarks/rpeaks.md

clean:
	rm -rf cache .pytest_cache
