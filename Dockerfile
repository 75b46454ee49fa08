# petseg Grand Challenge algorithm container (autoPET III Task 1 interface; autoPET IV with
# --build-arg MODEL_DIR=weights-clicks --build-arg INTERFACE=autopet4).
FROM python:3.11.10-slim-bookworm

# Which build of torch==2.13.0 (see README, "Grand Challenge container" for the NVIDIA driver each needs):
#   ""                                       PyPI's linux x86_64 wheel = CUDA 13.0 (driver >= 580)
#   https://download.pytorch.org/whl/cuXYZ   a CUDA 12.x build (driver >= 525), if PyTorch publishes one for 2.13.0
#   https://download.pytorch.org/whl/cpu     CPU only (smallest image)
ARG TORCH_INDEX_URL=""
# Optional pip index settings for the build only (a mirror, a wheel folder); they do not
# reach the image's environment. test/container/build-offline.sh passes the host's.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PETSEG_MODEL_DIR=/opt/app/weights \
    MPLCONFIGDIR=/tmp/matplotlib

# Runtime user uid 1001; it may write /output, /cache (autoPET V: kept between the steps of a case)
# and /tmp only: code and weights belong to root.
RUN groupadd --system --gid 1001 user \
    && useradd --system --uid 1001 --gid user --create-home --home-dir /home/user user \
    && mkdir -p /opt/app /input /output /cache \
    && chown user:user /output /cache

WORKDIR /opt/app

# Pinned runtime dependencies, torch first (the big layer; cached while requirements.txt is unchanged).
COPY requirements.txt /opt/app/
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS \
        python -m pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' requirements.txt)"; \
    fi \
    && python -m pip install --no-cache-dir -r requirements.txt \
    && rm -rf /root/.cache /tmp/*

# petseg itself, with its dependencies checked (all pinned above), from a copy that is removed again.
COPY pyproject.toml README.md /tmp/petseg-src/
COPY petseg /tmp/petseg-src/petseg
RUN python -m pip install --no-cache-dir /tmp/petseg-src \
    && python -m pip check \
    && rm -rf /tmp/petseg-src /root/.cache /tmp/*

# The model folder to ship (weights-clicks for the click-aware autoPET IV model) and the
# Grand Challenge interface process.py serves (autopet3 | autopet4 | autopet5). Declared here, after the
# installs: a changed build argument invalidates every RUN after its ARG line, and the two
# images should share the dependency layers.
ARG MODEL_DIR=weights
ARG INTERFACE=autopet3
ENV PETSEG_GC_INTERFACE=${INTERFACE}
COPY ${MODEL_DIR} /opt/app/weights
COPY process.py /opt/app/

USER 1001:1001

ENTRYPOINT ["python", "/opt/app/process.py"]
