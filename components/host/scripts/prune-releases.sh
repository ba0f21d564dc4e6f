#!/usr/bin/env bash
# Remove the stack's old release images from the Docker host, keeping the newest KEEP releases.
#
# A release is every image of the stack's repositories whose tag is `<release>` or `<release>-<suffix>`,
# `<release>` being `<profile>-<12 hex>` (components/docker/image.py release_tag: the service image, its
# stages `<tag>-<stage>`, other sources' images `<repository>-<service>:<tag>`); a tag of another form (a
# hand-made `latest`, a team's own) is never touched. Releases are ordered by their newest image's
# creation time (`docker image inspect .Created`, RFC 3339 UTC, to the second). Kept, besides the newest KEEP:
#   - RELEASE, what the stack runs now (the built release or the pinned tag);
#   - every release one of whose images a container uses, running or stopped (`docker ps -a`).
# The rest is untagged with `docker image rm` (never forced: an image another tag or a container still
# holds stays). A failed removal is a warning, not a failure: the deploy it follows has succeeded.
#
# Environment:
#   REPOSITORIES   space-separated repositories, as the stack names its images (`nlp-backend`,
#                  `ghcr.io/team/app`, `nlp-backend-frontend`)
#   KEEP           how many releases to keep, >= 1 (image.keepReleases)
#   RELEASE        the release the stack runs now (kept whatever its age); empty: none of this form
# stdout: one line, `prune-releases: kept N release(s): ...; removed M image tag(s)`.
#
# Exit codes: 0 ok (also: nothing to remove, a removal refused), 19 bad parameters, 17 docker failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPOSITORIES="${REPOSITORIES:-}"
KEEP="${KEEP:-}"
RELEASE="${RELEASE:-}"
RELEASE_RE='^(.*-[0-9a-f]{12})(-[A-Za-z0-9_.-]+)?$'

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix image.keepReleases or the stack's images and run pulumi up again"
}

[[ "$KEEP" =~ ^[1-9][0-9]{0,3}$ ]] || bad "KEEP must be a whole number >= 1, got '${KEEP}'"
[[ -n "$REPOSITORIES" ]] || bad "REPOSITORIES is empty"
for repository in $REPOSITORIES; do
  [[ "$repository" =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || bad "not a repository name: '${repository}'"
done

# release TAG: the release a tag belongs to (empty when the tag is not a release's).
release() {
  if [[ "$1" =~ $RELEASE_RE ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  fi
}

declare -A keep_release=()
if [[ -n "$RELEASE" ]]; then
  [[ "$RELEASE" =~ $RELEASE_RE ]] || bad "RELEASE is not a release tag (<profile>-<12 hex>): '${RELEASE}'"
  keep_release["$RELEASE"]=1
fi

# The image ids containers use, running or stopped.
if ! containers="$(docker ps -aq --no-trunc)"; then
  die "$EXIT_RUNTIME" "docker ps failed" "check that the deploy user can use Docker (docker group)"
fi
declare -A used=()
for id in $containers; do
  image_id="$(docker container inspect --format '{{.Image}}' "$id" 2>/dev/null || true)"
  if [[ -n "$image_id" ]]; then
    used["$image_id"]=1
  fi
done

# Every release image: "<created> <release> <ref>", and each release's newest creation time.
declare -A newest=()
refs=()
for repository in $REPOSITORIES; do
  if ! tags="$(docker image ls --format '{{.Tag}}' "$repository")"; then
    die "$EXIT_RUNTIME" "docker image ls $repository failed" "check the Docker engine on the host"
  fi
  for tag in $tags; do
    name="$(release "$tag")"
    [[ -n "$name" ]] || continue
    ref="$repository:$tag"
    image_id="" created=""
    read -r image_id created < <(docker image inspect --format '{{.Id}} {{.Created}}' "$ref" || true) || true
    [[ -n "$image_id" ]] || continue
    created="${created:0:19}"  # 2025-01-05T10:00:00: whole seconds (RFC 3339 trims a fraction's zeros)
    if [[ -n "${used[$image_id]:-}" ]]; then
      keep_release["$name"]=1
    fi
    if [[ "$created" > "${newest[$name]:-}" ]]; then
      newest["$name"]="$created"
    fi
    refs+=("$name $ref")
  done
done

# The newest KEEP releases.
count=0
while read -r _ name; do
  [[ -n "$name" ]] || continue
  if (( count < KEEP )); then
    keep_release["$name"]=1
  fi
  count=$((count + 1))
done < <(for name in "${!newest[@]}"; do printf '%s %s\n' "${newest[$name]}" "$name"; done | sort -r)

removed=0
for entry in "${refs[@]+"${refs[@]}"}"; do
  name="${entry%% *}"
  ref="${entry#* }"
  [[ -z "${keep_release[$name]:-}" ]] || continue
  if docker image rm "$ref" >/dev/null 2>&1; then
    log "removed $ref (release $name)"
    removed=$((removed + 1))
  else
    printf 'WARNING: could not remove %s; left as it is\n' "$ref" >&2
  fi
done

kept="$(for name in "${!keep_release[@]}"; do printf '%s\n' "$name"; done | sort | tr '\n' ' ')"
printf 'prune-releases: kept %s release(s): %s; removed %s image tag(s)\n' \
  "${#keep_release[@]}" "${kept% }" "$removed"
