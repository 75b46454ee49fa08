#!/usr/bin/env bash
# The autoPET IV image (click-aware model, --interface autopet4) run as Grand Challenge runs it:
#   - without lesion-clicks.json: exit 0, exactly one mask in images/tumor-lesion-segmentation/,
#     nothing on stderr but warnings (on a machine without a GPU: that it runs on the CPU);
#   - with a background click on the centre of each lesion of that mask: the log names the
#     clicks read, exactly one mask again, and it differs from the click-free one (the clicks
#     reach the network inside the image).
#   test/container/check-autopet4.sh     (image: $PETSEG_IMAGE, default petseg-autopet4; build it with
#   PETSEG_IMAGE=petseg-autopet4 test/container/build-offline.sh \
#     --build-arg MODEL_DIR=weights-clicks --build-arg INTERFACE=autopet4)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${PETSEG_IMAGE:-petseg-autopet4}"
# shellcheck source=test/container/sandbox.sh
source "$root/test/container/sandbox.sh"
failures=0
fail() { echo "check-autopet4.sh: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-autopet4.sh: ok: $*"; }
task="images/tumor-lesion-segmentation"

run_job() {  # run_job INPUT NAME: output in a fresh volume, stdout/stderr/exit code in $work/NAME.*
  local volume
  new_volume volume "petseg-ap4-$2"
  set +e
  docker run "${sandbox[@]}" --volume "$1:/input:ro" --volume "$volume:/output" "$image" \
    > "$work/$2.out" 2> "$work/$2.err"
  echo $? > "$work/$2.code"
  set -e
  docker run --rm --network none --volume "$volume:/output:ro" --entrypoint sh "$image" \
    -c "cd /output && find . -type f | sed 's|^\./||' | sort" > "$work/$2.files"
  docker run --rm --network none --volume "$volume:/output:ro" --volume "$work:/work" --user "$(id -u):$(id -g)" \
    --entrypoint sh "$image" -c "mkdir -p /work/$2 && cp -r /output/. /work/$2/"
}

interface="$(docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep '^PETSEG_GC_INTERFACE=' || true)"
if [ "$interface" = "PETSEG_GC_INTERFACE=autopet4" ]; then ok "image serves autopet4"; else fail "image environment: ${interface:-no PETSEG_GC_INTERFACE}"; fi

mkdir -p "$work/plain"
cp -r "$root/test/input/images" "$work/plain/images"
chmod -R a+rX,a-w "$work/plain"
run_job "$work/plain" none
case_file="$(basename "$root"/test/input/images/pet/*.mha)"
if [ "$(cat "$work/none.code")" = 0 ] && [ "$(cat "$work/none.files")" = "$task/$case_file" ] \
   && ! grep -v " WARNING " "$work/none.err" > /dev/null; then
  ok "no clicks: exit 0, one mask ($task/$case_file), stderr: $(wc -l < "$work/none.err") warning line(s)"
else
  fail "no clicks: exit $(cat "$work/none.code"), files [$(cat "$work/none.files")]"; cat "$work/none.err" >&2
fi

# A background click at the centre of each lesion the click-free run found (at most 10).
mkdir -p "$work/clicked"
cp -r "$root/test/input/images" "$work/clicked/images"
docker run --rm --network none --volume "$work:/work" --user "$(id -u):$(id -g)" --entrypoint python "$image" -c "
import json, sys
import cc3d, numpy as np, SimpleITK as sitk
from scipy import ndimage
mask = sitk.GetArrayFromImage(sitk.ReadImage('/work/none/$task/$case_file'))  # z, y, x
labels, n = cc3d.connected_components(mask > 0, connectivity=18, return_N=True)
if n == 0:
    sys.exit('no lesion to click on')
points = []
for lesion in range(1, min(n, 10) + 1):
    z, y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(labels == lesion)), mask.shape)
    points.append({'point': [int(x), int(y), int(z)], 'name': 'background'})
json.dump({'points': points}, open('/work/clicked/lesion-clicks.json', 'w'))
print(len(points))
" > "$work/n_clicks"
chmod -R a+rX,a-w "$work/clicked"
run_job "$work/clicked" clicks
if [ "$(cat "$work/clicks.code")" = 0 ] && [ "$(cat "$work/clicks.files")" = "$task/$case_file" ] \
   && grep -q "clicks from /input/lesion-clicks.json: 0 tumour, $(cat "$work/n_clicks") background" "$work/clicks.out"; then
  ok "clicks: exit 0, one mask, log: $(grep -o 'clicks from .*' "$work/clicks.out")"
else
  fail "clicks: exit $(cat "$work/clicks.code"), files [$(cat "$work/clicks.files")]"; cat "$work/clicks.out" "$work/clicks.err" >&2
fi
if changed="$(docker run --rm --network none --volume "$work:/work:ro" --user "$(id -u):$(id -g)" --entrypoint python "$image" -c "
import numpy as np, SimpleITK as sitk
a, b = (sitk.GetArrayFromImage(sitk.ReadImage(f'/work/{r}/$task/$case_file')) for r in ('none', 'clicks'))
d = int((a != b).sum())
print(d, 'voxels differ,', int(a.sum()), '->', int(b.sum()), 'lesion voxels')
raise SystemExit(not (d > 0 and b.sum() < a.sum()))  # background clicks on lesions remove lesion voxels
" 2>&1)"; then
  ok "the background clicks removed lesion voxels: $changed"
else
  fail "the background clicks removed no lesion voxels: $changed"
fi

if [ "$failures" != 0 ]; then echo "check-autopet4.sh: $failures check(s) failed" >&2; exit 1; fi
echo "check-autopet4.sh: all checks passed ($image)"
