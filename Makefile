# The two commands of README.md. Both install what is missing into .venv
# first (idempotent; TORCH_SPEC overrides the torch wheel, e.g. for CUDA).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/setup_env.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest tests -q
