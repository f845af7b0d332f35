# syntax=docker/dockerfile:1
# Microscope AutoML appliance: one GPU container (docs/deploy.md says how to run it).
#
# CUDA: requirements.lock pins torch 2.15.0+cu132 and onnxruntime-gpu 1.31.1, both CUDA 13 builds, together with
# the NVIDIA runtime wheels they load (nvidia-cuda-runtime 13.2, nvidia-cublas 13, nvidia-cudnn-cu13 9, cufft, ...).
# Those wheels are the CUDA + cuDNN runtime of this image - the same files CI installs and tests - so the base is
# plain Debian Python (no second, possibly different CUDA copy from an nvidia/cuda base). The host provides only
# the driver (libcuda.so.1, R580 or newer for CUDA 13), mounted in by the NVIDIA Container Toolkit.
# The shared libraries the locked wheels need outside themselves (glibc, libstdc++, zlib, sqlite, ssl) are all
# in the slim base; nothing is downloaded at run time.

# ---- build: the virtual environment, exactly as CI makes it (Makefile, target .venv/.installed) ----------------
FROM python:3.11-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /opt/appliance
# Layers ordered for caching: the big pinned dependencies change least often.
COPY requirements.lock ./
# uv, at the version the lock pins, installs the lock as CI does
RUN /opt/venv/bin/pip install --no-cache-dir "$(grep '^uv==' requirements.lock)" \
    && /opt/venv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python -r requirements.lock
# pyradiomics has no wheel: it builds (gcc from this full image) against the numpy, setuptools and versioneer above
COPY requirements-source.lock ./
RUN /opt/venv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-build-isolation --no-deps \
       -r requirements-source.lock \
    && /opt/venv/bin/pip check

# ---- runtime -------------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="microscope-automl-appliance" \
      org.opencontainers.image.description="Microscope AutoML appliance: labelled image sets in, U-Net models and segmentations out"
ARG APPLIANCE_UID=10001
ARG APPLIANCE_GID=10001
RUN groupadd --gid "${APPLIANCE_GID}" appliance \
    && useradd --uid "${APPLIANCE_UID}" --gid appliance --home-dir /home/appliance --create-home \
       --shell /usr/sbin/nologin appliance \
    && mkdir -p /data /inbox/labelled /inbox/images /results \
    && chown appliance:appliance /data /inbox /inbox/labelled /inbox/images /results
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/appliance
# The source last (it changes most). An editable install, as in CI: the service finds the shipped meta-model
# (models/) and the status page (streamlit_app/) beside the package, so they must stay in this tree.
COPY . ./
RUN /opt/venv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-deps -e . \
    && /opt/venv/bin/appliance --version

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    APPLIANCE_DATA_DIR=/data \
    APPLIANCE_INBOX_DIR=/inbox \
    APPLIANCE_RESULTS_DIR=/results \
    APPLIANCE_PAGE_ADDRESS=0.0.0.0 \
    APPLIANCE_PAGE_PORT=8501

USER ${APPLIANCE_UID}:${APPLIANCE_GID}
VOLUME ["/data", "/inbox", "/results"]
EXPOSE 8501
# `appliance health` exits 1 when the service or one of its components is down. It imports the ML stack, so it
# gets a generous timeout; start-up (imports, store recovery) gets a start period.
HEALTHCHECK --interval=60s --timeout=60s --start-period=180s --retries=3 CMD ["appliance", "health"]
ENTRYPOINT ["appliance"]
CMD ["run"]
