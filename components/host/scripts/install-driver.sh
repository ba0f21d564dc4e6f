#!/usr/bin/env bash
# Install or verify the NVIDIA driver on a GPU host.
#
# Environment:
#   DRIVER_ACTION   install | verify | skip (default verify)
#                   verify: nvidia-smi must work; prints the driver version on stdout.
#                   (The minimum-driver check for the profile is the preflight's job.)
#                   install: does nothing when nvidia-smi already reports DRIVER_BRANCH.
#   DRIVER_BRANCH   driver branch to install, e.g. 580 (install only)
#   KERNEL_MODULES  proprietary | open (default proprietary; a Tesla P40 needs proprietary)
#   REBOOT          never | if-needed (default never)
#   HOST_ROOT       file path prefix (tests only; see common.sh)
#
# Packages: Ubuntu  nvidia-driver-<branch>-server[-open]
#           Debian  not automated: exits 10 for install (verify and skip work)
#           dnf     NVIDIA's CUDA repository, module stream nvidia-driver:<branch>-dkms or
#                   <branch>-open (DKMS comes from EPEL on RHEL-like systems).
#
# Exit codes: 0 ok, 10 unsupported OS, 11 needs root/sudo, 12 download failed,
#   13 package install failed, 14 driver not working (verify), 15 reboot required and
#   REBOOT=never (reboot, then run `pulumi up` again), 16 rebooting now (run `pulumi up` again
#   when the host is back; the SSH session may drop before this code arrives), 19 bad parameters.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# driver_version: the loaded driver's version (e.g. 580.65.06), or nothing when nvidia-smi fails.
driver_version() {
  local out
  out="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null)" || return 0
  out="${out%%$'\n'*}"
  out="${out// /}"
  if [[ "$out" =~ ^[0-9]+(\.[0-9]+)+$ ]]; then printf '%s' "$out"; fi
}

blacklist_nouveau() {
  local conf="${HOST_ROOT}/etc/modprobe.d/blacklist-nouveau.conf"
  printf 'blacklist nouveau\noptions nouveau modeset=0\n' >"$TEMP_DIR/blacklist-nouveau.conf"
  install_file "$TEMP_DIR/blacklist-nouveau.conf" "$conf" 0644
  if [[ "$FILE_CHANGED" == 1 ]]; then
    log "blacklisted nouveau in $conf; rebuilding the initramfs"
    if [[ "$PKG_FAMILY" == apt ]]; then
      as_root update-initramfs -u
    else
      as_root dracut --force
    fi
  fi
}

# driver_package: Ubuntu's package for this branch and kernel module flavour.
driver_package() {
  if [[ "$KERNEL_MODULES" == open ]]; then
    echo "nvidia-driver-${DRIVER_BRANCH}-server-open"
  else
    echo "nvidia-driver-${DRIVER_BRANCH}-server"
  fi
}

# branch_installed: true when the requested branch's packages are installed (maybe not loaded).
branch_installed() {
  if [[ "$PKG_FAMILY" == apt ]]; then
    package_installed "$(driver_package)"
  else
    [[ "$(rpm -q --qf '%{VERSION}\n' nvidia-driver 2>/dev/null || true)" == "${DRIVER_BRANCH}".* ]]
  fi
}

install_apt() {
  local status=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "apt-get update failed (exit $status)" \
    "fix the apt sources on the host (see the output above), then run pulumi up again"
  pkg_install "$(driver_package)"
}

install_dnf() {
  local arch repo_os stream status=0
  arch="$(uname -m)"
  [[ "$arch" == aarch64 ]] && arch=sbsa
  if [[ "$OS_ID" == fedora ]]; then repo_os="fedora${OS_MAJOR}"; else repo_os="rhel${OS_MAJOR}"; fi
  download "https://developer.download.nvidia.com/compute/cuda/repos/${repo_os}/${arch}/cuda-${repo_os}.repo" \
    "$TEMP_DIR/cuda.repo"
  install_file "$TEMP_DIR/cuda.repo" "${HOST_ROOT}/etc/yum.repos.d/cuda-${repo_os}.repo" 0644
  if [[ "$KERNEL_MODULES" == open ]]; then stream="${DRIVER_BRANCH}-open"; else stream="${DRIVER_BRANCH}-dkms"; fi
  as_root dnf module enable -y "nvidia-driver:${stream}" || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "enabling module stream nvidia-driver:${stream} failed" \
    "if another stream is enabled run 'dnf module reset -y nvidia-driver' on the host, then run pulumi up again"
  pkg_install "kernel-devel-$(uname -r)" kernel-headers
  pkg_install nvidia-driver nvidia-driver-cuda
}

# reboot_or_stop: the driver is installed but not loaded.
reboot_or_stop() {
  if [[ "$REBOOT" == if-needed ]]; then
    log "the NVIDIA ${DRIVER_BRANCH} driver is installed; rebooting now (REBOOT=if-needed)"
    printf 'REBOOTING: run pulumi up again once the host is back\n' >&2
    as_root systemctl reboot || die "$EXIT_REBOOT_REQUIRED" "systemctl reboot failed" \
      "reboot the host by hand, then run pulumi up again"
    exit "$EXIT_REBOOTING"
  fi
  die "$EXIT_REBOOT_REQUIRED" "the NVIDIA ${DRIVER_BRANCH} driver is installed but not loaded: the host needs a reboot" \
    "reboot the host (sudo systemctl reboot), then run pulumi up again; or set REBOOT=if-needed to let pulumi reboot it"
}

do_install() {
  [[ "$DRIVER_BRANCH" =~ ^[0-9]{3,4}$ ]] || die "$EXIT_BAD_PARAMS" \
    "DRIVER_BRANCH must be a driver branch such as 580, got '${DRIVER_BRANCH}'" "fix the profile's driver branch"
  [[ "$KERNEL_MODULES" =~ ^(proprietary|open)$ ]] || die "$EXIT_BAD_PARAMS" \
    "KERNEL_MODULES must be proprietary or open, got '${KERNEL_MODULES}'" "fix the profile's kernel modules"
  [[ "$REBOOT" =~ ^(never|if-needed)$ ]] || die "$EXIT_BAD_PARAMS" \
    "REBOOT must be never or if-needed, got '${REBOOT}'" "fix the stack's reboot setting"
  detect_os
  local version
  version="$(driver_version)"
  if [[ "${version%%.*}" == "$DRIVER_BRANCH" ]]; then
    log "NVIDIA driver $version (branch $DRIVER_BRANCH) already works; nothing to do"
    printf '%s\n' "$version"
    return 0
  fi
  if [[ "$OS_ID" == debian ]]; then
    die "$EXIT_UNSUPPORTED_OS" "installing the driver on Debian ${OS_VERSION_ID} is not automated (no -server driver packages)" \
      "install the ${DRIVER_BRANCH} driver by hand (NVIDIA's CUDA repository for debian${OS_MAJOR}), reboot, and use driver action 'verify'"
  fi
  require_root
  make_temp_dir
  if branch_installed; then
    log "the ${DRIVER_BRANCH} driver is installed but nvidia-smi reports '${version:-no working driver}'"
    reboot_or_stop
  fi
  log "installing the NVIDIA ${DRIVER_BRANCH} driver (${KERNEL_MODULES} kernel modules)"
  blacklist_nouveau
  if [[ "$PKG_FAMILY" == apt ]]; then install_apt; else install_dnf; fi
  version="$(driver_version)"
  if [[ "${version%%.*}" == "$DRIVER_BRANCH" ]]; then
    log "NVIDIA driver $version works without a reboot"
    printf '%s\n' "$version"
    return 0
  fi
  reboot_or_stop
}

main() {
  DRIVER_ACTION="${DRIVER_ACTION:-verify}"
  DRIVER_BRANCH="${DRIVER_BRANCH:-}"
  KERNEL_MODULES="${KERNEL_MODULES:-proprietary}"
  REBOOT="${REBOOT:-never}"
  case "$DRIVER_ACTION" in
    skip) log "DRIVER_ACTION=skip: leaving the NVIDIA driver alone" ;;
    verify)
      local version
      version="$(driver_version)"
      [[ -n "$version" ]] || die "$EXIT_DRIVER" "nvidia-smi failed: the NVIDIA driver is not working" \
        "run nvidia-smi on the host to see why; install the driver (driver action 'install') or reboot after an install"
      log "NVIDIA driver $version works"
      printf '%s\n' "$version"
      ;;
    install) do_install ;;
    *) die "$EXIT_BAD_PARAMS" "DRIVER_ACTION must be install, verify or skip, got '${DRIVER_ACTION}'" \
      "fix the stack's driver action" ;;
  esac
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
