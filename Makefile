# The two commands of README.md (demo, test). Both install what is missing
# into .venv first (idempotent; TORCH_SPEC overrides the torch wheel).
PY := .venv/bin/python

.PHONY: setup demo demo-parcnet demo-seg test test-unit
setup:
	bash scripts/setup_env.sh

demo: setup
	bash scripts/demo.sh falcon-det

demo-parcnet: setup
	bash scripts/demo.sh parcnet-det

demo-seg: setup
	bash scripts/demo.sh falcon-seg

test: setup
	$(PY) -m pytest tests -q

# the unit lane: everything but training, distributed runs, exports, benchmarks
test-unit: setup
	$(PY) -m pytest tests -q -m "not slow"
