#!/usr/bin/env bash
# Create service directories (model caches, data) with a fixed owner and mode. Never deletes.
#
# Environment:
#   ROOT       the stack's root: every DIR must be inside it, and nothing outside it is created,
#              re-owned or re-moded; no path component from ROOT down to a DIR may be a symlink (a
#              container user could plant one in its own directory to reach outside), so none is followed
#   DIRS       newline-separated absolute directory paths (blank lines ignored); relative paths,
#              '..' components and '/' itself are refused before anything is created
#   OWNER      "uid:gid", numeric (e.g. 1001:1001)
#   MODE       octal mode of each listed directory (default 0750); world-writable modes are refused
#   PRIVILEGES unprivileged (provision.privileges): run as the deploy user, never through sudo; then OWNER
#              must be that user's own uid (and one of its groups), ROOT or the nearest directory above it
#              that exists must be the user's (its home), and what the directories hold must be the
#              user's already: each is checked first, and fails with exit 11 naming it
#   HOST_ROOT  file path prefix (tests only; see common.sh)
# Parents that do not exist yet are created root-owned with mode 0755; existing parents are untouched.
# What a listed directory already holds is made the owner's (see own_contents); symlinks are never followed.
#
# Exit codes: 0 ok, 11 needs root/sudo (unprivileged: a directory or owner only root could make), 19 bad
#   parameters.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix the directory list in the stack configuration and run pulumi up again"
}

# no_links_below ROOT DIR: refuse when ROOT or a component between it and DIR is a symlink, before
# anything is created there (install -d and chmod would follow it out of the root).
no_links_below() {
  local root="$1" dir="$2" step rest part
  local -a parts
  step="$root"
  rest="${dir#"$root"}"
  as_root test ! -L "${HOST_ROOT}${step}" || bad "$step is a symlink: the stack's root must be a real directory"
  IFS=/ read -r -a parts <<<"${rest#/}"
  for part in "${parts[@]}"; do
    [[ -n "$part" ]] || continue
    step="$step/$part"
    if as_root test -L "${HOST_ROOT}${step}"; then
      die "$EXIT_BAD_PARAMS" "$step is a symlink (to $(as_root readlink "${HOST_ROOT}${step}")): it is not followed" \
        "replace it with a real directory (a container may have planted it), then run pulumi up again"
    fi
  done
}

# may_prepare_unprivileged ROOT UID GID: without root the directories can only be the deploy user's, in a
# directory it owns: OWNER must be the user, and ROOT (or the nearest directory above it that exists) the
# user's, so that everything made below it is too. The plan cannot know owners: they are checked here.
may_prepare_unprivileged() {
  local root="$1" uid="$2" gid="$3" user base
  user="$(id -un)"
  if [[ "$uid" != "$(id -u)" || " $(id -G) " != *" $gid "* ]]; then
    die "$EXIT_NEEDS_ROOT" "the directories' owner $uid:$gid is not user $user ($(id -u):$(id -g)), and only root can give a directory to another user (provision.privileges: unprivileged)" \
      "run the services that mount them as $(id -u):$(id -g) (services.<name>.user), or have an administrator create them owned by $uid:$gid"
  fi
  base="$root"
  while [[ -n "$base" && ! -e "${HOST_ROOT}${base}" ]]; do base="${base%/*}"; done
  base="${base:-/}"
  if [[ "$(stat -c %u "${HOST_ROOT}${base}")" != "$(id -u)" ]]; then
    die "$EXIT_NEEDS_ROOT" "the stack's root $root is in $base, owned by $(stat -c %U "${HOST_ROOT}${base}"), not by $user, so without root nothing can be made there (provision.privileges: unprivileged)" \
      "set target.root to a directory under $user's home, or have an administrator create $root owned by $user"
  fi
}

# own_contents PATH UID GID LABEL: everything already inside PATH (a database left by an older setup, say)
# becomes UID:GID and owner-writable, and nothing stays world-writable. find never follows symlinks (-P),
# `chown -h` changes a link itself, and chmod skips links, so a link planted inside cannot reach out;
# -xdev stays on this file system.
own_contents() {
  local path="$1" uid="$2" gid="$3" label="$4" owned moded foreign
  if unprivileged; then  # only root can take what another user owns
    foreign="$(find "$path" -xdev -mindepth 1 ! -uid "$uid" -print -quit)"
    [[ -z "$foreign" ]] || die "$EXIT_NEEDS_ROOT" "${foreign#"$HOST_ROOT"} belongs to $(stat -c %U "$foreign"), not to $(id -un), and only root can make it the service's (provision.privileges: unprivileged)" \
      "have an administrator run 'sudo chown -R $uid:$gid $label' once, then run pulumi up again"
  fi
  owned="$(as_root find "$path" -xdev -mindepth 1 \( ! -uid "$uid" -o ! -gid "$gid" \) \
    -exec chown -h "$uid:$gid" {} + -print | wc -l)"
  moded="$(as_root find "$path" -xdev -mindepth 1 ! -type l \
    \( \( -type d ! -perm -u=rwx \) -o \( ! -type d ! -perm -u=rw \) -o -perm -o=w \) \
    -exec chmod u+rwX,o-w {} + -print | wc -l)"
  if ((owned + moded > 0)); then
    log "$label: re-owned $owned existing entries to $uid:$gid, made $moded owner-writable and not world-writable"
  fi
}

main() {
  local owner="${OWNER:-}" mode="${MODE:-0750}" dir
  local -a dirs=()
  [[ "$owner" =~ ^[0-9]+:[0-9]+$ ]] || bad "OWNER must be numeric uid:gid (e.g. 1001:1001), got '${owner}'"
  [[ "$mode" =~ ^0?[0-7]{3}$ ]] || bad "MODE must be an octal mode such as 0750, got '${mode}'"
  mode="$(printf '%o' "$((8#$mode))")"
  (((8#$mode & 8#002) == 0)) || bad "MODE $mode would make the directories world-writable; use 0750 or 0755"

  while IFS= read -r dir; do
    [[ -n "$dir" ]] || continue
    [[ "$dir" == /* ]] || bad "directory '$dir' is not an absolute path"
    [[ "/$dir/" != */../* ]] || bad "directory '$dir' contains '..'"
    [[ "$dir" =~ [^/] ]] || bad "refusing to manage '/' itself"
    dirs+=("$dir")
  done <<<"${DIRS:-}"
  ((${#dirs[@]} > 0)) || bad "DIRS lists no directories"
  local root="${ROOT:-}"
  [[ "$root" == /* && "$root" =~ [^/] && "/$root/" != */../* ]] || bad "ROOT must be an absolute directory other than /, got '${root}'"
  root="${root%/}"
  for dir in "${dirs[@]}"; do
    [[ "$dir" == "$root" || "$dir" == "$root"/* ]] || bad "directory '$dir' is outside the stack's root $root"
  done

  local uid="${owner%%:*}" gid="${owner##*:}" path current
  if unprivileged; then may_prepare_unprivileged "$root" "$uid" "$gid"; else require_root; fi
  umask 022
  for dir in "${dirs[@]}"; do
    path="${HOST_ROOT}${dir}"
    no_links_below "$root" "$dir"
    if as_root test -e "$path" && ! as_root test -d "$path"; then
      bad "'$dir' exists and is not a directory"
    fi
    current="$(as_root stat -c '%u:%g %a' "$path" 2>/dev/null || true)"
    if unprivileged && [[ -n "$current" && "${current%%:*}" != "$uid" ]]; then
      die "$EXIT_NEEDS_ROOT" "$dir belongs to uid ${current%%:*}, not to $(id -un), and only root can make it the service's (provision.privileges: unprivileged)" \
        "have an administrator run 'sudo chown -R $uid:$gid $dir' once, then run pulumi up again"
    fi
    if [[ "$current" == "$uid:$gid $mode" ]]; then
      log "$dir: already $uid:$gid mode $mode"
    else
      as_root install -d -o "$uid" -g "$gid" -m "$mode" "$path"
      log "$dir: now $uid:$gid mode $mode"
    fi
    own_contents "$path" "$uid" "$gid" "$dir"
  done
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
