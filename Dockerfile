# The CoTrain image: the API server (`cotrain up`), workers (`cotrain worker`) and volunteer peers
# (`cotrain join`), one image. See README, "Deploying with containers".
#
#   docker build -t cotrain .                                       # CPU torch (TORCH_SPEC's default)
#   docker build -t cotrain:gpu --build-arg TORCH_INDEX_URL= .      # PyPI's Linux torch: CUDA included
#   docker build -t cotrain:gpu --build-arg TORCH_SPEC=torch==2.13.0 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # one CUDA version
#
# Behind a corporate proxy: --build-arg PIP_INDEX_URL=... (PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST, PIP_FIND_LINKS) and
# --build-arg CA_BUNDLE=path/in/context/ca.pem; HTTP_PROXY/HTTPS_PROXY/NO_PROXY are Docker's own
# build arguments. The CA bundle serves the build stages only, never the final image.
# podman: `podman build --format docker ...` keeps the HEALTHCHECK (the OCI format has none).

ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# Layers, so that a commit rebuilds in seconds: the requirements pyproject.toml lists are installed
# (torch and the rest: minutes) from a file of their own before any source is copied; a change in src/
# then rebuilds only CoTrain's wheel and the final image's last layer.

# ---- requirements: [build-system].requires and [project].dependencies of pyproject.toml, as a file ----
FROM ${BASE_IMAGE} AS requirements
COPY deploy/docker/project-requirements.py pyproject.toml /tmp/build/
RUN python3 /tmp/build/project-requirements.py /tmp/build/pyproject.toml > /tmp/requirements.txt

# ---- dependencies: /opt/venv with torch and every requirement (reused until the requirements change) ----
FROM ${BASE_IMAGE} AS dependencies
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_FIND_LINKS=
ARG CA_BUNDLE=deploy/docker/no-ca.pem
COPY ${CA_BUNDLE} /tmp/build/ca.pem
COPY deploy/docker/build-venv.sh deploy/docker/install-runtime-packages.sh /tmp/build/
COPY --from=requirements /tmp/requirements.txt /tmp/build/requirements.txt
RUN sh /tmp/build/build-venv.sh dependencies /opt/venv /tmp/build/requirements.txt

# ---- wheel: CoTrain itself, built from src/ with the venv's setuptools (README.md: the package's description) ----
FROM dependencies AS wheel
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN sh /tmp/build/build-venv.sh wheel /opt/venv /src /wheels

# ---- the image: the venv, a non-root user, COTRAIN_HOME as a volume ----
FROM ${BASE_IMAGE} AS runtime
ARG RUNTIME_APT_PACKAGES=postgresql-client
ARG APP_UID=10001
RUN --mount=type=bind,from=dependencies,source=/tmp/build,target=/tmp/build \
    sh /tmp/build/install-runtime-packages.sh
RUN groupadd --system --gid "${APP_UID}" cotrain \
    && useradd --system --uid "${APP_UID}" --gid cotrain --home-dir /home/cotrain --create-home \
        --shell /usr/sbin/nologin cotrain \
    && mkdir -p /data /backups \
    && chown cotrain:cotrain /data /backups
COPY --from=dependencies /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/cotrain/healthcheck.py
COPY deploy/docker/env-from-secrets.sh /usr/local/bin/cotrain-env-from-secrets
# CoTrain without its dependencies (they are above): the only layer a change in src/ rebuilds
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/venv/bin/python -m pip install --quiet --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/cotrain --help > /dev/null
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    COTRAIN_HOME=/data \
    COTRAIN_LOG_FORMAT=json \
    COTRAIN_DHT_HOST_MADDRS=/ip4/0.0.0.0/tcp/31337 \
    HF_HOME=/data/cache/huggingface
USER cotrain:cotrain
WORKDIR /home/cotrain
VOLUME ["/data"]
# the API and web UI; the DHT node volunteers join
EXPOSE 8000 31337
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/cotrain/healthcheck.py"]
ENTRYPOINT ["cotrain"]
CMD ["up", "--host", "0.0.0.0"]
