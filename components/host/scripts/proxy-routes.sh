#!/usr/bin/env bash
# Point the stack's reverse proxy (Caddy) at a service's current copy, or take the service's route away.
#
# The route is one file, ROUTES_DIR/SERVICE.caddy inside the proxy container, which the main Caddyfile
# imports (components/docker/proxy.py writes both texts). It is written atomically (a temporary file, then
# mv), then `caddy reload` loads it gracefully: requests in flight finish on the old upstream. The reload
# is retried while the proxy's admin endpoint is not up yet (the container just started); a reload Caddy
# refuses puts the previous route file back (Caddy keeps running the previous config) and fails.
#
# Environment:
#   PROXY_CONTAINER  the proxy container's name
#   SERVICE          the service: its route file is ROUTES_DIR/SERVICE.caddy
#   ROUTE            the route file's text. ACTION=remove takes the file away only while it still holds
#                    exactly this text (a newer copy's route is left alone); empty: whatever it holds
#   ACTION           set (default) | remove. remove succeeds when the proxy container does not exist or
#                    is stopped.
#   ROUTES_DIR       the routes directory inside the proxy (default /tmp/gpu-deploy-routes)
#   CONFIG           the main Caddyfile inside the proxy (default /etc/caddy/Caddyfile)
#   CADDY            the caddy binary inside the proxy (default /tmp/caddy)
#   WAIT_S           how long to retry the reload while the admin endpoint is not up (default 60)
#   POLL_S           seconds between two tries (default 1)
#
# Exit codes: 0 ok, 19 bad parameters, 23 the route could not be written or loaded.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix the route's parameters (components/docker/proxy.py) and run pulumi up again"
}

failed() {
  die "$EXIT_PROXY_ROUTE" "$1" "$2"
}

# write_route TEXT: ROUTES_DIR/SERVICE.caddy holds TEXT (a temporary file the import glob skips, then mv).
write_route() {
  # The single quotes are meant: the proxy's own shell expands $1 and $2.
  # shellcheck disable=SC2016
  printf '%s' "$1" | docker exec -i "$PROXY" sh -c \
    'mkdir -p "$1" && cat >"$1/.$2.tmp" && mv -f "$1/.$2.tmp" "$1/$2.caddy"' sh "$DIR" "$SERVICE"
}

# remove_route: ROUTES_DIR/SERVICE.caddy is gone.
remove_route() {
  docker exec "$PROXY" rm -f "$DIR/$SERVICE.caddy"
}

# reload: `caddy reload`, retried while the proxy is starting; OUTPUT holds Caddy's answer.
OUTPUT=""
reload() {
  local deadline=$((SECONDS + WAIT))
  while true; do
    if OUTPUT="$(docker exec "$PROXY" "$CADDY" reload --config "$CONFIG" --adapter caddyfile 2>&1)"; then
      return 0
    fi
    case "$OUTPUT" in
      *"connection refused"* | *"is restarting"* | *"is not running"*)
        if ((SECONDS < deadline)); then
          sleep "$POLL"
          continue
        fi
        ;;
    esac
    return 1
  done
}

main() {
  local action="${ACTION:-set}" route="${ROUTE:-}" file had=0 previous=""
  PROXY="${PROXY_CONTAINER:-}"
  DIR="${ROUTES_DIR:-/tmp/gpu-deploy-routes}"
  CONFIG="${CONFIG:-/etc/caddy/Caddyfile}"
  CADDY="${CADDY:-/tmp/caddy}"
  WAIT="${WAIT_S:-60}"
  POLL="${POLL_S:-1}"
  [[ "$PROXY" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || bad "PROXY_CONTAINER must be a container name, got '$PROXY'"
  [[ "${SERVICE:-}" =~ ^[a-z0-9][a-z0-9_.-]*$ ]] || bad "SERVICE must be a service name, got '${SERVICE:-}'"
  [[ "$action" == set || "$action" == remove ]] || bad "ACTION must be set or remove, got '$action'"
  [[ "$action" == remove || -n "$route" ]] || bad "ACTION=set needs ROUTE, the route file's text"
  [[ "$DIR" == /* && "$CONFIG" == /* && "$CADDY" == /* ]] || bad "ROUTES_DIR, CONFIG and CADDY are absolute paths"
  [[ "$WAIT" =~ ^[0-9]+$ ]] || bad "WAIT_S must be a whole number of seconds, got '$WAIT'"
  [[ "$POLL" =~ ^[0-9]+(\.[0-9]+)?$ ]] || bad "POLL_S must be a number of seconds, got '$POLL'"
  file="$DIR/$SERVICE.caddy"

  local running
  running="$(docker container inspect --format '{{.State.Running}}' "$PROXY" 2>/dev/null)" || running=absent
  if [[ "$running" != true ]]; then
    # A proxy that is gone, or stopped by a handover (its service stops first now, and Pulumi deletes the
    # proxy at the end of this update, after this route): nothing routes through it any more.
    if [[ "$action" == remove ]]; then
      log "$SERVICE: the proxy $PROXY is not running ($running), so neither is its route"
      return 0
    fi
  fi
  if [[ "$running" == absent ]]; then
    failed "the proxy container $PROXY does not exist, so $SERVICE's route cannot be set" \
      "run pulumi up again: the proxy is created before any route"
  fi
  if docker exec "$PROXY" test -f "$file"; then
    had=1
    previous="$(docker exec "$PROXY" cat "$file" && echo x)" ||
      failed "reading $file in $PROXY failed" "check the proxy container (docker logs $PROXY), then run pulumi up again"
    previous="${previous%x}"
  fi

  if [[ "$action" == remove ]]; then
    if ((had == 0)); then
      log "$SERVICE: no route in $PROXY"
      return 0
    fi
    if [[ -n "$route" && "$previous" != "$route" ]]; then
      log "$SERVICE: the route in $PROXY is a newer copy's: left as it is"
      return 0
    fi
    remove_route || failed "removing $file in $PROXY failed" "check the proxy container (docker logs $PROXY)"
  else
    write_route "$route" ||
      failed "writing $file in $PROXY failed" "check the proxy container (docker logs $PROXY), then run pulumi up again"
  fi

  if ! reload; then
    if ((had == 1)); then write_route "$previous" || true; else remove_route || true; fi
    failed "caddy reload of $SERVICE's route in $PROXY failed: ${OUTPUT//$'\n'/ }" \
      "read the message above (the route file is back as it was, Caddy still serves the previous config), then run pulumi up again"
  fi
  log "$SERVICE: route ${action} done in $PROXY, Caddy reloaded"
  echo "proxy-routes: $SERVICE: $action"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
