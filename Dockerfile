# petseg Grand Challenge algorithm container (autoPET III Task 1 interface).
# torch==2.13.0 from PyPI on linux/x86_64 is the CUDA build (it carries its CUDA libraries).
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=8

RUN groupadd --system --gid 1001 user && useradd --system --uid 1001 --gid user --create-home --home-dir /home/user user \
    && mkdir -p /opt/app /input /output && chown user:user /opt/app /output

WORKDIR /opt/app

COPY --chown=user:user requirements.txt /opt/app/
RUN python -m pip install --no-cache-dir -r /opt/app/requirements.txt

COPY --chown=user:user pyproject.toml README.md /opt/app/
COPY --chown=user:user petseg /opt/app/petseg
RUN python -m pip install --no-cache-dir --no-deps /opt/app

COPY --chown=user:user weights /opt/app/weights
COPY --chown=user:user process.py /opt/app/

USER 1001:1001

ENTRYPOINT ["python", "/opt/app/process.py"]
