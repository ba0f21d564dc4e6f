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
#   DRIVER_HOLD     yes | no (default yes): hold the driver packages of the branch that runs (verify) or
#                   was installed (install) at their installed versions, so that unattended-upgrades,
#                   `apt upgrade` or dnf-automatic cannot replace the library under the loaded kernel
#                   module ("Failed to initialize NVML: Driver/library version mismatch"). Needs root
#                   only when something is not held yet.
#   HOST_ROOT       file path prefix (tests only; see common.sh)
#
# Packages: Ubuntu  nvidia-driver-<branch>-server[-open]
#           Debian  not automated: exits 10 for install (verify and skip work)
#           dnf     NVIDIA's CUDA repository, module stream nvidia-driver:<branch>-dkms or
#                   <branch>-open (DKMS comes from EPEL on RHEL-like systems).
#
# Hold: apt     `apt-mark hold` (unattended-upgrades and `apt upgrade` honour it).
#       dnf     the branch's module stream keeps updates on the branch but still moves within it
#               (580.65.06 -> 580.82.07 is exactly the drift), so NVIDIA's version-locking advice is
#               followed on top: `dnf versionlock add` (python3-dnf-plugin-versionlock on dnf 4; built
#               into dnf 5), locks kept in /etc/dnf/plugins/versionlock.list or /etc/dnf/versionlock.toml.
#       Only NVIDIA driver packages are held (by name, and by the branch in their version or, for
#       Ubuntu's per-kernel module packages, in their name): never the container toolkit nor anything
#       else. Installing another branch first releases the holds of the NVIDIA driver packages of other
#       branches. To update within the branch by hand: unhold, upgrade, reboot, then `pulumi up` (which
#       holds again).
#
# Exit codes: 0 ok, 10 unsupported OS, 11 needs root/sudo (install, or holding packages not held yet),
#   12 download failed, 13 package install (or hold) failed, 14 driver not working (verify),
#   15 reboot required and REBOOT=never (reboot, then run `pulumi up` again), also for a
#   driver/library version mismatch on verify, 16 rebooting now (run `pulumi up` again when the host
#   is back; the SSH session may drop before this code arrives), 19 bad parameters.
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

# loaded_module_version: the loaded kernel module's version from /proc/driver/nvidia/version ("NVRM
# version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  ..." or "... Open Kernel Module for x86_64
# 580.65.06 ..."), or nothing when no NVIDIA module is loaded.
loaded_module_version() {
  local file="${HOST_ROOT}/proc/driver/nvidia/version" line word
  local -a words
  [[ -r "$file" ]] || return 0
  line="$(grep -m 1 '^NVRM version:' "$file" 2>/dev/null)" || return 0
  read -ra words <<<"${line#*Kernel Module}"
  for word in "${words[@]}"; do
    if [[ "$word" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
      printf '%s' "$word"
      return 0
    fi
  done
}

# library_versions: the version of each installed NVML library file (libnvidia-ml.so.580.65.06), one a line.
library_versions() {
  local dir path version
  for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    for path in "${HOST_ROOT}${dir}"/libnvidia-ml.so.*; do
      version="${path##*/libnvidia-ml.so.}"
      if [[ -e "$path" && "$version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then printf '%s\n' "$version"; fi
    done
  done | sort -u
}

# version_mismatch: true when the loaded kernel module is not the installed library's version (the
# packages were replaced under the running driver: nvidia-smi then fails with "Driver/library version
# mismatch"); sets MISMATCH_LOADED (580.65.06) and MISMATCH_INSTALLED (libnvidia-ml.so.580.82.07).
MISMATCH_LOADED=""
MISMATCH_INSTALLED=""
version_mismatch() {
  local loaded libraries library
  loaded="$(loaded_module_version)"
  libraries="$(library_versions)"
  if [[ -z "$loaded" || -z "$libraries" ]] || grep -qxF -- "$loaded" <<<"$libraries"; then
    return 1
  fi
  MISMATCH_LOADED="$loaded"
  MISMATCH_INSTALLED=""
  while read -r library; do
    MISMATCH_INSTALLED+="${MISMATCH_INSTALLED:+, }libnvidia-ml.so.${library}"
  done <<<"$libraries"
}

# --- holding the driver packages ---------------------------------------------------------------------

# NVIDIA driver package names (Ubuntu, Debian and NVIDIA's CUDA repositories; RHEL-like and Fedora). A
# name alone is not enough: the version must be on a driver branch too (see driver_package_branch).
readonly NVIDIA_DRIVER_NAMES='^(nvidia-|libnvidia-|libcuda[0-9]|libnvcuvid[0-9]|libnvoptix[0-9]|xserver-xorg-video-nvidia|xorg-x11-nvidia|xorg-x11-drv-nvidia|kmod-nvidia|firmware-nvidia|cuda-drivers)'
# NVIDIA packages that are not the driver (versions 1.x and 2.x): never held, never released.
readonly NOT_DRIVER_NAMES='^(nvidia-container|libnvidia-container|nvidia-docker)'

# driver_package_branch NAME VERSION: set PKG_BRANCH to the driver branch of an NVIDIA driver package
# (580 for libnvidia-compute-580-server 580.65.06-0ubuntu0.22.04.1, nvidia-driver 3:580.65.06 or
# linux-modules-nvidia-580-server-6.8.0-60-generic, Ubuntu's per-kernel module, versioned by the
# kernel), or to nothing for any other package.
PKG_BRANCH=""
driver_package_branch() {
  local name="${1%%:*}" version="${2#*:}"
  PKG_BRANCH=""
  if [[ "$name" =~ $NOT_DRIVER_NAMES ]]; then return 0; fi
  if [[ "$name" =~ ^linux-(modules|objects|signatures)-nvidia-([0-9]{3,4})(-server)?(-open)?-[0-9] ]]; then
    PKG_BRANCH="${BASH_REMATCH[2]}"
  elif [[ "$name" =~ $NVIDIA_DRIVER_NAMES && "$version" =~ ^([0-9]{3,4})\. ]]; then
    PKG_BRANCH="${BASH_REMATCH[1]}"
  fi
}

# apt_packages: "name<TAB>version<TAB>status" for every package dpkg knows.
apt_packages() {
  dpkg-query -W -f='${binary:Package}\t${Version}\t${Status}\n' 2>/dev/null || true
}

# rpm_packages: "name<TAB>version<TAB>release" for every installed package, sorted.
rpm_packages() {
  rpm -qa --qf '%{NAME}\t%{VERSION}\t%{RELEASE}\n' 2>/dev/null | sort || true
}

# dnf_locks: "name<TAB>version-release" for each dnf versionlock entry: dnf 4 keeps
# "name-epoch:version-release.*" lines in /etc/dnf/plugins/versionlock.list ("!" lines are excludes),
# dnf 5 keeps name = "..." and value = "epoch:version-release" in /etc/dnf/versionlock.toml.
dnf_locks() {
  local list="${HOST_ROOT}/etc/dnf/plugins/versionlock.list" toml="${HOST_ROOT}/etc/dnf/versionlock.toml"
  if [[ -r "$list" ]]; then
    sed -nE 's/\.\*$//; s/^([^!#[:space:]][^[:space:]]*)-([0-9]+:)?([^-:[:space:]]+-[^-[:space:]]+)$/\1\t\3/p' "$list"
  fi
  if [[ -r "$toml" ]]; then
    awk -F'"' '/^[[:space:]]*name[[:space:]]*=/ { name = $2 }
      /^[[:space:]]*value[[:space:]]*=/ && name != "" { v = $2; sub(/^[0-9]+:/, "", v); print name "\t" v }' "$toml"
  fi
}

# branch_packages BRANCH: fill HELD (already held) and TO_HOLD with the installed NVIDIA BRANCH driver
# packages: names for apt, name-version-release for dnf.
HELD=()
TO_HOLD=()
branch_packages() {
  local branch="$1" name version field locks
  HELD=()
  TO_HOLD=()
  if [[ "$PKG_FAMILY" == apt ]]; then
    while IFS=$'\t' read -r name version field; do
      [[ "$field" == *" ok installed" ]] || continue
      driver_package_branch "$name" "$version"
      [[ "$PKG_BRANCH" == "$branch" ]] || continue
      if [[ "$field" == hold\ * ]]; then HELD+=("$name"); else TO_HOLD+=("$name"); fi
    done < <(apt_packages)
  else
    locks="$(dnf_locks)"
    while IFS=$'\t' read -r name version field; do
      driver_package_branch "$name" "$version"
      [[ "$PKG_BRANCH" == "$branch" ]] || continue
      if grep -qxF -- "${name}"$'\t'"${version}-${field}" <<<"$locks"; then
        HELD+=("${name}-${version}-${field}")
      else
        TO_HOLD+=("${name}-${version}-${field}")
      fi
    done < <(rpm_packages)
  fi
}

# hold_needs_root BRANCH COMMAND: succeed as root or with `sudo -n`; exit 11 naming what an
# administrator can run instead.
hold_needs_root() {
  if unprivileged; then
    die "$EXIT_NEEDS_ROOT" "holding the NVIDIA $1 driver packages needs root, and user $(id -un) deploys without it (provision.privileges: unprivileged)" \
      "have an administrator run 'sudo $2' once, or turn the hold off (provision.driverHold: false)"
  fi
  if [[ "$(id -u)" == 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
    return 0
  fi
  die "$EXIT_NEEDS_ROOT" "holding the NVIDIA $1 driver packages needs root, and 'sudo -n' is not allowed for user $(id -un)" \
    "have an administrator run 'sudo $2' once, or connect as root or with passwordless sudo, or turn the hold off (provision.driverHold: false)"
}

# ensure_versionlock: dnf 5 has `versionlock` built in; dnf 4 needs python3-dnf-plugin-versionlock.
ensure_versionlock() {
  if [[ "$(dnf --version 2>/dev/null | head -n 1)" == dnf5* ]] || package_installed python3-dnf-plugin-versionlock; then
    return 0
  fi
  log "installing python3-dnf-plugin-versionlock for dnf versionlock"
  pkg_install python3-dnf-plugin-versionlock
}

# hold_driver BRANCH: hold the installed NVIDIA BRANCH driver packages at their installed versions
# (DRIVER_HOLD=yes); idempotent: what is held already is only reported.
hold_driver() {
  local branch="$1" command status=0
  if [[ "$DRIVER_HOLD" == no ]]; then
    log "DRIVER_HOLD=no (provision.driverHold: false): the NVIDIA driver packages are not held; an upgrade may replace them under running containers"
    return 0
  fi
  if [[ "$PKG_FAMILY" == apt ]]; then command="apt-mark hold"; else command="dnf versionlock add"; fi
  branch_packages "$branch"
  if [[ "${#HELD[@]}" == 0 && "${#TO_HOLD[@]}" == 0 ]]; then
    log "no installed package of the NVIDIA ${branch} driver (installed with NVIDIA's .run file?): nothing to hold"
    return 0
  fi
  if [[ "${#HELD[@]}" != 0 ]]; then
    log "already held (${command%% *}): ${HELD[*]}"
  fi
  [[ "${#TO_HOLD[@]}" != 0 ]] || return 0
  hold_needs_root "$branch" "$command ${TO_HOLD[*]}"
  if [[ "$PKG_FAMILY" == apt ]]; then
    as_root apt-mark hold "${TO_HOLD[@]}" >&2 || status=$?
  else
    ensure_versionlock
    as_root dnf versionlock add "${TO_HOLD[@]}" >&2 || status=$?
  fi
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "holding the NVIDIA ${branch} driver packages failed ($command, exit $status)" \
    "read the output above and run '$command ${TO_HOLD[*]}' by hand, or turn the hold off (provision.driverHold: false); then run pulumi up again"
  log "held the NVIDIA ${branch} driver packages at their installed versions ($command): ${TO_HOLD[*]}"
}

# release_other_branches: before installing DRIVER_BRANCH, drop the holds on NVIDIA driver packages of
# other branches (this script's, or an administrator's): they would block the change of branch.
release_other_branches() {
  local name version field status=0
  local -a release=()
  if [[ "$PKG_FAMILY" == apt ]]; then
    while IFS=$'\t' read -r name version field; do
      [[ "$field" == "hold ok installed" ]] || continue
      driver_package_branch "$name" "$version"
      if [[ -n "$PKG_BRANCH" && "$PKG_BRANCH" != "$DRIVER_BRANCH" ]]; then release+=("$name"); fi
    done < <(apt_packages)
  else
    while IFS=$'\t' read -r name version; do
      driver_package_branch "$name" "$version"
      if [[ -n "$PKG_BRANCH" && "$PKG_BRANCH" != "$DRIVER_BRANCH" ]]; then release+=("$name"); fi
    done < <(dnf_locks | sort -u)
  fi
  [[ "${#release[@]}" != 0 ]] || return 0
  log "releasing the holds on NVIDIA driver packages of other branches: ${release[*]}"
  if [[ "$PKG_FAMILY" == apt ]]; then
    as_root apt-mark unhold "${release[@]}" >&2 || status=$?
  else
    as_root dnf versionlock delete "${release[@]}" >&2 || status=$?
  fi
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "releasing the holds on ${release[*]} failed (exit $status)" \
    "release them by hand (apt-mark unhold, or dnf versionlock delete), then run pulumi up again"
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
    log "NVIDIA driver $version (branch $DRIVER_BRANCH) already works; nothing to install"
    hold_driver "$DRIVER_BRANCH"
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
    if version_mismatch; then
      log "driver/library version mismatch: the loaded kernel module is ${MISMATCH_LOADED}, the installed library ${MISMATCH_INSTALLED}"
    fi
    hold_driver "$DRIVER_BRANCH"
    reboot_or_stop
  fi
  log "installing the NVIDIA ${DRIVER_BRANCH} driver (${KERNEL_MODULES} kernel modules)"
  release_other_branches
  blacklist_nouveau
  if [[ "$PKG_FAMILY" == apt ]]; then install_apt; else install_dnf; fi
  hold_driver "$DRIVER_BRANCH"
  version="$(driver_version)"
  if [[ "${version%%.*}" == "$DRIVER_BRANCH" ]]; then
    log "NVIDIA driver $version works without a reboot"
    printf '%s\n' "$version"
    return 0
  fi
  reboot_or_stop
}

# do_verify: nvidia-smi must work; the packages of the branch that runs are held (DRIVER_HOLD=yes) on a
# supported OS. A driver/library version mismatch is told apart from a driver that does not work.
do_verify() {
  local version
  version="$(driver_version)"
  if [[ -z "$version" ]] && version_mismatch; then
    die "$EXIT_REBOOT_REQUIRED" "driver/library version mismatch: the loaded NVIDIA kernel module is ${MISMATCH_LOADED} but the installed library is ${MISMATCH_INSTALLED} (the driver packages were replaced under the running driver)" \
      "reboot the host (sudo systemctl reboot) to load the installed driver, or reinstall the ${MISMATCH_LOADED} driver packages; then run pulumi up again, which holds them"
  fi
  [[ -n "$version" ]] || die "$EXIT_DRIVER" "nvidia-smi failed: the NVIDIA driver is not working" \
    "run nvidia-smi on the host to see why; install the driver (driver action 'install') or reboot after an install"
  log "NVIDIA driver $version works"
  if [[ "$DRIVER_HOLD" == yes ]] && ! (detect_os) 2>/dev/null; then
    log "cannot hold the driver packages on this operating system (no supported /etc/os-release): not held"
  else
    if [[ "$DRIVER_HOLD" == yes ]]; then detect_os; fi
    hold_driver "${version%%.*}"
  fi
  printf '%s\n' "$version"
}

main() {
  DRIVER_ACTION="${DRIVER_ACTION:-verify}"
  DRIVER_BRANCH="${DRIVER_BRANCH:-}"
  KERNEL_MODULES="${KERNEL_MODULES:-proprietary}"
  REBOOT="${REBOOT:-never}"
  DRIVER_HOLD="${DRIVER_HOLD:-yes}"
  [[ "$DRIVER_HOLD" =~ ^(yes|no)$ ]] || die "$EXIT_BAD_PARAMS" \
    "DRIVER_HOLD must be yes or no, got '${DRIVER_HOLD}'" "fix the stack's driver hold setting"
  case "$DRIVER_ACTION" in
    skip) log "DRIVER_ACTION=skip: leaving the NVIDIA driver alone" ;;
    verify) do_verify ;;
    install) do_install ;;
    *) die "$EXIT_BAD_PARAMS" "DRIVER_ACTION must be install, verify or skip, got '${DRIVER_ACTION}'" \
      "fix the stack's driver action" ;;
  esac
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
