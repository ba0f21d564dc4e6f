#!/usr/bin/env bash
# Install or verify the NVIDIA Container Toolkit (nvidia-ctk, nvidia-container-runtime).
#
# Environment:
#   TOOLKIT_ACTION           install | verify | skip (default verify)
#                            install: does nothing when nvidia-container-toolkit is installed.
#                            verify: `nvidia-ctk --version` must work.
#   TOOLKIT_KEY_FINGERPRINT  pinned fingerprint of NVIDIA's libnvidia-container signing key (apt and dnf)
#                            (default C95B321B61E88C1809C4F759DDCAE044F796ECB0)
#   HOST_ROOT                file path prefix (tests only; see common.sh)
#
# Nothing downloaded is trusted as it comes: the apt list and the dnf .repo file are read, checked
# and written anew. Every source they name must lie under REPO_URL; every apt `deb` line written
# carries signed-by=KEYRING; the dnf repository is written with gpgcheck=1, repo_gpgcheck=1 and
# the verified key as a local file. An option that weakens verification is refused (exit 12).
#
# Exit codes: 0 ok, 10 unsupported OS, 11 needs root/sudo, 12 download or key fingerprint
#   check failed, or the downloaded list/.repo weakens verification or names another host,
#   13 package install failed, 19 bad parameters, 20 nvidia-ctk not working.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly REPO_URL=https://nvidia.github.io/libnvidia-container
readonly KEYRING=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
readonly RPM_KEY=/etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit
readonly APT_LIST_URL="$REPO_URL/stable/deb/nvidia-container-toolkit.list"
readonly DNF_REPO_URL="$REPO_URL/stable/rpm/nvidia-container-toolkit.repo"
# apt options (sources.list(5)) that switch off or loosen signature, key or freshness checks: a list
# with any of them is refused, whatever the value.
readonly APT_WEAKENING_OPTIONS="trusted allow-insecure allow-weak allow-downgrade-to-insecure check-valid-until check-date valid-until-min valid-until-max date-max-future"
# A plain word of a source: no quoting, spaces, user@host, query or fragment; apt's $(ARCH) and
# dnf's $basearch are allowed.
# shellcheck disable=SC2016 # a regular expression, not an expansion
readonly PLAIN_WORD='^[A-Za-z0-9._~/$()+-]+$'

# primary_fingerprint FILE: the primary key fingerprint(s) of an armored key file.
primary_fingerprint() {
  GNUPGHOME="$TEMP_DIR/gnupg" gpg --batch --show-keys --with-colons "$1" 2>/dev/null |
    awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { print $10; want = 0 }'
}

# check_key_fingerprint URL FILE: exit 12 unless the key FILE (downloaded from URL) is the pinned one.
check_key_fingerprint() {
  local url="$1" file="$2" expected found
  expected="$(printf '%s' "$TOOLKIT_KEY_FINGERPRINT" | tr -d ' ' | tr '[:lower:]' '[:upper:]')"
  [[ -d "$TEMP_DIR/gnupg" ]] || mkdir -m 0700 "$TEMP_DIR/gnupg"
  found="$(primary_fingerprint "$file" || true)"
  if [[ "$found" != "$expected" ]]; then
    die "$EXIT_DOWNLOAD" \
      "the key from $url has fingerprint '${found:-none}', expected '$expected'" \
      "do not trust this key; check NVIDIA's container toolkit install guide and update TOOLKIT_KEY_FINGERPRINT only if NVIDIA rotated the key"
  fi
}

# nvidia_url VALUE: true when VALUE is one plain https URL under REPO_URL/, without `..`.
nvidia_url() {
  [[ "$1" == "$REPO_URL"/* && "$1" != *..* && "${1#https://}" =~ $PLAIN_WORD ]]
}

# refuse_list LINE_NUMBER TEXT WHY: exit 12 for a line of the downloaded apt list.
refuse_list() {
  die "$EXIT_DOWNLOAD" "line $1 of $APT_LIST_URL $3: '$2'" \
    "nothing was written; do not add this list by hand: compare it with NVIDIA's container toolkit install guide and check the host's network path to nvidia.github.io (proxy, DNS) before running pulumi up again"
}

# sign_apt_list IN OUT: NVIDIA's one-line apt list IN, written anew to OUT. Each `deb` line becomes
# `deb [signed-by=KEYRING arch=...] URI SUITE [COMPONENT...]`: of the line's options only a plain
# arch= is kept, signed-by is replaced by the pinned keyring, others are dropped. Comments and
# deb-src lines (NVIDIA publishes no sources) are dropped. Exit 12 on an option that weakens
# verification, a URI outside REPO_URL, a line that is not `deb`, or no `deb` line at all.
sign_apt_list() {
  local in="$1" out="$2" line type rest block opt key arch number=0 written=0
  local -a options words
  : >"$out"
  while IFS= read -r line || [[ -n "$line" ]]; do
    number=$((number + 1))
    line="${line%%#*}" # apt reads nothing from '#' on
    line="${line//$'\r'/}"
    [[ "$line" =~ ^[[:space:]]*$ ]] && continue
    [[ "$line" =~ ^[[:space:]]*(deb|deb-src)([[:space:]].*|\[.*)$ ]] ||
      refuse_list "$number" "$line" "is not a 'deb' or 'deb-src' line"
    type="${BASH_REMATCH[1]}"
    rest="${BASH_REMATCH[2]}"
    rest="${rest#"${rest%%[![:space:]]*}"}"
    block=""
    if [[ "$rest" == \[* ]]; then
      [[ "$rest" =~ ^\[([^]]*)\](.*)$ ]] || refuse_list "$number" "$line" "has an unclosed [option] block"
      block="${BASH_REMATCH[1]}"
      rest="${BASH_REMATCH[2]}"
    fi
    read -r -a options <<<"$block"
    read -r -a words <<<"$rest"
    arch=""
    for opt in "${options[@]}"; do
      [[ "$opt" =~ ^([A-Za-z]([A-Za-z-]*[A-Za-z])?)[+-]?=(.*)$ ]] ||
        refuse_list "$number" "$line" "has an option '$opt' that is not NAME=VALUE"
      key="${BASH_REMATCH[1],,}"
      if [[ " $APT_WEAKENING_OPTIONS " == *" $key "* ]]; then
        refuse_list "$number" "$line" "has the option '$opt', which weakens apt's signature checks"
      elif [[ "$opt" =~ ^arch=([a-z0-9][a-z0-9,-]*)$ ]]; then
        arch="${BASH_REMATCH[1]}"
      elif [[ "$key" == signed-by ]]; then
        [[ "$opt" == "signed-by=$KEYRING" ]] ||
          log "line $number of the downloaded list: replacing '$opt' with signed-by=$KEYRING"
      else
        log "line $number of the downloaded list: dropping the option '$opt'"
      fi
    done
    ((${#words[@]} >= 2)) || refuse_list "$number" "$line" "has no URI and suite"
    nvidia_url "${words[0]}" ||
      refuse_list "$number" "$line" "names the source '${words[0]}', which is not under $REPO_URL/"
    for opt in "${words[@]:1}"; do
      [[ "$opt" =~ $PLAIN_WORD ]] ||
        refuse_list "$number" "$line" "has a suite or component '$opt' that is not a plain word"
    done
    if [[ "$type" == deb-src ]]; then
      log "dropping line $number of the downloaded list: NVIDIA publishes no deb-src sources"
      continue
    fi
    printf 'deb [signed-by=%s%s] %s\n' "$KEYRING" "${arch:+ arch=$arch}" "${words[*]}" >>"$out"
    written=$((written + 1))
  done <"$in"
  ((written > 0)) || die "$EXIT_DOWNLOAD" "the downloaded $APT_LIST_URL has no 'deb' line to sign" \
    "compare $APT_LIST_URL with NVIDIA's install guide"
}

add_apt_repository() {
  download "$REPO_URL/gpgkey" "$TEMP_DIR/gpgkey"
  check_key_fingerprint "$REPO_URL/gpgkey" "$TEMP_DIR/gpgkey"
  download "$APT_LIST_URL" "$TEMP_DIR/list"
  sign_apt_list "$TEMP_DIR/list" "$TEMP_DIR/signed.list"
  GNUPGHOME="$TEMP_DIR/gnupg" gpg --batch --yes --dearmor -o "$TEMP_DIR/keyring.gpg" "$TEMP_DIR/gpgkey"
  install_file "$TEMP_DIR/keyring.gpg" "${HOST_ROOT}${KEYRING}" 0644
  install_file "$TEMP_DIR/signed.list" "${HOST_ROOT}/etc/apt/sources.list.d/nvidia-container-toolkit.list" 0644

  local status=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_PACKAGE" "apt-get update failed (exit $status)" \
    "fix the apt sources on the host (see the output above), then run pulumi up again"
}

# refuse_repo LINE_NUMBER TEXT WHY: exit 12 for a line of the downloaded .repo file.
refuse_repo() {
  die "$EXIT_DOWNLOAD" "line $1 of $DNF_REPO_URL $3: '$2'" \
    "nothing was written; do not add this .repo by hand: compare it with NVIDIA's container toolkit install guide and check the host's network path to nvidia.github.io (proxy, DNS) before running pulumi up again"
}

# dnf_bool VALUE: print 1 or 0 for a dnf boolean (1/0, yes/no, true/false, on/off), or nothing.
dnf_bool() {
  case "${1,,}" in
    1 | yes | true | on) echo 1 ;;
    0 | no | false | off) echo 0 ;;
  esac
}

# pin_dnf_repo IN OUT: NVIDIA's .repo file IN, written anew to OUT. Each section keeps its id,
# baseurl and enabled; gpgcheck=1, repo_gpgcheck=1, sslverify=1 and gpgkey=file://RPM_KEY are
# written whatever IN says; other keys are dropped. NVIDIA's own file has gpgcheck=0 (its packages
# are signed with a subkey that EL7's rpm could not check): that one is raised to 1. Exit 12 on
# repo_gpgcheck, localpkg_gpgcheck or sslverify off, a mirrorlist or metalink, a baseurl or gpgkey
# outside REPO_URL, a [main] section or a line it cannot read. Sets DNF_GPGKEY_URL to the key URL.
DNF_GPGKEY_URL=""
pin_dnf_repo() {
  local in="$1" out="$2" line key value bool section="" baseurl="" enabled=1 number=0 sections=" "
  : >"$out"
  flush_section() {
    [[ -n "$section" ]] || return 0
    [[ -n "$baseurl" ]] || die "$EXIT_DOWNLOAD" "the section [$section] of $DNF_REPO_URL has no baseurl" \
      "compare $DNF_REPO_URL with NVIDIA's install guide; nothing was written"
    printf '[%s]\nname=%s\nbaseurl=%s\nenabled=%s\ngpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://%s\nsslverify=1\n\n' \
      "$section" "$section" "$baseurl" "$enabled" "$RPM_KEY" >>"$out"
  }
  while IFS= read -r line || [[ -n "$line" ]]; do
    number=$((number + 1))
    line="${line//$'\r'/}"
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    [[ -z "$line" || "$line" == \#* || "$line" == \;* ]] && continue
    if [[ "$line" == \[* ]]; then
      [[ "$line" =~ ^\[([A-Za-z0-9._:-]+)\]$ ]] || refuse_repo "$number" "$line" "is not a plain [section] header"
      flush_section
      section="${BASH_REMATCH[1]}" baseurl="" enabled=1
      [[ "${section,,}" != main ]] || refuse_repo "$number" "$line" "would change dnf's global [main] settings"
      [[ "$sections" != *" $section "* ]] || refuse_repo "$number" "$line" "repeats the section [$section]"
      sections+="$section "
      continue
    fi
    [[ "$line" =~ ^([A-Za-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*)$ ]] ||
      refuse_repo "$number" "$line" "is not KEY=VALUE"
    [[ -n "$section" ]] || refuse_repo "$number" "$line" "comes before any [section]"
    key="${BASH_REMATCH[1],,}"
    key="${key//-/_}"
    value="${BASH_REMATCH[2]}"
    bool="$(dnf_bool "$value")"
    case "$key" in
      gpgcheck | pkg_gpgcheck)
        [[ -n "$bool" ]] || refuse_repo "$number" "$line" "has a $key that is not a boolean"
        [[ "$bool" == 1 ]] || log "[$section] of the downloaded .repo sets $key off: writing gpgcheck=1"
        ;;
      repo_gpgcheck | localpkg_gpgcheck | sslverify)
        [[ "$bool" == 1 ]] || refuse_repo "$number" "$line" "turns $key off, which weakens dnf's signature checks"
        ;;
      mirrorlist | metalink)
        refuse_repo "$number" "$line" "has a $key, which would fetch packages from hosts not under $REPO_URL/"
        ;;
      baseurl)
        nvidia_url "$value" || refuse_repo "$number" "$line" "names a baseurl that is not one URL under $REPO_URL/"
        baseurl="$value"
        ;;
      gpgkey)
        nvidia_url "$value" || refuse_repo "$number" "$line" "names a gpgkey that is not one URL under $REPO_URL/"
        [[ -z "$DNF_GPGKEY_URL" || "$DNF_GPGKEY_URL" == "$value" ]] ||
          refuse_repo "$number" "$line" "names a second gpgkey besides $DNF_GPGKEY_URL"
        DNF_GPGKEY_URL="$value"
        ;;
      enabled)
        [[ -n "$bool" ]] || refuse_repo "$number" "$line" "has an enabled that is not a boolean"
        enabled="$bool"
        ;;
      name) ;; # written as the section id
      *) log "[$section] of the downloaded .repo: dropping '$key'" ;;
    esac
  done <"$in"
  flush_section
  [[ "$sections" != " " ]] || die "$EXIT_DOWNLOAD" "the downloaded $DNF_REPO_URL has no [section]" \
    "compare $DNF_REPO_URL with NVIDIA's install guide"
  [[ -n "$DNF_GPGKEY_URL" ]] || die "$EXIT_DOWNLOAD" "the downloaded $DNF_REPO_URL names no gpgkey to check" \
    "compare $DNF_REPO_URL with NVIDIA's install guide; without a key under $REPO_URL/ nothing is written"
}

add_dnf_repository() {
  download "$DNF_REPO_URL" "$TEMP_DIR/toolkit.repo"
  pin_dnf_repo "$TEMP_DIR/toolkit.repo" "$TEMP_DIR/pinned.repo"
  download "$DNF_GPGKEY_URL" "$TEMP_DIR/gpgkey"
  check_key_fingerprint "$DNF_GPGKEY_URL" "$TEMP_DIR/gpgkey"
  install_file "$TEMP_DIR/gpgkey" "${HOST_ROOT}${RPM_KEY}" 0644
  local status=0
  as_root rpm --import "${HOST_ROOT}${RPM_KEY}" || status=$?
  [[ "$status" == 0 ]] || die "$EXIT_DOWNLOAD" "rpm --import ${HOST_ROOT}${RPM_KEY} failed (exit $status)" \
    "run 'rpm --import ${RPM_KEY}' on the host to see why, then run pulumi up again"
  install_file "$TEMP_DIR/pinned.repo" "${HOST_ROOT}/etc/yum.repos.d/nvidia-container-toolkit.repo" 0644
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
