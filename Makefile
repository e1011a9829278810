# Quick start: `make demo` runs a simulated call, `make test` runs the tests.
# Both bootstrap .venv/ from the hashed lock file; a second run installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint lock bench bench-conversation bench-peers livekit-check clean

$(STAMP): requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

# `run` logs warnings only (a result command), so the transcript and latency table stand out.
demo: $(STAMP)
	$(BIN)/voicerun run --workflow workflows/examples/front-desk.yaml \
		--input workflows/examples/audio/front-desk-caller.wav \
		--output out/front-desk-call.wav --report out/front-desk-report.json

# The tests run in asyncio debug mode (pyproject.toml: asyncio_debug).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Re-resolve the locks after editing pyproject.toml's dependencies: requirements.lock is what a
# deployment installs (the Dockerfile), requirements-dev.lock adds the test and lint tools.
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet
lock: $(STAMP)
	$(LOCK) -o requirements.lock
	$(LOCK) --extra dev -o requirements-dev.lock

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/embedded_call.py
	$(BIN)/python bench/embedded_latency.py
	$(BIN)/python bench/end_of_turn.py

# Turn-taking on 48 synthetic calls (docs/benchmarks.md); its second caller voice is espeak-ng.
bench-conversation: $(STAMP)
	@command -v espeak-ng >/dev/null || { echo "bench-conversation needs espeak-ng: apt-get install espeak-ng" >&2; exit 2; }
	$(BIN)/python -m bench.conversation $(BENCH_ARGS)

# bench/overhead.py's workload on voicerun, LiveKit Agents and Pipecat, each peer in its own pinned
# venv under out/bench-peers/venvs (built once per pins); the table and results.json (bench/peers/README.md).
bench-peers: $(STAMP)
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

# One real call end to end through LiveKit (docs/deploy.md): needs `livekit-server --dev` running
# and a worker started with LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey
# LIVEKIT_API_SECRET=secret voicerun worker. CHECK_ARGS: --workflow, --input, --timeout, --url...
livekit-check: $(STAMP)
	$(BIN)/python -m agent._livekit_check $(CHECK_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
