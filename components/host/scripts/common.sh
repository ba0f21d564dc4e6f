#!/usr/bin/env bash
# Shared functions for the host provisioning scripts in this directory.
#
# Each script sources this file when run from disk; components/host/shell.py inlines it in
# place of the `source` line, so the text sent over SSH (`bash -s` on stdin) is self-contained.
#
# Common environment:
#   HOST_ROOT  prefix for every file path the scripts read or write (default: empty = the real
#              root). Only the tests set it.
#   PRIVILEGES root (default) | unprivileged (provision.privileges): unprivileged runs everything as the
#              deploy user, never through sudo; a step that needs root fails with exit 11 instead
#
# Exit codes (shared by every script; each script's header lists the ones it uses):
#   0   success (including "nothing to do")
#   10  unsupported operating system
#   11  needs root or passwordless sudo (`sudo -n`)
#   12  download or signature/fingerprint verification failed
#   13  package installation failed
#   14  NVIDIA driver not working (nvidia-smi failed)
#   15  reboot required and REBOOT=never: reboot, then run `pulumi up` again
#   16  rebooting now (REBOOT=if-needed): run `pulumi up` again once the host is back
#   17  container runtime configuration or restart failed
#   18  GPU container check failed
#   19  bad parameters (environment variables)
#   20  NVIDIA Container Toolkit not working (nvidia-ctk failed)
#   21  a runner copied to the host is not safe to run (run-verified.sh: owner, mode or content)
#   22  the GPU memory a service needs is not free in time (gpu-memory-gate.sh)
#   23  the reverse proxy's route could not be written or loaded (proxy-routes.sh)
#   24  a container holding the reverse proxy's ports could not be stopped or removed (claim-ports.sh)

# The EXIT_* codes, FILE_CHANGED and OS_* are read by the scripts that source this file.
# shellcheck disable=SC2034
set -euo pipefail

readonly EXIT_UNSUPPORTED_OS=10
readonly EXIT_NEEDS_ROOT=11
readonly EXIT_DOWNLOAD=12
readonly EXIT_PACKAGE=13
readonly EXIT_DRIVER=14
readonly EXIT_REBOOT_REQUIRED=15
readonly EXIT_REBOOTING=16
readonly EXIT_RUNTIME=17
readonly EXIT_GPU_CONTAINER=18
readonly EXIT_BAD_PARAMS=19
readonly EXIT_TOOLKIT=20
readonly EXIT_GPU_MEMORY=22
readonly EXIT_PROXY_ROUTE=23
readonly EXIT_PORT_CLAIM=24

HOST_ROOT="${HOST_ROOT:-}"
HOST_ROOT="${HOST_ROOT%/}"

# log MESSAGE...: progress on stderr, so stdout carries only results.
log() {
  printf '==> %s\n' "$*" >&2
}

# die CODE WHAT NEXT: print `ERROR: WHAT` and `NEXT: NEXT` on stderr and exit with CODE.
die() {
  local code="$1" what="$2" next="$3"
  printf 'ERROR: %s\n' "$what" >&2
  printf 'NEXT: %s\n' "$next" >&2
  exit "$code"
}

# unprivileged: true when the stack deploys without root (PRIVILEGES=unprivileged); exit 19 on another value.
unprivileged() {
  case "${PRIVILEGES:-root}" in
    root) return 1 ;;
    unprivileged) return 0 ;;
    *) die "$EXIT_BAD_PARAMS" "PRIVILEGES must be root or unprivileged, got '${PRIVILEGES}'" \
      "fix the stack's provision.privileges" ;;
  esac
}

# require_root: succeed when we are root or may use `sudo -n`; exit 11 otherwise, and always without
# root (PRIVILEGES=unprivileged), naming what an administrator has to do.
require_root() {
  if unprivileged; then
    die "$EXIT_NEEDS_ROOT" "this step needs root, and user $(id -un) deploys without it (provision.privileges: unprivileged)" \
      "have an administrator do it (the plan lists what is left to an administrator), or set provision.privileges: root for a user with passwordless sudo"
  fi
  if [[ "$(id -u)" == 0 ]]; then
    return 0
  fi
  if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
    die "$EXIT_NEEDS_ROOT" "this step needs root, and 'sudo -n' is not allowed for user $(id -un)" \
      "connect as root, or give this user passwordless sudo (NOPASSWD in /etc/sudoers.d/)"
  fi
}

# as_root COMMAND...: run COMMAND as root (directly, or through `sudo -n`); without root
# (PRIVILEGES=unprivileged) as the deploy user itself, never through sudo.
as_root() {
  if [[ "$(id -u)" == 0 ]] || unprivileged; then
    "$@"
  else
    sudo -n "$@"
  fi
}

# file_sum PATH: a checksum of PATH's content, or "absent".
file_sum() {
  if as_root test -e "$1"; then
    as_root sha256sum "$1" | cut -d' ' -f1
  else
    echo absent
  fi
}

# install_file SOURCE DEST MODE: copy SOURCE to DEST (creating parents) unless DEST already
# has the same content. Sets FILE_CHANGED=1 when it wrote, 0 otherwise.
FILE_CHANGED=0
install_file() {
  local source="$1" dest="$2" mode="$3"
  if as_root test -f "$dest" && as_root cmp -s "$source" "$dest"; then
    FILE_CHANGED=0
    return 0
  fi
  as_root install -D -m "$mode" "$source" "$dest"
  FILE_CHANGED=1
}

# make_temp_dir: a private temporary directory, removed when the script exits.
TEMP_DIR=""
make_temp_dir() {
  TEMP_DIR="$(mktemp -d)"
  trap 'rm -rf -- "$TEMP_DIR"' EXIT
}

# os_release_value KEY: the unquoted value of KEY in ${HOST_ROOT}/etc/os-release.
os_release_value() {
  sed -n "s/^$1=//p" "${HOST_ROOT}/etc/os-release" | head -n 1 | tr -d '"'"'"
}

# detect_os: set OS_ID, OS_VERSION_ID, OS_MAJOR and PKG_FAMILY (apt or dnf); exit 10 otherwise.
detect_os() {
  local file="${HOST_ROOT}/etc/os-release"
  if [[ ! -r "$file" ]]; then
    die "$EXIT_UNSUPPORTED_OS" "cannot read $file, so the operating system is unknown" \
      "use Ubuntu, Debian, RHEL, Rocky, AlmaLinux, Fedora or CentOS Stream"
  fi
  OS_ID="$(os_release_value ID)"
  OS_VERSION_ID="$(os_release_value VERSION_ID)"
  OS_MAJOR="${OS_VERSION_ID%%.*}"
  case "$OS_ID" in
    ubuntu | debian) PKG_FAMILY=apt ;;
    rhel | rocky | almalinux | fedora | centos) PKG_FAMILY=dnf ;;
    *)
      die "$EXIT_UNSUPPORTED_OS" \
        "unsupported operating system ID=${OS_ID:-unknown} VERSION_ID=${OS_VERSION_ID:-unknown}" \
        "use Ubuntu, Debian, RHEL, Rocky, AlmaLinux, Fedora or CentOS Stream, or provision this host by hand"
      ;;
  esac
  if [[ "$PKG_FAMILY" == dnf && "$OS_ID" != fedora && ! "$OS_MAJOR" =~ ^([8-9]|[1-9][0-9])$ ]]; then
    die "$EXIT_UNSUPPORTED_OS" "unsupported operating system ID=$OS_ID VERSION_ID=${OS_VERSION_ID:-unknown} (needs 8 or newer)" \
      "upgrade the host to a release with dnf (8 or newer), or provision it by hand"
  fi
  log "operating system: ID=$OS_ID VERSION_ID=$OS_VERSION_ID ($PKG_FAMILY family)"
}

# package_installed NAME: true when the package NAME is installed (dpkg or rpm database).
package_installed() {
  if [[ "$PKG_FAMILY" == apt ]]; then
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
  else
    rpm -q "$1" >/dev/null 2>&1
  fi
}

# pkg_install NAME...: install packages non-interactively; exit 13 on failure.
pkg_install() {
  local status=0
  if [[ "$PKG_FAMILY" == apt ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" || status=$?
  else
    as_root dnf install -y "$@" || status=$?
  fi
  if [[ "$status" != 0 ]]; then
    die "$EXIT_PACKAGE" "installing $* failed (exit $status)" \
      "read the package manager output above, fix the repository or disk problem, then run pulumi up again"
  fi
}

# download URL DEST: fetch URL over HTTPS into DEST; exit 12 on failure. Never piped into a shell.
download() {
  if ! curl -fsSL --proto '=https' --retry 3 -o "$2" "$1"; then
    die "$EXIT_DOWNLOAD" "downloading $1 failed" \
      "check that the host can reach $(printf '%s' "$1" | cut -d/ -f3) over HTTPS (proxy, DNS, firewall), then run pulumi up again"
  fi
}

# publishes NAME PORT...: true when the container NAME publishes one of the host ports (<port>/<protocol>);
# claim-ports.sh and gpu-memory-gate.sh use it.
publishes() {
  local name="$1" bindings binding key host
  shift
  # HostConfig.PortBindings ("<container port>/<protocol>" -> host ports): what the container asked
  # for, kept while it is stopped too.
  bindings="$(docker container inspect --format \
    '{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{$p}}={{.HostPort}} {{end}}{{end}}' \
    "$name" 2>/dev/null)" || return 1
  for binding in $bindings; do
    key="${binding%%=*}"
    host="${binding#*=}"
    if [[ -n "$host" && " $* " == *" $host/${key#*/} "* ]]; then
      return 0
    fi
  done
  return 1
}
