#!/usr/bin/env bash
# The click-aware image run as autoPET V runs it (--interface autopet5): six steps of one case,
# the container afresh at each, /input read-only, a new /output per step and one /cache volume
# kept across the steps. Step 0 has no lesion-clicks.json; each later step adds a simulated
# background scribble (petseg.scribbles, on the largest lesion of the last mask). Checks per
# step: exit 0, exactly one mask, stderr warnings only; from step 1 the study comes from /cache
# and every point of the clicks file is read (more than autoPET IV's 10 per kind).
#   test/container/check-autopet5.sh     (image: $PETSEG_IMAGE, default petseg-autopet4: the same image
#   serves autopet5 when process.py is given --interface autopet5)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${PETSEG_IMAGE:-petseg-autopet4}"
# shellcheck source=test/container/sandbox.sh
source "$root/test/container/sandbox.sh"
failures=0
fail() { echo "check-autopet5.sh: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-autopet5.sh: ok: $*"; }
task="images/tumor-lesion-segmentation"
case_file="$(basename "$root"/test/input/images/pet/*.mha)"
new_volume cache "petseg-ap5-cache"
mkdir -p "$work/input"
cp -r "$root/test/input/images" "$work/input/images"
points=0
for step in 0 1 2 3 4 5; do
  chmod -R a+rX,a-w "$work/input"
  new_volume output "petseg-ap5-out$step"
  set +e
  docker run "${sandbox[@]}" --volume "$work/input:/input:ro" --volume "$output:/output" --volume "$cache:/cache" \
    "$image" --interface autopet5 > "$work/$step.out" 2> "$work/$step.err"
  code=$?
  set -e
  docker run --rm --network none --volume "$output:/output:ro" --volume "$work:/work" --user "$(id -u):$(id -g)" \
    --entrypoint sh "$image" -c "cd /output && find . -type f | sed 's|^\./||' | sort > /work/$step.files && mkdir -p /work/m$step && cp -r /output/. /work/m$step/"
  expected_log="kept in /cache"
  [ "$step" = 0 ] || expected_log="the preprocessed study from /cache"
  if [ "$code" = 0 ] && [ "$(cat "$work/$step.files")" = "$task/$case_file" ] && grep -q "$expected_log" "$work/$step.out" \
     && grep -q "step done in" "$work/$step.out" && ! grep -v " WARNING " "$work/$step.err" > /dev/null \
     && { [ "$step" = 0 ] || grep -q "clicks from /input/lesion-clicks.json: 0 tumour, $points background" "$work/$step.out"; }; then
    ok "step $step: exit 0, one mask, $(grep -o 'step done in .*' "$work/$step.out")"
  else
    fail "step $step: exit $code, files [$(cat "$work/$step.files")]"; cat "$work/$step.out" "$work/$step.err" >&2
  fi
  [ "$step" = 5 ] && break
  chmod -R u+w "$work/input"
  points="$(docker run --rm --network none --volume "$work:/work" --user "$(id -u):$(id -g)" --entrypoint python "$image" -c "
import json, os
import numpy as np, SimpleITK as sitk
from petseg.scribbles import simulate_scribble
mask = sitk.GetArrayFromImage(sitk.ReadImage('/work/m$step/$task/$case_file')) > 0
path = '/work/input/lesion-clicks.json'
points = json.load(open(path))['points'] if os.path.exists(path) else []
scribble = simulate_scribble(np.zeros_like(mask), mask, style='mixed', rng=np.random.default_rng($step))
if scribble is not None:
    points += scribble.as_clicks() * 8  # long runs of points, as scribbles are
json.dump({'type': 'Multiple points', 'points': points}, open(path, 'w'))
print(len(points))
")"
done
if [ "$points" -gt 10 ]; then ok "the last step read $points background points"; else fail "only $points points in the last step"; fi

if [ "$failures" != 0 ]; then echo "check-autopet5.sh: $failures check(s) failed" >&2; exit 1; fi
echo "check-autopet5.sh: all checks passed ($image, --interface autopet5)"
