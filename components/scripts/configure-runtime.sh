#!/usr/bin/env bash
# Register the NVIDIA runtime with the container runtime; restart it only when needed.
#
# Environment:
#   CONTAINER_RUNTIME  docker | containerd | microk8s
#                      docker      /etc/docker/daemon.json, then `systemctl restart docker`; also restarted
#                                  when the running dockerd lacks the runtime or the NVIDIA device driver
#                      containerd  /etc/containerd/config.toml, then `systemctl restart containerd`
#                      microk8s    /var/snap/microk8s/current/args/containerd-template.toml,
#                                  then `snap restart microk8s`
#   HOST_ROOT          file path prefix (tests only; see common.sh)
#
# Exit codes: 0 ok (changed or unchanged), 11 needs root/sudo, 17 nvidia-ctk runtime configure
#   or the restart failed, 19 bad parameters, 20 nvidia-ctk missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# docker_restart_reason: why the running dockerd cannot start GPU containers although daemon.json is
# right, or nothing. dockerd reads its runtimes from daemon.json, and registers the NVIDIA device driver
# behind `--gpus` / DeviceRequests only when it starts and finds nvidia-container-runtime-hook on PATH
# (moby v20.10 daemon/nvidia_linux.go, init()): a dockerd started before the toolkit was installed answers
# 'could not select device driver "nvidia"' until it is restarted.
docker_restart_reason() {
  local runtimes hook installed running
  runtimes="$(as_root docker info --format '{{json .Runtimes}}' 2>/dev/null || true)"
  if [[ "$runtimes" != *'"nvidia"'* ]]; then
    echo "the running dockerd does not list the nvidia runtime"
    return 0
  fi
  hook="$(command -v nvidia-container-runtime-hook 2>/dev/null || true)"
  running="$(ps -C dockerd -o etimes= 2>/dev/null | sort -n | tail -n 1 | tr -d ' ' || true)"
  [[ -n "$hook" && "$running" =~ ^[0-9]+$ ]] || return 0
  installed="$(stat -L -c %Y "$hook")"
  if ((installed > $(date +%s) - running)); then
    echo "dockerd started before $hook was installed, so it has no NVIDIA device driver"
  fi
}

main() {
  local runtime="${CONTAINER_RUNTIME:-}" ctk_runtime config restart
  case "$runtime" in
    docker) ctk_runtime=docker config=/etc/docker/daemon.json restart="systemctl restart docker" ;;
    containerd) ctk_runtime=containerd config=/etc/containerd/config.toml restart="systemctl restart containerd" ;;
    microk8s)
      ctk_runtime=containerd config=/var/snap/microk8s/current/args/containerd-template.toml
      restart="snap restart microk8s"
      [[ -e "${HOST_ROOT}${config}" ]] || die "$EXIT_RUNTIME" "${config} does not exist: is MicroK8s installed?" \
        "install MicroK8s (snap install microk8s --classic) or pick another container runtime"
      ;;
    *) die "$EXIT_BAD_PARAMS" "CONTAINER_RUNTIME must be docker, containerd or microk8s, got '${runtime}'" \
      "fix the stack's container runtime" ;;
  esac
  command -v nvidia-ctk >/dev/null 2>&1 || die "$EXIT_TOOLKIT" "nvidia-ctk not found on PATH" \
    "install the NVIDIA Container Toolkit first (toolkit action 'install')"
  require_root

  local before after status=0
  before="$(file_sum "${HOST_ROOT}${config}")"
  as_root nvidia-ctk runtime configure --runtime="$ctk_runtime" --config="${HOST_ROOT}${config}" || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_RUNTIME" "nvidia-ctk runtime configure --runtime=$ctk_runtime failed for $config" \
    "check that $config is valid (see the output above), then run pulumi up again"
  after="$(file_sum "${HOST_ROOT}${config}")"
  local why=""
  if [[ "$before" != "$after" ]]; then
    why="$config changed"
  elif [[ "$runtime" == docker ]]; then
    why="$(docker_restart_reason)"
  fi
  if [[ -z "$why" ]]; then
    log "$config already has the NVIDIA runtime; no restart"
    return 0
  fi
  log "$why; running: $restart"
  # $restart is one of the fixed command lines above: word splitting is intended.
  # shellcheck disable=SC2086
  as_root $restart || die "$EXIT_RUNTIME" "'$restart' failed after the NVIDIA runtime was configured" \
    "see 'journalctl -u ${runtime}' (or 'snap logs microk8s') on the host, fix $config, then run pulumi up again"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
