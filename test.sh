#!/usr/bin/env bash
# Run the algorithm on test/input exactly as Grand Challenge would, then compare the
# output with test/expected_output/ (exit non-zero on any mismatch).
#
#   ./test.sh           build the image, run it with a GPU (--network none, 30g, read-only /input)
#   ./test.sh --cpu     same without --gpus
#   ./test.sh --local   no Docker: run process.py with this Python on a read-only copy (CI)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${PETSEG_IMAGE:-petseg}"
mode="gpu"
for arg in "$@"; do
  case "$arg" in
    --cpu) mode="cpu" ;;
    --local) mode="local" ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/output"

if [ "$mode" = "local" ]; then
  cp -r "$here/test/input" "$work/input"
  chmod -R a-w "$work/input"
  python "$here/process.py" --input "$work/input" --output "$work/output" --device cpu
else
  "$here/build.sh"
  chmod 777 "$work/output"  # the container's non-root user writes here
  gpus=(--gpus all)
  [ "$mode" = "cpu" ] && gpus=()
  docker run --rm "${gpus[@]}" --network none --memory 30g --memory-swap 30g --shm-size 2g \
    --volume "$here/test/input:/input:ro" --volume "$work/output:/output" "$image"
fi

python -m petseg compare "$here/test/expected_output" "$work/output"
echo "test.sh: output matches test/expected_output ($mode)"
