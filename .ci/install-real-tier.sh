#!/usr/bin/env bash
# What the real-engine tier (`make real`, tests/real) needs on a Debian machine, installed with apt.
# Idempotent: nothing is fetched when every program is already there (apt-get update only otherwise).
# Run as root. The Debian services it installs (docker, ssh) are not used by the tier, which starts
# its own dockerd and sshd processes; they are left as the packages set them up.
set -euo pipefail

PACKAGES=(docker.io openssh-server openssh-client debootstrap debian-archive-keyring sudo iptables iproute2)
# program the tier runs -> the package that provides it
declare -A PROVIDER=(
  [dockerd]=docker.io [containerd]=docker.io [docker]=docker.io
  [sshd]=openssh-server [ssh]=openssh-client [sftp]=openssh-client [ssh-keygen]=openssh-client
  [debootstrap]=debootstrap [sudo]=sudo [visudo]=sudo [iptables]=iptables [ip]=iproute2
  [apt-get]=apt [dpkg-deb]=dpkg
)

if [[ ${EUID} -ne 0 ]]; then
  echo "ERROR: $0 installs packages: run it as root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "ERROR: $0 needs apt-get (Debian or Ubuntu)" >&2
  exit 1
fi

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"
missing=()
for program in "${!PROVIDER[@]}"; do
  command -v "${program}" >/dev/null || missing+=("${program} (${PROVIDER[${program}]})")
done
# debootstrap checks the bookworm archive's signature with it (absent on Ubuntu)
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=("the Debian archive keyring (debian-archive-keyring)")

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "real-engine tier: every program is installed"
else
  echo "real-engine tier: missing ${missing[*]}: installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi

# The rollout tests' proxy stand-in runs Debian's caddy binary, fetched once with `apt-get download caddy`
# (tests/real/standins.py caches it): apt's package lists must know the package.
if ! apt-cache show caddy >/dev/null 2>&1; then
  echo "real-engine tier: apt's package lists lack caddy: apt-get update"
  apt-get update
fi

getent group docker >/dev/null || groupadd --system docker
install -d -m 0755 /run/sshd
