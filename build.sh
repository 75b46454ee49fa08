#!/usr/bin/env bash
# Build the Grand Challenge container image (needs a Docker engine).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
docker build --tag "$image" "$here"
