#!/usr/bin/env bash
# Register the NVIDIA runtime with the container runtime; restart it only when needed.
#
# Environment:
#   CONTAINER_RUNTIME  docker | containerd | microk8s
#                      docker      /etc/docker/daemon.json, then `systemctl restart docker`; also restarted
#                                  when the running dockerd lacks the runtime or the NVIDIA device driver
#                      containerd  /etc/containerd/config.toml, then `systemctl restart containerd`
#                      microk8s    the `nvidia` runtime written into
#                                  /var/snap/microk8s/current/args/containerd-template.toml (not by
#                                  nvidia-ctk: see microk8s_runtime), then `snap restart microk8s`
#   PRIVILEGES         unprivileged (provision.privileges): docker only, and nothing is configured or
#                      restarted: the running dockerd must already list the nvidia runtime and have
#                      the NVIDIA device driver (an administrator's nvidia-ctk and Docker restart)
#   HOST_ROOT          file path prefix (tests only; see common.sh)
#
# Exit codes: 0 ok (changed or unchanged), 11 needs root/sudo (unprivileged: not in the docker group),
#   17 nvidia-ctk runtime configure or the restart failed (unprivileged: Docker needs an administrator),
#   19 bad parameters, 20 nvidia-ctk missing.
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

# verify_docker_runtime RUNTIME: without root (PRIVILEGES=unprivileged) nothing is configured or restarted:
# the deploy user must reach Docker, and the running dockerd must already be able to start GPU containers.
verify_docker_runtime() {
  local runtime="$1" user why
  user="$(id -un)"
  [[ "$runtime" == docker ]] || die "$EXIT_BAD_PARAMS" \
    "CONTAINER_RUNTIME=$runtime needs root, and user $user deploys without it (provision.privileges: unprivileged)" \
    "deploy to a Docker host, or set provision.privileges: root for a user with passwordless sudo"
  docker info >/dev/null 2>&1 || die "$EXIT_NEEDS_ROOT" \
    "user $user cannot use Docker ('docker info' failed): without root it must be in the docker group" \
    "have an administrator run 'sudo usermod -aG docker $user', then run pulumi up again"
  why="$(docker_restart_reason)"
  [[ -z "$why" ]] || die "$EXIT_RUNTIME" \
    "Docker cannot start GPU containers ($why), and user $user may not change that (provision.privileges: unprivileged)" \
    "have an administrator run 'sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker' once, then run pulumi up again"
  log "the running dockerd has the nvidia runtime; nothing changed (unprivileged)"
}

# The `nvidia` runtime (the handler of RuntimeClass nvidia) in MicroK8s's containerd template, shaped like
# the template's own nvidia-container-runtime entry. MicroK8s renders the template with sed into
# args/containerd.toml on every start (microk8s 1.30 wrappers/run-containerd-with-args), so the template
# is the file to change, placeholders and all. nvidia-ctk is not used here: from NVIDIA Container Toolkit 1.18 `runtime configure`
# writes a drop-in that copies the template's CRI section with its unrendered ${...} placeholders and
# imports it (nvidia-container-toolkit v1.18.0 pkg/config/engine/containerd/config_drop_in.go), which
# would replace MicroK8s's working CRI settings; no flag turns that off.
# ${RUNTIME_TYPE} is MicroK8s's own placeholder, left for its renderer:
# shellcheck disable=SC2016
readonly MICROK8S_NVIDIA_RUNTIME='
    # gpu-deploy: the nvidia runtime, for RuntimeClass nvidia (as the nvidia-container-runtime entry above)
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      runtime_type = "${RUNTIME_TYPE}"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
        BinaryName = "nvidia-container-runtime"'

microk8s_runtime() {
  local template="$1" restart="$2"
  if as_root grep -qF '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]' "$template"; then
    log "$template already has the nvidia runtime; no restart"
    return 0
  fi
  make_temp_dir
  as_root cat "$template" >"$TEMP_DIR/template"
  printf '%s\n' "$MICROK8S_NVIDIA_RUNTIME" >>"$TEMP_DIR/template"
  install_file "$TEMP_DIR/template" "$template" 0644
  log "added the nvidia runtime to $template; running: $restart"
  # $restart is a fixed command line: word splitting is intended.
  # shellcheck disable=SC2086
  as_root $restart || die "$EXIT_RUNTIME" "'$restart' failed after the nvidia runtime was added" \
    "see 'snap logs microk8s' on the host, check $template, then run pulumi up again"
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
  if unprivileged; then
    verify_docker_runtime "$runtime"
    return 0
  fi
  command -v nvidia-ctk >/dev/null 2>&1 || die "$EXIT_TOOLKIT" "nvidia-ctk not found on PATH" \
    "install the NVIDIA Container Toolkit first (toolkit action 'install')"
  require_root
  if [[ "$runtime" == microk8s ]]; then
    microk8s_runtime "${HOST_ROOT}${config}" "$restart"
    return 0
  fi

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
