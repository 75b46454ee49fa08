#!/usr/bin/env bash
# Run the algorithm on test/input as Grand Challenge does, then compare the output with
# test/expected_output/ (exit non-zero on any mismatch: missing or extra file, JSON, grid,
# pixel type, Dice < 0.99).
#
#   ./test.sh              build the image, run it with a GPU, compare inside the image
#   ./test.sh --cpu        the same without --gpus
#   ./test.sh --no-build   use the image as it is
#   ./test.sh --local      no Docker: process.py with this Python on a read-only copy of test/input
#
# The build is ./build.sh, or test/container/build-offline.sh where the base image is the
# local stand-in that script made (no registry).
#
# The container runs as the image's own user (uid 1001), --network none, read-only root file
# system with an empty /tmp, /input read-only, /output a fresh Docker volume, 30 GB memory
# and 2 GB shared memory. The comparison runs in the image too, so the host needs only
# Docker; any user allowed to run docker can run this from any directory, and nothing is
# left behind (the output lives in a volume that is removed at the end).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
mode="gpu"
build=1
for arg in "$@"; do
  case "$arg" in
    --cpu) mode="cpu" ;;
    --local) mode="local" ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# shellcheck source=test/container/sandbox.sh
source "$here/test/container/sandbox.sh"

if [ "$mode" = "local" ]; then
  mkdir -p "$work/output"
  cp -r "$here/test/input" "$work/input"
  chmod -R a-w "$work/input"
  python "$here/process.py" --input "$work/input" --output "$work/output" --device cpu
  python -m petseg compare "$here/test/expected_output" "$work/output"
  echo "test.sh: output matches test/expected_output (local)"
  exit 0
fi

if [ "$build" = 1 ]; then
  base="$(awk 'toupper($1) == "FROM" { print $2; exit }' "$here/Dockerfile")"
  if [ -n "$(docker image inspect --format '{{ index .Config.Labels "org.petseg.stand-in-base" }}' "$base" 2> /dev/null)" ]; then
    "$here/test/container/build-offline.sh"
  else
    "$here/build.sh"
  fi
fi
# Copies the container's user can read whatever the checkout's permissions are.
cp -r "$here/test/input" "$work/input"
cp -r "$here/test/expected_output" "$work/expected"
chmod -R a+rX,a-w "$work/input" "$work/expected"
new_volume volume petseg-test-output

gpus=(--gpus all)
[ "$mode" = "cpu" ] && gpus=()
docker run "${sandbox[@]}" "${gpus[@]}" \
  --volume "$work/input:/input:ro" --volume "$volume:/output" "$image"
docker run "${sandbox[@]}" --entrypoint python \
  --volume "$work/expected:/expected:ro" --volume "$volume:/output:ro" "$image" \
  -m petseg compare /expected /output
echo "test.sh: output matches test/expected_output ($mode)"
