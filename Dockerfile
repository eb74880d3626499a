# One image for the api and the worker; the worker adds the `worker` extra (torch).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY backend backend
COPY contracts contracts
COPY workers workers
COPY frontend frontend
COPY migrations migrations
COPY scripts scripts
ARG EXTRAS=server
RUN pip install -e ".[${EXTRAS}]"
EXPOSE 8000
CMD ["microscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
