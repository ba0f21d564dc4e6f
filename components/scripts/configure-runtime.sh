#!/usr/bin/env bash
# Register the NVIDIA runtime with the container runtime; restart it only when its config changed.
#
# Environment:
#   CONTAINER_RUNTIME  docker | containerd | microk8s
#                      docker      /etc/docker/daemon.json, then `systemctl restart docker`
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
  if [[ "$before" == "$after" ]]; then
    log "$config already has the NVIDIA runtime; no restart"
    return 0
  fi
  log "$config changed; running: $restart"
  # $restart is one of the fixed command lines above: word splitting is intended.
  # shellcheck disable=SC2086
  as_root $restart || die "$EXIT_RUNTIME" "'$restart' failed after the NVIDIA runtime was configured" \
    "see 'journalctl -u ${runtime}' (or 'snap logs microk8s') on the host, fix $config, then run pulumi up again"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
