#!/usr/bin/env bash
# Pin a GPU host's SSH key in a known_hosts file on the operator's machine.
#
# Environment:
#   KNOWN_HOSTS_FILE  file to write (its directory is created with mode 0700; the file is 0600)
#   SSH_HOST          host name or IP address
#   SSH_PORT          SSH port (default 22)
#   HOST_KEY          "TYPE BASE64 [comment]", e.g. "ssh-ed25519 AAAA..."; the comment is dropped
# Writes one line, `host TYPE KEY` (port 22) or `[host]:port TYPE KEY`, replacing earlier lines
# for the same host and port; prints the file's path on stdout. Re-running changes nothing.
#
# Exit codes: 0 ok, 19 bad parameters.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix the SSH settings of this host in the stack configuration"
}

main() {
  local file="${KNOWN_HOSTS_FILE:-}" host="${SSH_HOST:-}" port="${SSH_PORT:-22}" key="${HOST_KEY:-}"
  [[ -n "$file" ]] || bad "KNOWN_HOSTS_FILE is empty"
  [[ "$host" =~ ^[A-Za-z0-9._:-]+$ ]] || bad "SSH_HOST must be a host name or IP address, got '${host}'"
  if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
    bad "SSH_PORT must be 1-65535, got '${port}'"
  fi
  port="$((10#$port))"
  [[ "$key" =~ ^[^[:cntrl:]]+$ ]] || bad "HOST_KEY must be one line without control characters"
  local type blob _
  read -r type blob _ <<<"$key" || true
  [[ "$type" =~ ^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com)$ &&
    "$blob" =~ ^[A-Za-z0-9+/]+=*$ ]] || bad "HOST_KEY must look like 'ssh-ed25519 AAAA...' (ssh-keyscan output without the host)"

  local marker="$host"
  [[ "$port" == 22 ]] || marker="[$host]:$port"
  local line="$marker $type $blob"

  local dir
  dir="$(dirname "$file")"
  if [[ ! -d "$dir" ]]; then
    (umask 077 && mkdir -p "$dir")
  fi
  if [[ -f "$file" ]] && grep -qxF -- "$line" "$file" && [[ "$(awk -v m="$marker" '$1 == m' "$file" | wc -l)" == 1 ]]; then
    log "$marker is already pinned in $file"
  else
    local tmp
    tmp="$(mktemp "$file.XXXXXX")"
    if [[ -f "$file" ]]; then
      awk -v m="$marker" '$1 != m' "$file" >"$tmp"
    fi
    printf '%s\n' "$line" >>"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$file"
    log "pinned the $type key of $marker in $file"
  fi
  chmod 0600 "$file"
  printf '%s\n' "$file"
}

main "$@" </dev/null
