#!/usr/bin/env bash
# Checks of the built image beyond test.sh (CI runs both):
#   - pip check passes; the runtime user is not root;
#   - the code (site-packages, /opt/app) and the weights cannot be modified by that user;
#   - petseg evaluate, qc and the DICOM modules work inside the image;
#   - bad input (an empty /input) ends with exit code 1, exactly one line on stderr naming
#     the problem (no traceback, no device warning first), and nothing in /output.
#   test/container/check-image.sh        (image: $PETSEG_IMAGE, default petseg)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${PETSEG_IMAGE:-petseg}"
# shellcheck source=test/container/sandbox.sh
source "$root/test/container/sandbox.sh"
failures=0
fail() { echo "check-image.sh: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-image.sh: ok: $*"; }

in_image() { docker run "${sandbox[@]}" --entrypoint "$1" "${@:2}"; }

cp -r "$root/test/label" "$work/label"
cp -r "$root/test/expected_output/images/automated-petct-lesion-segmentation" "$work/pred"
cp -r "$root/test/input" "$work/input"
mkdir -p "$work/empty"
chmod -R a+rX,a-w "$work/label" "$work/pred" "$work/input" "$work/empty"

# pip check, user
if out="$(in_image python "$image" -m pip check 2>&1)"; then ok "pip check: $out"; else fail "pip check: $out"; fi
uid="$(in_image id "$image" -u)"
if [ "$uid" != 0 ]; then ok "runtime user: $(in_image id "$image")"; else fail "the image runs as root"; fi

# code and weights read-only for the runtime user (the root file system writable here on purpose)
for target in /opt/app/process.py /opt/app/weights/model.json /opt/app/newfile \
              /usr/local/lib/python3.11/site-packages/petseg/__init__.py; do
  if docker run --rm --network none --entrypoint sh "$image" -c "echo x >> $target" 2> /dev/null; then
    fail "the runtime user can write $target"
  else
    ok "not writable by the runtime user: $target"
  fi
done

# evaluate (cc3d), qc (matplotlib), DICOM modules (pydicom, highdicom)
if out="$(in_image petseg --volume "$work/label:/label:ro" --volume "$work/pred:/pred:ro" "$image" \
          evaluate --gt /label --pred /pred 2>&1)"; then
  ok "petseg evaluate:"; echo "$out" | sed 's/^/    /'
else
  fail "petseg evaluate: $out"
fi
case_id="$(basename "$work"/pred/*.mha)"
if out="$(in_image sh --volume "$work/input:/input:ro" --volume "$work/pred:/pred:ro" "$image" -c \
          "petseg qc --pet /input/images/pet/$case_id --mask /pred/$case_id -o /tmp/qc.png && test -s /tmp/qc.png" 2>&1)"; then
  ok "petseg qc wrote a picture"
else
  fail "petseg qc: $out"
fi
if out="$(in_image python "$image" -c "import petseg.dicom, pydicom, highdicom; print('pydicom', pydicom.__version__, 'highdicom', highdicom.__version__)" 2>&1)"; then
  ok "DICOM modules: $out"
else
  fail "DICOM modules: $out"
fi

# bad input: an empty /input
new_volume volume petseg-check-output
set +e
docker run "${sandbox[@]}" --volume "$work/empty:/input:ro" --volume "$volume:/output" "$image" \
  > "$work/stdout" 2> "$work/stderr"
code=$?
set -e
written="$(docker run --rm --network none --volume "$volume:/output:ro" --entrypoint find "$image" /output -mindepth 1)"
lines="$(wc -l < "$work/stderr")"
last="$(tail -n 1 "$work/stderr")"
# the input is checked before the folds are loaded: exactly one line, no device warning first
if [ "$code" = 1 ] && [ "$lines" = 1 ] && [[ "$last" == "process.py: error: /input"* ]] && [ -z "$written" ]; then
  ok "empty /input: exit 1, nothing written, stderr is one line: $last"
else
  fail "empty /input: exit $code, $lines stderr line(s), written: [${written}]"; cat "$work/stderr" >&2
fi

if [ "$failures" != 0 ]; then echo "check-image.sh: $failures check(s) failed" >&2; exit 1; fi
echo "check-image.sh: all checks passed ($image)"
