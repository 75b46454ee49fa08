#!/usr/bin/env bash
# Build, then save the image as a gzipped tarball for upload to Grand Challenge.
#   ./export.sh [FILE] [docker build options...]   default FILE: petseg.tar.gz beside (not inside) the checkout
#   e.g. ./export.sh ../petseg-autopet4.tar.gz --build-arg MODEL_DIR=weights-clicks --build-arg INTERFACE=autopet4
# The tarball (several GB) is kept out of the source tree so that it never enters the
# Docker build context; *.tar.gz is in .gitignore and .dockerignore as well.
# Images built on the stand-in base of test/container/build-offline.sh are refused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
out="$(dirname "$here")/${image}.tar.gz"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  out="$1"
  shift
fi
"$here/build.sh" --pull "$@"  # the real base, never a local stand-in
stand_in="$(docker image inspect --format '{{ index .Config.Labels "org.petseg.stand-in-base" }}' "$image")"
if [ -n "$stand_in" ]; then
  echo "export.sh: $image was built on a stand-in base image (test/container/build-offline.sh); build it on the real base to export" >&2
  exit 1
fi
docker save "$image" | gzip -c > "$out.partial"
mv "$out.partial" "$out"
echo "wrote $out"
