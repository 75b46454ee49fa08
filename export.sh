#!/usr/bin/env bash
# Build, then save the image as a gzipped tarball for upload to Grand Challenge.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
"$here/build.sh"
docker save "$image" | gzip -c > "$here/${image}.tar.gz"
echo "wrote $here/${image}.tar.gz"
