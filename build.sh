#!/usr/bin/env bash
# Build the Grand Challenge container image (needs a Docker engine).
#   ./build.sh [docker build options...]   e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Where the base image cannot be pulled, use test/container/build-offline.sh instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
docker build --tag "$image" "$@" "$here"
