#!/usr/bin/env bash
# Build the container image where the base image cannot be pulled from a registry
# (CI, air-gapped machines): only a Debian mirror and a Python package index are needed.
#
#   test/container/build-offline.sh [--rebuild-base] [docker build options...]
#
# 1. If the Dockerfile's base image (FROM) is neither present nor pullable, make a stand-in
#    for it: Debian bookworm (debootstrap, minbase) with its Python 3.11 as a venv at
#    /usr/local (so python, pip and site-packages sit where the official python image has
#    them), the CA certificates this machine trusts (/usr/local/share/ca-certificates) and
#    an /etc/pip.conf that makes pip use the system store. It is imported under the FROM
#    name, so the Dockerfile is the same for the real base and the stand-in, and it is
#    reused on later runs (--rebuild-base makes it again). Needs root and debootstrap.
#    The stand-in carries the label org.petseg.stand-in-base; export.sh refuses images
#    built on it: they are for testing, never for upload.
# 2. Runs ./build.sh --network host with this machine's pip index settings (PIP_INDEX_URL,
#    PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST, from the environment and pip's
#    configuration files) as build arguments. Local folders and file:// indexes are served
#    over HTTP on 127.0.0.1 for the duration of the build. TORCH_INDEX_URL, when set, is
#    passed on (it selects the torch build, see the Dockerfile).
#
# Environment: PETSEG_IMAGE (default petseg), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# PETSEG_PIP_PORT (default 38717; keep it fixed, the build arguments are part of the layer cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
port="${PETSEG_PIP_PORT:-38717}"
label="org.petseg.stand-in-base"
rebuild_base=0
if [ "${1:-}" = "--rebuild-base" ]; then rebuild_base=1; shift; fi

base="$(awk 'toupper($1) == "FROM" { print $2; exit }' "$root/Dockerfile")"
[ -n "$base" ] || { echo "build-offline.sh: no FROM line in $root/Dockerfile" >&2; exit 2; }

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

make_stand_in() {
  local rootfs="$tmp/rootfs" py_env
  command -v debootstrap >/dev/null || { echo "build-offline.sh: debootstrap is not installed" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "build-offline.sh: making the stand-in base needs root (debootstrap)" >&2; exit 1; }
  echo "build-offline.sh: making a stand-in for $base (debootstrap bookworm from $mirror)"
  local t0=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" "$mirror" > "$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  # The CA certificates this machine trusts (a TLS-inspecting proxy's, a company CA).
  if compgen -G "/usr/local/share/ca-certificates/*" > /dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
  fi
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # A clean environment: none of this machine's PIP_* settings (they name local paths).
  py_env=(env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
          ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY}
          ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy}
          ${NO_PROXY:+NO_PROXY=$NO_PROXY} ${no_proxy:+no_proxy=$no_proxy})
  chroot "$rootfs" "${py_env[@]}" update-ca-certificates > /dev/null
  # pip's vendored certifi bundle would ignore the added certificates: use the system store.
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
  # Python where python:3.11-slim has it: /usr/local/bin/python, site-packages under /usr/local.
  chroot "$rootfs" "${py_env[@]}" python3 -m venv /usr/local
  # The pip and setuptools of the official image (python:3.11.10-slim-bookworm).
  chroot "$rootfs" "${py_env[@]}" python -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    "pip==24.0" "setuptools==65.5.1" "wheel==0.44.0"
  : > "$rootfs/etc/resolv.conf"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/root/.cache "$rootfs"/tmp/* "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $label=debootstrap-bookworm" \
    --change 'CMD ["python3"]' \
    - "$base" > /dev/null
  echo "build-offline.sh: stand-in $base made in $((SECONDS - t0)) s"
}

if [ "$rebuild_base" = 1 ] || ! docker image inspect "$base" > /dev/null 2>&1; then
  if [ "$rebuild_base" = 0 ] && docker pull "$base" > /dev/null 2>&1; then
    echo "build-offline.sh: pulled $base"
  else
    make_stand_in
  fi
else
  echo "build-offline.sh: using the local $base"
fi

# This machine's pip index settings, with local folders / file:// URLs made reachable over HTTP.
mkdir -p "$tmp/serve"
python3 "$root/test/container/pip_sources.py" "$tmp/serve" "$port" > "$tmp/pip-args"

build_args=()
while IFS= read -r line; do
  case "$line" in
    SERVE=0) ;;
    SERVE=*)
      python3 -m http.server --bind 127.0.0.1 --directory "$tmp/serve" "$port" > "$tmp/http.log" 2>&1 &
      server_pid=$!
      for _ in $(seq 50); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/http.log" >&2; echo "build-offline.sh: port $port busy? set PETSEG_PIP_PORT" >&2; exit 1; }
        sleep 0.1
      done ;;
    *) build_args+=(--build-arg "$line"); echo "build-offline.sh: build argument $line" ;;
  esac
done < "$tmp/pip-args"
[ -n "${TORCH_INDEX_URL:-}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

"$root/build.sh" --network host "${build_args[@]}" "$@"
