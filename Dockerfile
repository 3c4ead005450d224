# syntax=docker/dockerfile:1
# orderflow image: the `orderflow` command (api, node, init) on Python 3.11, no dev tools.
#   docker build -t orderflow .
#   docker run --rm orderflow --help
# compose.yaml builds and runs it; see docs/deploy.md.

# --- build: install into a virtualenv that the runtime stage copies whole ----------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml: this layer is rebuilt only when they change,
# not on every code edit. (All of them ship manylinux wheels, so no compiler is needed.)
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the two packages; --no-deps because they are all in place already.
COPY api ./api
COPY nodeapp ./nodeapp
RUN pip install --no-deps . \
 && orderflow --version

# --- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORDERFLOW_LOG_FORMAT=json
# Same base image as the build stage, so the venv's interpreter links stay valid.
COPY --from=build /opt/venv /opt/venv
# An unprivileged user: nothing here needs root, and nothing writes outside /home/orderflow.
RUN useradd --create-home --uid 10001 --user-group orderflow
USER orderflow
WORKDIR /home/orderflow

# 8000: `orderflow api` (set ORDERFLOW_API_HOST=0.0.0.0 to reach it from outside the container).
EXPOSE 8000
# SIGTERM: the api finishes in-flight requests, a node drains (finishes its current steps and
# hands the rest back), so give `docker stop` enough time (compose.yaml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["orderflow"]
CMD ["--help"]
