#!/usr/bin/env bash
# Hold a service's new copy back until the old one is gone and the GPU memory it needs is free.
#
# Stop-first rollout (STOP_OLD=1), the handover: stop (`docker stop -t STOP_GRACE_S`; Pulumi removes them)
#   1. the old copy OLD_CONTAINER, when it exists;
#   2. any other container of this stack (STACK_LABEL) carrying SERVICE_LABEL: a zero-downtime copy of the
#      service from before its rollout mode changed (auto-named, so not found by name);
#   3. any other container of this stack publishing one of FREE_PORTS: the stack's reverse proxy when it
#      is going away (it held the service's ports while the service rolled with zero downtime);
# then wait until its devices have the budget free again, so the new copy never starts beside it.
# GPU_DEVICES=none (a service without a GPU): the handover only, no memory to wait for.
# Zero-downtime rollout (STOP_OLD=0): only confirm the room for the new copy beside the old one.
# Memory comes from `nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits`.
#
# Environment:
#   SERVICE        the service (for messages)
#   STOP_OLD       1: stop OLD_CONTAINER first (when it exists; Pulumi removes it); 0 (default): no stop
#   OLD_CONTAINER  the old copy's container name (required with STOP_OLD=1)
#   STOP_GRACE_S   seconds `docker stop -t` gives the old copy before SIGKILL (default 30)
#   STACK_LABEL    label=value every container of this stack carries (io.gpu-deploy.stack=<stack>);
#                  needed by SERVICE_LABEL and FREE_PORTS
#   SERVICE_LABEL  label=value of the service's containers (io.gpu-deploy.service=<service>); optional
#   FREE_PORTS     comma-separated host ports the new copy publishes, as <port>/<protocol>; optional
#   GPU_DEVICES    comma-separated device ids as nvidia-smi lists them (an index or a GPU-... UUID),
#                  "all", or "none" (no GPU: nothing to wait for); a MIG instance (MIG-..., or
#                  gpu:instance) is logged and skipped: nvidia-smi --query-gpu reports whole GPUs only
#   NEED_MIB       MiB that must be free on each device (the service's gpuMemory); empty or 0: the whole
#                  device, i.e. back to idle (memory.used <= IDLE_MIB)
#   IDLE_MIB       what an idle device may still show as used (default 1024)
#   WAIT_S         how long to wait for the memory (default 120)
#   POLL_S         seconds between two nvidia-smi readings (default 1)
# stdout: one line, `gpu-memory-gate: SERVICE: ... free after N s`.
#
# Exit codes: 0 ok, 14 nvidia-smi failed, 19 bad parameters, 22 GPU memory not free in time (or the old
# copy, or a container holding the ports, could not be listed, stopped or removed).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix the gate's parameters (components/docker/container.py) and run pulumi up again"
}

# stop_old NAME GRACE [WHAT]: stop the old copy (or WHAT); one already gone is fine.
stop_old() {
  local name="$1" grace="$2" what="${3:-the old copy $1}" out
  if ! docker container inspect --format '{{.Id}}' "$name" >/dev/null 2>&1; then
    log "$SERVICE: no old copy $name to stop"
    return 0
  fi
  log "$SERVICE: stopping $what (grace ${grace} s)"
  if ! out="$(docker stop -t "$grace" "$name" 2>&1)" && [[ "$out" != *"No such container"* ]]; then
    die "$EXIT_GPU_MEMORY" "stopping the old copy $name of $SERVICE failed: $out" \
      "stop it by hand (docker stop $name), then run pulumi up again"
  fi
  # Stopped, not removed: Pulumi still holds the container in its state and deletes it itself (stop, then
  # remove). Whether the Docker provider bundled with pulumi-docker 5.x tolerates a container removed
  # behind its back depends on its terraform-provider-docker (idempotent deletes came with kreuzwerker's
  # #891, 2026-04); a stopped container frees its GPU memory and ports just the same.
}

# labeled LABEL...: the names of the running containers carrying every LABEL (label=value): only a
# running one holds ports or GPU memory (a stopped one is Pulumi's to remove).
labeled() {
  local label out
  local -a filters=()
  for label in "$@"; do
    filters+=(--filter "label=$label")
  done
  if ! out="$(docker ps --no-trunc "${filters[@]}" --format '{{.Names}}' 2>&1)"; then
    die "$EXIT_GPU_MEMORY" "listing the containers labeled $* failed: $out" \
      "check the Docker engine (docker ps), then run pulumi up again"
  fi
  printf '%s\n' "$out"
}

# handover GRACE: stop the service's other containers of this stack (2. and 3. above).
handover() {
  local grace="$1" name
  local -a ports=()
  [[ -n "$STACK" ]] || return 0
  local names
  # assigned first: a failed listing inside `for ... in $(...)` would not stop the script (set -e)
  if [[ -n "$SERVICE_LABEL" ]]; then
    names="$(labeled "$STACK" "$SERVICE_LABEL")"
    for name in $names; do
      [[ "$name" == "$OLD" ]] || stop_old "$name" "$grace" "$name, a copy of $SERVICE from before its rollout changed"
    done
  fi
  IFS=, read -r -a ports <<<"$PORTS"
  ((${#ports[@]} > 0)) || return 0
  names="$(labeled "$STACK")"
  for name in $names; do
    if [[ "$name" != "$OLD" ]] && publishes "$name" "${ports[@]}"; then
      stop_old "$name" "$grace" "$name, which publishes a port of $SERVICE (${ports[*]})"
    fi
  done
}

# nvidia_smi_failed OUTPUT: exit with nvidia-smi's own words (and driver drift named as such).
nvidia_smi_failed() {
  local out="$1"
  # Driver drift: the packages were replaced under the loaded module (unattended upgrades); a deploy or a
  # rollback runs this gate first, so it says so before any copy is stopped.
  if [[ "$out" == *"version mismatch"* ]]; then
    die "$EXIT_DRIVER" "nvidia-smi failed on the host: $out (driver drift: the NVIDIA driver packages were replaced under the loaded kernel module)" \
      "reboot the host to load the installed driver (the driver step holds its packages from then on), then run pulumi up again"
  fi
  die "$EXIT_DRIVER" "nvidia-smi failed on the host: $out" \
    "check the NVIDIA driver (nvidia-smi), then run pulumi up again"
}

# driver_answers: nvidia-smi answers (its driver version query), or the gate fails with its words.
driver_answers() {
  local out
  out="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1)" || nvidia_smi_failed "$out"
}

# gpus: the nvidia-smi reading, one "index,uuid,total,used" line per GPU (spaces removed).
gpus() {
  local out
  out="$(nvidia-smi --query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits 2>&1)" ||
    nvidia_smi_failed "$out"
  printf '%s\n' "${out// /}"
}

# short_of READING DEVICE...: "" when every DEVICE has the room, else "device free need" of the first without.
short_of() {
  local reading="$1" device line index uuid total used free need found
  shift
  for device in "$@"; do
    found=0
    while IFS=, read -r index uuid total used; do
      [[ "$device" == "$index" || "$device" == "$uuid" ]] || continue
      found=1
      [[ "$total" =~ ^[0-9]+$ && "$used" =~ ^[0-9]+$ ]] ||
        die "$EXIT_DRIVER" "nvidia-smi reported GPU $device as '$index,$uuid,$total,$used'" \
          "check the NVIDIA driver (nvidia-smi), then run pulumi up again"
      free=$((total - used))
      if ((NEED > 0)); then need="$NEED"; else need=$((total - IDLE)); fi
      if ((free < need)); then
        printf '%s %s %s\n' "$device" "$free" "$need"
        return 0
      fi
    done <<<"$reading"
    if ((found == 0)); then
      line="$(cut -d, -f1,2 <<<"$reading" | tr '\n' ' ')"
      bad "GPU $device of $SERVICE is not on this host (nvidia-smi lists: ${line% })"
    fi
  done
}

main() {
  local stop="${STOP_OLD:-0}" old="${OLD_CONTAINER:-}" grace="${STOP_GRACE_S:-30}" wait_s="${WAIT_S:-120}"
  local poll="${POLL_S:-1}" wanted="${GPU_DEVICES:-}" device reading short started waited value free need
  local -a devices=() listed=()
  NEED="${NEED_MIB:-0}"
  IDLE="${IDLE_MIB:-1024}"
  STACK="${STACK_LABEL:-}"
  SERVICE_LABEL="${SERVICE_LABEL:-}"
  PORTS="${FREE_PORTS:-}"
  OLD="$old"
  [[ "${SERVICE:-}" =~ ^[a-z0-9][a-z0-9_.-]*$ ]] || bad "SERVICE must be a service name, got '${SERVICE:-}'"
  [[ "$stop" == 0 || "$stop" == 1 ]] || bad "STOP_OLD must be 0 or 1, got '$stop'"
  [[ "$stop" == 0 || -n "$old" ]] || bad "STOP_OLD=1 needs OLD_CONTAINER, the old copy's name"
  [[ "$NEED" =~ ^[0-9]+$ ]] || bad "NEED_MIB must be a number of MiB, got '$NEED'"
  for value in "$grace" "$wait_s" "$IDLE"; do
    [[ "$value" =~ ^[0-9]+$ ]] || bad "STOP_GRACE_S, WAIT_S and IDLE_MIB are whole numbers, got '$value'"
  done
  [[ "$poll" =~ ^[0-9]+(\.[0-9]+)?$ ]] || bad "POLL_S must be a number of seconds, got '$poll'"
  [[ -n "$wanted" ]] || bad "GPU_DEVICES lists no device (none: a service without a GPU)"
  local label_re='^[A-Za-z0-9][A-Za-z0-9._/-]*=[A-Za-z0-9][A-Za-z0-9_.-]*$'
  for value in "$STACK" "$SERVICE_LABEL"; do
    [[ -z "$value" || "$value" =~ $label_re ]] || bad "STACK_LABEL and SERVICE_LABEL are label=value, got '$value'"
  done
  [[ "$PORTS" =~ ^([0-9]+/(tcp|udp|sctp)(,[0-9]+/(tcp|udp|sctp))*)?$ ]] ||
    bad "FREE_PORTS lists <port>/<protocol> comma-separated, got '$PORTS'"
  [[ -n "$STACK" || (-z "$SERVICE_LABEL" && -z "$PORTS") ]] || bad "SERVICE_LABEL and FREE_PORTS need STACK_LABEL"

  # The driver answers before anything is stopped: a drifted driver fails here, the running copy untouched.
  if [[ "$wanted" != none ]]; then
    driver_answers
  fi
  if [[ "$stop" == 1 ]]; then
    stop_old "$old" "$grace"
    handover "$grace"
  fi
  if [[ "$wanted" == none ]]; then
    echo "gpu-memory-gate: $SERVICE: no GPU, no memory to wait for"
    return 0
  fi
  started="$SECONDS"
  reading="$(gpus)"
  if [[ "$wanted" == all ]]; then
    wanted="$(cut -d, -f1 <<<"$reading" | paste -sd, -)"
  fi
  IFS=, read -r -a listed <<<"$wanted"
  for device in "${listed[@]}"; do
    if [[ "$device" == MIG-* || "$device" == *:* ]]; then
      log "$SERVICE: MIG instance $device: nvidia-smi --query-gpu does not report it, not checked"
    elif [[ -n "$device" ]]; then
      devices+=("$device")
    fi
  done
  if ((${#devices[@]} == 0)); then
    echo "gpu-memory-gate: $SERVICE: nothing to check (MIG instances only)"
    return 0
  fi
  while true; do
    short="$(short_of "$reading" "${devices[@]}")"
    waited=$((SECONDS - started))
    [[ -n "$short" ]] || break
    if ((waited >= wait_s)); then
      read -r device free need <<<"$short"
      die "$EXIT_GPU_MEMORY" \
        "GPU $device has $free MiB free, $SERVICE needs $need MiB (waited ${wait_s} s)" \
        "free the GPU (nvidia-smi lists what holds it), or lower services.$SERVICE.gpuMemory, then run pulumi up again"
    fi
    sleep "$poll"
    reading="$(gpus)"
  done
  if ((NEED > 0)); then need="$NEED MiB"; else need="the whole device"; fi
  echo "gpu-memory-gate: $SERVICE: $need free on GPU ${devices[*]} after ${waited} s"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
