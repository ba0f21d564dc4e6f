"""What the real-engine tier needs on this machine, as one line naming each missing piece."""

from __future__ import annotations

import os
import shutil

# (program, where it may live besides PATH, the Debian package that provides it)
PROGRAMS: tuple[tuple[str, str, str], ...] = (
    ("dockerd", "/usr/sbin/dockerd", "docker.io"),
    ("containerd", "/usr/bin/containerd", "docker.io"),
    ("docker", "/usr/bin/docker", "docker.io"),
    ("sshd", "/usr/sbin/sshd", "openssh-server"),
    ("ssh", "/usr/bin/ssh", "openssh-client"),
    ("sftp", "/usr/bin/sftp", "openssh-client"),
    ("ssh-keygen", "/usr/bin/ssh-keygen", "openssh-client"),
    ("debootstrap", "/usr/sbin/debootstrap", "debootstrap"),
    ("sudo", "/usr/bin/sudo", "sudo"),
    ("visudo", "/usr/sbin/visudo", "sudo"),
    ("ip", "/usr/sbin/ip", "iproute2"),
    ("useradd", "/usr/sbin/useradd", "passwd"),
    # the rollout tests' proxy stand-in: Debian's caddy binary (`apt-get download caddy`, `dpkg-deb -x`)
    ("apt-get", "/usr/bin/apt-get", "apt"),
    ("dpkg-deb", "/usr/bin/dpkg-deb", "dpkg"),
)

# (what, the file, the Debian package that provides it)
FILES: tuple[tuple[str, str, str], ...] = (
    (
        "the Debian archive keyring",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
)

INSTALLER = ".ci/install-real-tier.sh"


def find_program(name: str, fallback: str) -> str | None:
    """`name` on PATH, else at its Debian location (root's PATH may lack /usr/sbin)."""
    return shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)


def missing_requirements() -> str | None:
    """None when the tier can run here, else the one line that says exactly what it needs."""
    root = os.geteuid() == 0
    missing = [(name, package) for name, fallback, package in PROGRAMS if not find_program(name, fallback)]
    missing += [(what, package) for what, path, package in FILES if not os.path.isfile(path)]
    if root and not missing:
        return None
    what = ", ".join(f"{name} (apt-get install {package})" for name, package in missing)
    if not missing:
        head = "real-engine tier needs root"
    elif root:
        head = f"real-engine tier needs: {what}"
    else:
        head = f"real-engine tier needs root and: {what}"
    return f"{head}; run {INSTALLER} as root, then `make real` as root"
