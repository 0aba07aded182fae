# The two commands of README.md. Both build .venv from the hash-pinned lock file first, so a
# fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lock bench lint

run: $(STAMP)
	@$(VENV)/bin/intake-gateway serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# Style, the dependency rules of DESIGN.md (import-linter contracts in pyproject.toml) and types.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python bench/run_all.py $(ARGS)

$(STAMP): requirements.lock pyproject.toml scripts/make_venv.py
	@# Checks the Python (3.11+, able to make a venv), repairs a half-made .venv, installs the
	@# lock with progress; each problem ends in one line saying what to install or run.
	@$(PYTHON) scripts/make_venv.py --python $(PYTHON) --venv $(VENV) --lock requirements.lock
	@# mypy reads adapters/ and schemas/ by their import names (pyproject.toml, [tool.mypy]).
	@mkdir -p $(VENV)/import-names
	@ln -sfn ../../adapters $(VENV)/import-names/intake_adapters
	@ln -sfn ../../schemas $(VENV)/import-names/intake_schemas
	@touch $(STAMP)

# Re-pin after changing dependencies in pyproject.toml (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --extra test --extra brokers --generate-hashes --python-version 3.11 \
		--output-file requirements.lock --quiet
