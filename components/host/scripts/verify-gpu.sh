#!/usr/bin/env bash
# Check that the host driver works and that a container sees the GPU.
#
# Environment:
#   CUDA_IMAGE         the profile's CUDA base image (e.g. nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04)
#   CONTAINER_RUNTIME  docker | containerd | microk8s
#                      docker:     docker run --rm --runtime=nvidia --gpus all IMAGE nvidia-smi
#                      containerd: ctr image pull + ctr run --rm --gpus 0 IMAGE ... nvidia-smi
#                      microk8s:   the same through `microk8s ctr`
#                      (ctr checks GPU 0 only; docker checks all GPUs.)
#   PRIVILEGES         unprivileged (provision.privileges): docker only, run as the deploy user (the
#                      docker group), never through sudo
#   HOST_ROOT          file path prefix (tests only; see common.sh)
#
# Exit codes: 0 ok, 11 needs root/sudo (unprivileged: not in the docker group), 14 nvidia-smi failed on the host, 18 the GPU container
#   check failed, 19 bad parameters.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# full_reference IMAGE: ctr needs docker.io/library/... spelled out.
full_reference() {
  local image="$1" first="${1%%/*}"
  if [[ "$image" != */* ]]; then
    echo "docker.io/library/$image"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    echo "$image"
  else
    echo "docker.io/$image"
  fi
}

main() {
  local runtime="${CONTAINER_RUNTIME:-}" image="${CUDA_IMAGE:-}"
  [[ "$runtime" =~ ^(docker|containerd|microk8s)$ ]] || die "$EXIT_BAD_PARAMS" \
    "CONTAINER_RUNTIME must be docker, containerd or microk8s, got '${runtime}'" "fix the stack's container runtime"
  [[ -n "$image" && "$image" != *[[:space:]]* ]] || die "$EXIT_BAD_PARAMS" \
    "CUDA_IMAGE must be an image reference, got '${image}'" "fix the profile's CUDA image"

  nvidia-smi >&2 || die "$EXIT_DRIVER" "nvidia-smi failed on the host: the NVIDIA driver is not working" \
    "run nvidia-smi on the host to see why; install the driver or reboot after a driver install"
  if ! unprivileged; then
    require_root
  elif [[ "$runtime" != docker ]]; then
    die "$EXIT_BAD_PARAMS" "CONTAINER_RUNTIME=$runtime needs root, and user $(id -un) deploys without it (provision.privileges: unprivileged)" \
      "deploy to a Docker host, or set provision.privileges: root for a user with passwordless sudo"
  elif ! docker info >/dev/null 2>&1; then
    die "$EXIT_NEEDS_ROOT" "user $(id -un) cannot use Docker ('docker info' failed): without root it must be in the docker group" \
      "have an administrator run 'sudo usermod -aG docker $(id -un)', then run pulumi up again"
  fi

  local status=0
  if [[ "$runtime" == docker ]]; then
    as_root docker run --rm --runtime=nvidia --gpus all "$image" nvidia-smi >&2 || status=$?
  else
    local ctr=(ctr) ref
    [[ "$runtime" == microk8s ]] && ctr=(microk8s ctr)
    ref="$(full_reference "$image")"
    as_root "${ctr[@]}" image pull "$ref" >&2 || status=$?
    if [[ "$status" == 0 ]]; then
      as_root "${ctr[@]}" run --rm --gpus 0 "$ref" "gpu-check-$$" nvidia-smi >&2 || status=$?
    fi
  fi
  [[ "$status" == 0 ]] || die "$EXIT_GPU_CONTAINER" "running nvidia-smi in $image with $runtime failed (exit $status)" \
    "check that the image can be pulled and that configure-runtime ran (nvidia-ctk runtime configure), then run pulumi up again"
  log "a $runtime container sees the GPU"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
