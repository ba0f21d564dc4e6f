#!/usr/bin/env bash
# Install or verify the NVIDIA Container Toolkit (nvidia-ctk, nvidia-container-runtime).
#
# Environment:
#   TOOLKIT_ACTION           install | verify | skip (default verify)
#                            install: does nothing when nvidia-container-toolkit is installed.
#                            verify: `nvidia-ctk --version` must work.
#   TOOLKIT_KEY_FINGERPRINT  pinned fingerprint of NVIDIA's libnvidia-container signing key (apt)
#                            (default C95B321B61E88C1809C4F759DDCAE044F796ECB0)
#   HOST_ROOT                file path prefix (tests only; see common.sh)
#
# Exit codes: 0 ok, 10 unsupported OS, 11 needs root/sudo, 12 download or key fingerprint
#   check failed, 13 package install failed, 19 bad parameters, 20 nvidia-ctk not working.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly REPO_URL=https://nvidia.github.io/libnvidia-container
readonly KEYRING=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg

# primary_fingerprint FILE: the primary key fingerprint(s) of an armored key file.
primary_fingerprint() {
  GNUPGHOME="$TEMP_DIR/gnupg" gpg --batch --show-keys --with-colons "$1" 2>/dev/null |
    awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { print $10; want = 0 }'
}

add_apt_repository() {
  local expected found
  expected="$(printf '%s' "$TOOLKIT_KEY_FINGERPRINT" | tr -d ' ' | tr '[:lower:]' '[:upper:]')"
  mkdir -m 0700 "$TEMP_DIR/gnupg"
  download "$REPO_URL/gpgkey" "$TEMP_DIR/gpgkey"
  found="$(primary_fingerprint "$TEMP_DIR/gpgkey" || true)"
  if [[ "$found" != "$expected" ]]; then
    die "$EXIT_DOWNLOAD" \
      "the key from $REPO_URL/gpgkey has fingerprint '${found:-none}', expected '$expected'" \
      "do not trust this key; check NVIDIA's container toolkit install guide and update TOOLKIT_KEY_FINGERPRINT only if NVIDIA rotated the key"
  fi
  GNUPGHOME="$TEMP_DIR/gnupg" gpg --batch --yes --dearmor -o "$TEMP_DIR/keyring.gpg" "$TEMP_DIR/gpgkey"
  install_file "$TEMP_DIR/keyring.gpg" "${HOST_ROOT}${KEYRING}" 0644

  download "$REPO_URL/stable/deb/nvidia-container-toolkit.list" "$TEMP_DIR/list"
  sed "s#deb https://#deb [signed-by=${KEYRING}] https://#g" "$TEMP_DIR/list" >"$TEMP_DIR/signed.list"
  grep -q "signed-by=${KEYRING}" "$TEMP_DIR/signed.list" ||
    die "$EXIT_DOWNLOAD" "the downloaded nvidia-container-toolkit.list has no 'deb https://' line to sign" \
      "compare $REPO_URL/stable/deb/nvidia-container-toolkit.list with NVIDIA's install guide"
  install_file "$TEMP_DIR/signed.list" "${HOST_ROOT}/etc/apt/sources.list.d/nvidia-container-toolkit.list" 0644

  local status=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "apt-get update failed (exit $status)" \
    "fix the apt sources on the host (see the output above), then run pulumi up again"
}

add_dnf_repository() {
  download "$REPO_URL/stable/rpm/nvidia-container-toolkit.repo" "$TEMP_DIR/toolkit.repo"
  install_file "$TEMP_DIR/toolkit.repo" "${HOST_ROOT}/etc/yum.repos.d/nvidia-container-toolkit.repo" 0644
}

verify() {
  local version
  version="$(nvidia-ctk --version 2>/dev/null | head -n 1)" || die "$EXIT_TOOLKIT" \
    "nvidia-ctk --version failed: the NVIDIA Container Toolkit is not working" \
    "install it (toolkit action 'install') or run nvidia-ctk --version on the host to see why"
  log "NVIDIA Container Toolkit works: $version"
}

main() {
  TOOLKIT_ACTION="${TOOLKIT_ACTION:-verify}"
  TOOLKIT_KEY_FINGERPRINT="${TOOLKIT_KEY_FINGERPRINT:-C95B321B61E88C1809C4F759DDCAE044F796ECB0}"
  case "$TOOLKIT_ACTION" in
    skip) log "TOOLKIT_ACTION=skip: leaving the NVIDIA Container Toolkit alone" ;;
    verify) verify ;;
    install)
      detect_os
      if package_installed nvidia-container-toolkit; then
        log "nvidia-container-toolkit is already installed; nothing to change"
      else
        require_root
        make_temp_dir
        if [[ "$PKG_FAMILY" == apt ]]; then add_apt_repository; else add_dnf_repository; fi
        pkg_install nvidia-container-toolkit
      fi
      verify
      ;;
    *) die "$EXIT_BAD_PARAMS" "TOOLKIT_ACTION must be install, verify or skip, got '${TOOLKIT_ACTION}'" \
      "fix the stack's toolkit action" ;;
  esac
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
