#!/usr/bin/env bash
# Free the host ports the stack's reverse proxy is about to publish: stop every other container
# of this stack that publishes one of them, before the proxy's container is created.
#
# Those are the fixed-name copies of services that stopped first in the previous deployment and roll with
# zero downtime from now on: the proxy takes their ports over, and Pulumi deletes a replaced container only
# at the end of the update, after the proxy was created. So a service switching to zero downtime is
# interrupted once, from this stop until its first zero-downtime copy is healthy and routed; every later
# rollout of it is without interruption.
#
# Environment:
#   STACK_LABEL   label=value every container of this stack carries (io.gpu-deploy.stack=<stack>)
#   KEEP          the proxy container's name: never stopped here
#   PORTS         comma-separated host ports the proxy publishes, as <port>/<protocol>
#   STOP_GRACE_S  seconds `docker stop -t` gives a container before SIGKILL (default 30)
# stdout: one line, `claim-ports: PORTS free (stopped: NAME ...)`.
#
# Exit codes: 0 ok, 19 bad parameters, 24 a container holding the ports could not be listed, stopped or
# removed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() {
  die "$EXIT_BAD_PARAMS" "$1" "fix the claim's parameters (components/docker/proxy.py) and run pulumi up again"
}

failed() {
  die "$EXIT_PORT_CLAIM" "$1" "$2"
}

# release NAME GRACE: stop NAME, which frees its ports; one already gone is fine.
release() {
  local name="$1" grace="$2" out
  log "stopping $name, which publishes a port the proxy takes over (grace ${grace} s)"
  if ! out="$(docker stop -t "$grace" "$name" 2>&1)" && [[ "$out" != *"No such container"* ]]; then
    failed "stopping $name failed: $out" "stop it by hand (docker stop $name), then run pulumi up again"
  fi
  # stopped, not removed: Pulumi deletes it itself at the end of the update (see gpu-memory-gate.sh)
}

main() {
  local stack="${STACK_LABEL:-}" keep="${KEEP:-}" wanted="${PORTS:-}" grace="${STOP_GRACE_S:-30}"
  local names name
  local -a ports=() stopped=()
  [[ "$stack" =~ ^[A-Za-z0-9][A-Za-z0-9._/-]*=[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] ||
    bad "STACK_LABEL must be label=value, got '$stack'"
  [[ "$keep" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || bad "KEEP must be the proxy container's name, got '$keep'"
  [[ "$wanted" =~ ^[0-9]+/(tcp|udp|sctp)(,[0-9]+/(tcp|udp|sctp))*$ ]] ||
    bad "PORTS lists <port>/<protocol> comma-separated, got '$wanted'"
  [[ "$grace" =~ ^[0-9]+$ ]] || bad "STOP_GRACE_S is a whole number of seconds, got '$grace'"
  IFS=, read -r -a ports <<<"$wanted"

  # running ones only: a stopped container holds no port (and is Pulumi's to remove)
  if ! names="$(docker ps --no-trunc --filter "label=$stack" --format '{{.Names}}' 2>&1)"; then
    failed "listing the containers labeled $stack failed: $names" \
      "check the Docker engine (docker ps), then run pulumi up again"
  fi
  for name in $names; do
    if [[ "$name" != "$keep" ]] && publishes "$name" "${ports[@]}"; then
      release "$name" "$grace"
      stopped+=("$name")
    fi
  done
  echo "claim-ports: ${ports[*]} free (stopped: ${stopped[*]:-nothing})"
}

# stdin is the script itself under `bash -s`: keep child processes from reading it.
main "$@" </dev/null
