# Sourced by test.sh and the image checks in test/container (bash): the sandbox Grand
# Challenge runs an algorithm in (no network, read-only root file system with an empty /tmp,
# 30 GB memory without swap beyond it, 2 GB shared memory), a scratch folder "$work", and
# Docker volumes for /output; the folder and the volumes are removed on exit, whatever happens.
sandbox=(--rm --network none --read-only --tmpfs /tmp --memory 30g --memory-swap 30g --shm-size 2g)
work="$(mktemp -d)"
volumes=()

new_volume() {  # new_volume VAR PREFIX: VAR = a fresh Docker volume named after PREFIX
  local name
  name="$(docker volume create "$2-$(date +%s)-$$-${#volumes[@]}")"
  volumes+=("$name")
  printf -v "$1" '%s' "$name"
}

remove_scratch() {
  local v
  for v in "${volumes[@]}"; do docker volume rm --force "$v" > /dev/null 2>&1 || true; done
  chmod -R u+w "$work" 2> /dev/null || true
  rm -rf "$work"
}
trap remove_scratch EXIT
