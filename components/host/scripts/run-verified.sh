#!/usr/bin/env bash
# Run a program copied to the GPU host only if it is exactly what was copied, in a place only the
# deploy user can write. Runs as `bash -c "<this text>" run-verified COMMAND...` (stdin stays the
# program's: the smoke runner reads its checks there).
#
# Environment:
#   RUNNER_DIR    where the files are: relative to $HOME (pulumi-command's CopyToRemote writes a relative
#                 remotePath there, over SFTP) or absolute
#   RUNNER_FILES  newline-separated "SHA256  NAME" lines (sha256sum's format) for the files in RUNNER_DIR
# Before COMMAND runs in RUNNER_DIR: RUNNER_DIR and every directory above it up to $HOME (or /) must be
# owned by this user or root, not a symlink and not writable by group or others (RUNNER_DIR itself is made
# 0700); each file must be a regular file owned by this user, not writable by others, with that SHA256.
# Another account on the host can then neither plant nor swap what the deploy user runs.
#
# Exit codes: 0 and COMMAND's own codes once verified; 19 bad parameters; 21 the files are not safe to run.
#
# Self-contained (it does not source common.sh): it travels on every runner's command line.
set -euo pipefail

readonly EXIT_BAD_PARAMS=19 EXIT_UNSAFE_RUNNER=21

# die CODE WHAT NEXT: as common.sh's.
die() {
  printf 'ERROR: %s\nNEXT: %s\n' "$2" "$3" >&2
  exit "$1"
}

unsafe() {
  die "$EXIT_UNSAFE_RUNNER" "$1" \
    "remove ${dir:-the runner directory} (it is re-copied by the next pulumi up), check who else can write there, and run pulumi up again"
}

# safe_dir DIR: owned by us or root, a real directory, not group- or world-writable.
safe_dir() {
  local path="$1" owner mode
  [[ ! -L "$path" && -d "$path" ]] || unsafe "$path is not a directory (or is a symlink)"
  read -r owner mode < <(stat -c '%u %a' "$path")
  [[ "$owner" == "$me" || "$owner" == 0 ]] || unsafe "$path belongs to uid $owner, not to $(id -un) or root"
  (((8#$mode & 8#022) == 0)) || unsafe "$path is writable by group or others (mode $mode)"
}

main() {
  local files="${RUNNER_FILES:-}" sum name owner mode actual up
  dir="${RUNNER_DIR:-}"
  me="$(id -u)"
  [[ -n "$dir" && "/$dir/" != */../* ]] || die "$EXIT_BAD_PARAMS" "RUNNER_DIR must be a path without '..', got '$dir'" \
    "this is a gpu-deploy bug: report it"
  (($# > 0)) || die "$EXIT_BAD_PARAMS" "no command to run" "this is a gpu-deploy bug: report it"
  [[ "$dir" == /* ]] || dir="$HOME/$dir"

  chmod 0700 "$dir" 2>/dev/null || unsafe "$dir cannot be made private (chmod 0700 failed)"
  up="$dir"
  while :; do
    safe_dir "$up"
    [[ "$up" != "$HOME" && "$up" != / ]] || break
    up="$(dirname "$up")"
  done

  while read -r sum name; do
    [[ -n "$sum" ]] || continue
    [[ "$sum" =~ ^[0-9a-f]{64}$ && "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "$EXIT_BAD_PARAMS" \
      "RUNNER_FILES line '$sum $name' is not 'SHA256  NAME'" "this is a gpu-deploy bug: report it"
    [[ -f "$dir/$name" && ! -L "$dir/$name" ]] || unsafe "$dir/$name is missing or not a regular file"
    read -r owner mode < <(stat -c '%u %a' "$dir/$name")
    [[ "$owner" == "$me" ]] || unsafe "$dir/$name belongs to uid $owner, not to $(id -un)"
    (((8#$mode & 8#022) == 0)) || unsafe "$dir/$name is writable by group or others (mode $mode)"
    actual="$(sha256sum <"$dir/$name" | cut -d' ' -f1)"
    [[ "$actual" == "$sum" ]] || unsafe "$dir/$name is not the file that was copied (sha256 $actual, expected $sum)"
  done <<<"$files"

  cd "$dir"
  exec "$@"
}

main "$@"
