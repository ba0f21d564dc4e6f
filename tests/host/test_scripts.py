"""Run the host provisioning scripts for real against a fake root and stub commands.

Every test executes exactly the text `script(name)` returns, as `bash -c command_line(env)` with
that text on stdin (what `command.remote.Command` does over SSH). HOST_ROOT points the scripts at
a temporary directory; a stub bin directory first on PATH records every call in calls.log and
keeps package/driver state in files, so installs, restarts and reboots are observable.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from components.host.shell import SCRIPTS_DIR, command_line, command_with_script, script, script_names
from tests.tools import dev_tool

FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
REAL_ID = shutil.which("id") or "/usr/bin/id"

OS_RELEASES = {
    "ubuntu22": 'ID=ubuntu\nVERSION_ID="22.04"\nID_LIKE=debian\n',
    "ubuntu24": 'ID=ubuntu\nVERSION_ID="24.04"\nID_LIKE=debian\n',
    "debian12": 'ID=debian\nVERSION_ID="12"\n',
    "rhel9": 'ID="rhel"\nVERSION_ID="9.4"\nID_LIKE="fedora"\n',
    "rocky9": 'ID="rocky"\nVERSION_ID="9.5"\nID_LIKE="rhel centos fedora"\n',
    "alpine": "ID=alpine\nVERSION_ID=3.20.3\n",
    "centos7": 'ID="centos"\nVERSION_ID="7"\n',
}
APT_OSES = ["ubuntu22", "ubuntu24", "debian12"]
DNF_OSES = ["rhel9", "rocky9"]

# Each stub logs "name argv..." to $CALLS_LOG, then behaves per STUB_* knobs and $STATE files.
STUB_HEAD = '#!/usr/bin/env bash\nset -u\necho "$(basename "$0") $*" >>"$CALLS_LOG"\n'
STUBS = {
    "sudo": """
[ "${STUB_SUDO_DENY:-0}" = 1 ] && { echo "sudo: a password is required" >&2; exit 1; }
[ "${1:-}" = -n ] && shift
exec "$@"
""",
    "id": f"""
if [ "${{1:-}}" = -u ] && [ -n "${{STUB_UID:-}}" ]; then echo "$STUB_UID"; exit 0; fi
if [ "${{1:-}}" = -un ] && [ -n "${{STUB_UID:-}}" ]; then echo deploy; exit 0; fi
exec {REAL_ID} "$@"
""",
    "curl": """
[ "${STUB_CURL_FAIL:-0}" = 1 ] && { echo "curl: (6) Could not resolve host" >&2; exit 6; }
out=/dev/stdout; url=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift 2 ;; --proto|--retry) shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac
done
case "$url" in
  */gpgkey) echo "-----BEGIN PGP PUBLIC KEY BLOCK-----" >"$out" ;;
  *.list) echo 'deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /' >"$out" ;;
  *.repo) printf '[stub-repo]\\nbaseurl=%s\\n' "$url" >"$out" ;;
  *) echo "curl: (22) 404" >&2; exit 22 ;;
esac
""",
    "gpg": """
case " $* " in
  *" --show-keys "*)
    printf 'pub:-:4096:1:DDCAE044F796ECB0:1:::-:::scESC::::::23::0:\\n'
    printf 'fpr:::::::::%s:\\n' "${STUB_GPG_FPR:-C95B321B61E88C1809C4F759DDCAE044F796ECB0}"
    printf 'sub:-:4096:1:0000000000000000:1:::::e::::::23:\\n'
    printf 'fpr:::::::::1111111111111111111111111111111111111111:\\n'
    ;;
  *" --dearmor "*)
    out=""; prev=""; for a in "$@"; do [ "$prev" = -o ] && out="$a"; prev="$a"; done
    { echo DEARMORED; cat "${!#}"; } >"$out"
    ;;
esac
""",
    "apt-get": """
[ "${STUB_APT_FAIL:-0}" = 1 ] && { echo "E: Unable to locate package" >&2; exit 100; }
cat >/dev/null  # a real apt-get may read stdin: it must not eat the script
if [ "${1:-}" = install ]; then
  for p in "$@"; do case "$p" in -*|install) ;; *) touch "$STATE/pkg-$p" ;; esac; done
fi
exit 0
""",
    "dnf": """
[ "${STUB_DNF_FAIL:-0}" = 1 ] && { echo "Error: Unable to find a match" >&2; exit 1; }
if [ "${1:-}" = install ]; then
  for p in "$@"; do case "$p" in -*|install) ;; *) touch "$STATE/pkg-$p" ;; esac; done
fi
if [ "${1:-}" = --version ]; then echo "${STUB_DNF_VERSION:-4.14.0}"; fi
if [ "${1:-}" = versionlock ]; then  # dnf 4's plugin: name-epoch:version-release.* lines
  [ "${STUB_VERSIONLOCK_FAIL:-0}" = 1 ] && { echo "Error: No such command: versionlock" >&2; exit 1; }
  lock="$HOST_ROOT/etc/dnf/plugins/versionlock.list"; mkdir -p "${lock%/*}"; touch "$lock"
  action="$2"; shift 2
  for spec in "$@"; do
    case "$action" in
      add) rel="${spec##*-}"; rest="${spec%-*}"; echo "Adding versionlock on: ${rest%-*}-3:${rest##*-}-$rel.*"
           echo "${rest%-*}-3:${rest##*-}-$rel.*" >>"$lock" ;;
      delete) grep -v "^$spec-[0-9]*:" "$lock" >"$lock.new" || true; mv "$lock.new" "$lock" ;;
    esac
  done
fi
exit 0
""",
    # The dpkg database: a $STATE/pkg-NAME file per installed package (its content the version, else
    # STUB_DEB_VERSION), $STATE/hold-NAME when it is held.
    "dpkg-query": """
if [ "$#" = 2 ] && [ "$1" = -W ]; then  # -W -f=FORMAT: every package, as install-driver.sh formats it
  for f in "$STATE"/pkg-*; do
    [ -e "$f" ] || continue
    p="${f##*/pkg-}"; v="$(cat "$f")"; s="install ok installed"
    [ -e "$STATE/hold-$p" ] && s="hold ok installed"
    printf '%s\t%s\t%s\n' "$p" "${v:-${STUB_DEB_VERSION:-580.65.06-0ubuntu0.22.04.1}}" "$s"
  done
  exit 0
fi
p="${!#}"
[ -e "$STATE/pkg-$p" ] && { echo "install ok installed"; exit 0; }
echo "dpkg-query: no packages found matching $p" >&2; exit 1
""",
    "apt-mark": """
[ "${STUB_APT_MARK_FAIL:-0}" = 1 ] && { echo "E: Can not write log" >&2; exit 100; }
action="$1"; shift
for p in "$@"; do
  case "$action" in
    hold) touch "$STATE/hold-$p"; echo "$p set on hold." ;;
    unhold) rm -f "$STATE/hold-$p"; echo "Canceled hold on $p." ;;
  esac
done
""",
    # The rpm database: $STATE/pkg-NAME files holding version-release (else STUB_RPM_VERSION-1.el9).
    "rpm": """
if [ "${1:-}" = -qa ]; then
  for f in "$STATE"/pkg-*; do
    [ -e "$f" ] || continue
    p="${f##*/pkg-}"; v="$(cat "$f")"; v="${v:-${STUB_RPM_VERSION:-580.65.06}-1.el9}"
    printf '%s\t%s\t%s\n' "$p" "${v%%-*}" "${v#*-}"
  done
  exit 0
fi
p="${!#}"
case " $* " in *" --qf "*) out="${STUB_RPM_VERSION:-580.65.06}" ;; *) out="$p-1.0-1.x86_64" ;; esac
[ -e "$STATE/pkg-$p" ] && { echo "$out"; exit 0; }
echo "package $p is not installed"; exit 1
""",
    "nvidia-smi": """
mode="${STUB_NVIDIA_SMI:-state}"
if [ "$mode" = fail ] || { [ "$mode" = state ] && [ ! -e "$STATE/driver-loaded" ]; }; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9
fi
case " $* " in
  *" --query-gpu=driver_version "*) echo "${STUB_DRIVER_VERSION:-580.65.06}" ;;
  *) echo "| NVIDIA-SMI ${STUB_DRIVER_VERSION:-580.65.06} | Tesla P40 |" ;;
esac
""",
    "nvidia-ctk": """
if [ "${1:-}" = --version ]; then
  mode="${STUB_CTK:-state}"
  if [ "$mode" = fail ] || { [ "$mode" = state ] && [ ! -e "$STATE/pkg-nvidia-container-toolkit" ]; }; then
    echo "nvidia-ctk: command not found" >&2; exit 127
  fi
  echo "NVIDIA Container Toolkit CLI version 1.17.8"; exit 0
fi
[ "${STUB_CTK_CONFIGURE_FAIL:-0}" = 1 ] && { echo "unable to load config" >&2; exit 1; }
config=""; for a in "$@"; do case "$a" in --config=*) config="${a#--config=}" ;; esac; done
case "$config" in "$HOST_ROOT"/*) ;; *) echo "stub: config outside HOST_ROOT: $config" >&2; exit 3 ;; esac
mkdir -p "$(dirname "$config")"
grep -qs nvidia-container-runtime "$config" || echo '# runtimes.nvidia = nvidia-container-runtime' >>"$config"
""",
    "systemctl": """
[ "${STUB_SYSTEMCTL_FAIL:-0}" = 1 ] && { echo "Job for docker.service failed" >&2; exit 1; }
if [ "${1:-}" = reboot ]; then
  for p in "$STATE"/pkg-nvidia-driver*; do [ -e "$p" ] && touch "$STATE/driver-loaded"; done
fi
exit 0
""",
    "docker": '[ "${STUB_DOCKER_FAIL:-0}" = 1 ] && { echo "could not select device driver" >&2; exit 125; }\n'
    'if [ "${1:-}" = info ]; then echo "${STUB_DOCKER_RUNTIMES:-{\\"nvidia\\":{},\\"runc\\":{}}}"; fi\n'
    "exit 0\n",
    "ps": 'echo "${STUB_DOCKERD_ETIMES:-}"\n',
    "ctr": '[ "${STUB_CTR_FAIL:-0}" = 1 ] && exit 1\nexit 0\n',
    "microk8s": '[ "${STUB_CTR_FAIL:-0}" = 1 ] && exit 1\nexit 0\n',
    "snap": "exit 0\n",
    "update-initramfs": "exit 0\n",
    "dracut": "exit 0\n",
    "uname": 'case "${1:-}" in -m) echo x86_64 ;; -r) echo 5.14.0-427.el9.x86_64 ;; *) echo Linux ;; esac\n',
}


@dataclass
class Host:
    tmp: Path
    root: Path
    state: Path
    calls_log: Path
    env: dict[str, str] = field(default_factory=dict)

    def set_os(self, key: str) -> None:
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "etc/os-release").write_text(OS_RELEASES[key])

    def run(self, name: str, **variables: str) -> subprocess.CompletedProcess[str]:
        self.calls_log.write_text("")
        return subprocess.run(
            ["bash", "-c", command_line(variables)],
            input=script(name),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.calls_log.read_text().splitlines()

    def called(self, prefix: str) -> list[str]:
        return [c for c in self.calls() if c.startswith(prefix)]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    root, state, bindir = tmp_path / "root", tmp_path / "state", tmp_path / "bin"
    for d in (root, state, bindir):
        d.mkdir()
    for name, body in STUBS.items():
        stub = bindir / name
        stub.write_text(STUB_HEAD + body)
        stub.chmod(0o755)
    h = Host(tmp_path, root, state, tmp_path / "calls.log")
    h.env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "HOST_ROOT": str(root),
        "STATE": str(state),
        "CALLS_LOG": str(h.calls_log),
        "LANG": "C.UTF-8",
    }
    h.set_os("ubuntu22")
    return h


def assert_fails(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "ERROR: " in result.stderr
    assert "NEXT: " in result.stderr
    for word in words:
        assert word in result.stderr


def written_paths_under_root(host: Host) -> set[str]:
    return {str(p.relative_to(host.root)) for p in host.root.rglob("*") if p.is_file()}


# --- components/host/shell.py ---------------------------------------------------------------------------


def test_script_inlines_common_once() -> None:
    assert set(script_names()) == {
        "claim-ports",
        "configure-runtime",
        "gpu-memory-gate",
        "install-driver",
        "install-toolkit",
        "prepare-dirs",
        "proxy-routes",
        "prune-releases",
        "run-verified",
        "verify-gpu",
    }
    for name in script_names():
        text = script(name)
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "BASH_SOURCE" not in text
        assert text.count("die() {") == 1
        assert text.count("readonly EXIT_BAD_PARAMS=19") == 1


def _readonly_exit_codes(name: str) -> dict[str, int]:
    text = (SCRIPTS_DIR / name).read_text()
    return {key: int(code) for key, code in re.findall(r"\b(EXIT_[A-Z_]+)=(\d+)\b", text)}


def test_exit_codes_documented_in_common_are_the_ones_defined() -> None:
    """common.sh's header table is the one list of exit codes: every `readonly EXIT_*` (common.sh's and
    run-verified.sh's, which does not source it) is in it, and it lists no code nothing defines."""
    header = (SCRIPTS_DIR / "common.sh").read_text().split("\nset -euo pipefail", 1)[0]
    documented = {int(code) for code in re.findall(r"^#\s+(\d+)\s+\S", header, flags=re.MULTILINE)}
    common = _readonly_exit_codes("common.sh")
    guard = _readonly_exit_codes("run-verified.sh")
    assert len(common) == 14
    assert set(guard) == {"EXIT_BAD_PARAMS", "EXIT_UNSAFE_RUNNER"}
    assert all(common[key] == code for key, code in guard.items() if key in common), "one number per name"
    assert documented == {0, *common.values(), *guard.values()}


def test_script_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown host script"):
        script("common")
    with pytest.raises(ValueError, match="unknown host script"):
        script("../etc/passwd")


def test_command_line_quotes_values() -> None:
    line = command_line({"DRIVER_ACTION": "install", "DIRS": "/a b\n/c'd", "X_1": ""})
    assert line == "env DRIVER_ACTION=install DIRS='/a b\n/c'\"'\"'d' X_1='' bash -s"
    assert command_line({}) == "bash -s"
    out = subprocess.run(
        ["bash", "-c", command_line({"V": "$(touch /tmp/pwned) `x` ;|&"})],
        input='printf %s "$V"',
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "$(touch /tmp/pwned) `x` ;|&"


@pytest.mark.parametrize("key", ["lower", "1ABC", "A-B", "A B", "", "A=B"])
def test_command_line_rejects_bad_keys(key: str) -> None:
    with pytest.raises(ValueError, match="environment variable names"):
        command_line({key: "x"})


# --- shellcheck ----------------------------------------------------------------------------------


def test_shellcheck_clean() -> None:
    shellcheck = dev_tool("shellcheck")
    files = sorted(str(p) for p in SCRIPTS_DIR.glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in script_names():  # the inlined text too, as it is sent over SSH
        # SC2034: a script uses only some of the shared EXIT_* codes and OS_* variables.
        result = subprocess.run(
            [shellcheck, "--severity=style", "--shell=bash", "--exclude=SC2034", "-"],
            input=script(name),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, name + result.stdout


def test_every_script_documents_exit_codes() -> None:
    for path in SCRIPTS_DIR.glob("*.sh"):
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        assert "Exit codes" in text, path.name
        assert "777" not in text


# --- OS detection --------------------------------------------------------------------------------


def test_unsupported_os_names_id_and_version(host: Host) -> None:
    host.set_os("alpine")
    for name, env in [
        ("install-driver", {"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580"}),
        ("install-toolkit", {"TOOLKIT_ACTION": "install"}),
    ]:
        result = host.run(name, **env)
        assert_fails(result, 10, "ID=alpine", "VERSION_ID=3.20.3")
        assert not host.called("apt-get") and not host.called("dnf") and not host.called("curl")


def test_old_rhel_family_is_unsupported(host: Host) -> None:
    host.set_os("centos7")
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="install"), 10, "ID=centos VERSION_ID=7")


def test_driver_install_on_debian_is_not_automated(host: Host) -> None:
    host.set_os("debian12")
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 10, "Debian 12", "debian12", "verify")
    assert not host.called("apt-get")


def test_missing_os_release(host: Host) -> None:
    (host.root / "etc/os-release").unlink()
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="install"), 10, "os-release")


# --- install-toolkit -----------------------------------------------------------------------------


@pytest.mark.parametrize("os_key", APT_OSES)
def test_toolkit_apt_install_then_idempotent(host: Host, os_key: str) -> None:
    host.set_os(os_key)
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    assert host.called("curl") == [
        "curl -fsSL --proto =https --retry 3 -o " + c
        for c in [
            host.called("curl")[0].split(" -o ")[1],
            host.called("curl")[1].split(" -o ")[1],
        ]
    ]
    assert "https://nvidia.github.io/libnvidia-container/gpgkey" in host.called("curl")[0]
    assert any("--show-keys --with-colons" in c for c in host.called("gpg"))
    assert any("--dearmor" in c for c in host.called("gpg"))
    assert host.called("apt-get") == [
        "apt-get update",
        "apt-get install -y nvidia-container-toolkit",
    ]
    assert not host.called("dnf")
    keyring = host.root / "usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
    assert keyring.read_text().startswith("DEARMORED")
    listing = (host.root / "etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text()
    assert listing == (
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
    )
    assert host.called("nvidia-ctk") == ["nvidia-ctk --version"]

    before = {p: (host.root / p).stat().st_mtime_ns for p in written_paths_under_root(host)}
    again = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stderr
    assert not host.called("apt-get") and not host.called("curl") and not host.called("gpg")
    assert before == {p: (host.root / p).stat().st_mtime_ns for p in written_paths_under_root(host)}


@pytest.mark.parametrize("os_key", DNF_OSES)
def test_toolkit_dnf_install_then_idempotent(toolkit_host: Host, os_key: str) -> None:
    """NVIDIA's own .repo (gpgcheck=0) is written anew with every check on and the key pinned and imported."""
    host = toolkit_host
    host.set_os(os_key)
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    curls = host.called("curl")
    assert len(curls) == 2
    assert curls[0].endswith(
        " https://nvidia.github.io/libnvidia-container/stable/rpm/nvidia-container-toolkit.repo"
    )
    assert curls[1].endswith(" https://nvidia.github.io/libnvidia-container/gpgkey")
    assert (host.root / DNF_REPO).read_text() == PINNED_NVIDIA_REPO
    assert (host.root / RPM_KEY[1:]).read_text() == served_key(f"{REPO_URL}/gpgkey")
    assert host.called("rpm --import") == [f"rpm --import {host.root}{RPM_KEY}"]
    assert_key_checked_before_import(host, f"{REPO_URL}/gpgkey")
    assert host.called("dnf") == ["dnf install -y nvidia-container-toolkit"]
    assert "writing gpgcheck=1" in result.stderr
    assert not host.called("apt-get")
    assert written_paths_under_root(host) == {"etc/os-release", DNF_REPO, RPM_KEY[1:]}
    again = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert again.returncode == 0
    assert not host.called("dnf") and not host.called("curl") and not host.called("rpm --import")


def test_toolkit_fingerprint_mismatch(host: Host) -> None:
    host.env["STUB_GPG_FPR"] = "0" * 40
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert_fails(result, 12, "fingerprint", "0" * 40, FINGERPRINT)
    assert not (host.root / "usr/share/keyrings").exists()
    assert not host.called("apt-get")


def test_toolkit_fingerprint_is_configurable(host: Host) -> None:
    host.env["STUB_GPG_FPR"] = "A" * 40
    result = host.run("install-toolkit", TOOLKIT_ACTION="install", TOOLKIT_KEY_FINGERPRINT="a" * 40)
    assert result.returncode == 0, result.stderr


def test_toolkit_curl_failure(host: Host) -> None:
    host.env["STUB_CURL_FAIL"] = "1"
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert_fails(result, 12, "downloading https://nvidia.github.io/libnvidia-container/gpgkey failed")
    assert not host.called("apt-get")


def test_toolkit_package_failure(toolkit_host: Host) -> None:
    host = toolkit_host
    host.set_os("rocky9")
    host.env["STUB_DNF_FAIL"] = "1"
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="install"), 13, "nvidia-container-toolkit")


def test_toolkit_verify_and_skip(host: Host) -> None:
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="verify"), 20, "nvidia-ctk --version failed")
    (host.state / "pkg-nvidia-container-toolkit").touch()
    assert host.run("install-toolkit", TOOLKIT_ACTION="verify").returncode == 0
    skipped = host.run("install-toolkit", TOOLKIT_ACTION="skip")
    assert skipped.returncode == 0 and host.calls() == []
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="maybe"), 19, "TOOLKIT_ACTION")


def test_non_root_uses_sudo(host: Host) -> None:
    host.env["STUB_UID"] = "1000"
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    sudo = host.called("sudo")
    assert sudo[0] == "sudo -n true"
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y nvidia-container-toolkit" in sudo
    assert all(c.startswith("sudo -n ") for c in sudo)


def test_non_root_without_sudo_rights(host: Host) -> None:
    host.env["STUB_UID"] = "1000"
    host.env["STUB_SUDO_DENY"] = "1"
    for name, env in [
        ("install-toolkit", {"TOOLKIT_ACTION": "install"}),
        ("install-driver", {"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580"}),
        ("configure-runtime", {"CONTAINER_RUNTIME": "docker"}),
        ("prepare-dirs", {"ROOT": "/srv", "DIRS": "/srv/models", "OWNER": "1001:1001"}),
    ]:
        result = host.run(name, **env)
        assert_fails(result, 11, "sudo -n", "passwordless sudo")
        assert not host.called("apt-get") and not host.called("nvidia-ctk runtime")


# The downloaded apt list and .repo file are written anew: pinned key, NVIDIA's host only, nothing that
# weakens verification.

REPO_URL = "https://nvidia.github.io/libnvidia-container"
KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit"
APT_LIST = "etc/apt/sources.list.d/nvidia-container-toolkit.list"
DNF_REPO = "etc/yum.repos.d/nvidia-container-toolkit.repo"

# What NVIDIA publishes at stable/deb/nvidia-container-toolkit.list and stable/rpm/nvidia-container-toolkit.repo.
NVIDIA_LIST = (
    "deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
    "#deb https://nvidia.github.io/libnvidia-container/experimental/deb/$(ARCH) /\n"
)
NVIDIA_REPO = """[nvidia-container-toolkit]
name=nvidia-container-toolkit
baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch
repo_gpgcheck=1
gpgcheck=0
enabled=1
gpgkey=https://nvidia.github.io/libnvidia-container/gpgkey
sslverify=1
sslcacert=/etc/pki/tls/certs/ca-bundle.crt

[nvidia-container-toolkit-experimental]
name=nvidia-container-toolkit-experimental
baseurl=https://nvidia.github.io/libnvidia-container/experimental/rpm/$basearch
repo_gpgcheck=1
gpgcheck=0
enabled=0
gpgkey=https://nvidia.github.io/libnvidia-container/gpgkey
sslverify=1
sslcacert=/etc/pki/tls/certs/ca-bundle.crt
"""


def pinned_section(section: str, baseurl: str, enabled: str) -> str:
    """A section as install-toolkit.sh writes it: every check on, the verified key as a local file."""
    return (
        f"[{section}]\nname={section}\nbaseurl={baseurl}\nenabled={enabled}\ngpgcheck=1\nrepo_gpgcheck=1\n"
        f"gpgkey=file://{RPM_KEY}\nsslverify=1\n\n"
    )


PINNED_NVIDIA_REPO = pinned_section(
    "nvidia-container-toolkit", f"{REPO_URL}/stable/rpm/$basearch", "1"
) + pinned_section("nvidia-container-toolkit-experimental", f"{REPO_URL}/experimental/rpm/$basearch", "0")

# curl serves $STUB_LIST_FILE and $STUB_REPO_FILE, and a key (naming its URL) for anything else under
# REPO_URL; rpm also takes --import.
TOOLKIT_STUBS = {
    "curl": """
out=/dev/stdout; url=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift 2 ;; --proto|--retry) shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac
done
[ "${STUB_CURL_FAIL:-0}" = 1 ] && { echo "curl: (6) Could not resolve host" >&2; exit 6; }
case "$url" in
  */stable/deb/nvidia-container-toolkit.list) cp "$STUB_LIST_FILE" "$out" ;;
  */stable/rpm/nvidia-container-toolkit.repo) cp "$STUB_REPO_FILE" "$out" ;;
  https://nvidia.github.io/libnvidia-container/*)
    printf -- '-----BEGIN PGP PUBLIC KEY BLOCK-----\\n%s\\n' "$url" >"$out" ;;
  *) echo "curl: (22) 404" >&2; exit 22 ;;
esac
""",
    "rpm": """
if [ "${1:-}" = --import ]; then
  [ "${STUB_RPM_IMPORT_FAIL:-0}" = 1 ] && { echo "error: $2: key 1 import failed." >&2; exit 1; }
  cp "$2" "$STATE/rpm-imported-key"; exit 0
fi
"""
    + STUBS["rpm"],
}


def served_key(url: str) -> str:
    return f"-----BEGIN PGP PUBLIC KEY BLOCK-----\n{url}\n"


def serve(host: Host, listing: str | None = None, repo: str | None = None) -> None:
    """What curl returns for NVIDIA's apt list and .repo file."""
    if listing is not None:
        Path(host.env["STUB_LIST_FILE"]).write_text(listing, newline="")
    if repo is not None:
        Path(host.env["STUB_REPO_FILE"]).write_text(repo, newline="")


def forget_toolkit(host: Host) -> None:
    """Undo an install under the fake root (keys, sources, packages), so one host serves many examples."""
    for rel in ("usr", "etc/apt", "etc/yum.repos.d", "etc/pki"):
        shutil.rmtree(host.root / rel, ignore_errors=True)
    for path in host.state.iterdir():
        path.unlink()


def assert_key_checked_before_import(host: Host, key_url: str) -> None:
    calls = host.calls()
    download = calls.index(next(c for c in calls if c.startswith("curl ") and c.endswith(" " + key_url)))
    check = calls.index(next(c for c in calls if c.startswith("gpg ") and "--show-keys" in c))
    imports = [i for i, c in enumerate(calls) if c.startswith("rpm --import")]
    assert imports and download < check < imports[0], calls


@pytest.fixture
def toolkit_host(host: Host) -> Host:
    """`host` whose curl serves NVIDIA's list and .repo (or what a test serves instead) and whose rpm imports keys."""
    bindir = Path(host.env["PATH"].split(":")[0])
    for name, body in TOOLKIT_STUBS.items():
        (bindir / name).write_text(STUB_HEAD + body)
    host.env["STUB_LIST_FILE"] = str(host.tmp / "served.list")
    host.env["STUB_REPO_FILE"] = str(host.tmp / "served.repo")
    serve(host, NVIDIA_LIST, NVIDIA_REPO)
    return host


def assert_refused(host: Host, result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 12 with ERROR and NEXT, and nothing written: no key, no source, no package manager run."""
    assert_fails(result, 12, *words)
    assert written_paths_under_root(host) == {"etc/os-release"}
    assert not host.called("apt-get") and not host.called("dnf") and not host.called("rpm --import")


def test_toolkit_apt_nvidia_list_is_signed_and_comments_dropped(toolkit_host: Host) -> None:
    host = toolkit_host
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    assert (
        host.root / APT_LIST
    ).read_text() == f"deb [signed-by={KEYRING}] {REPO_URL}/stable/deb/$(ARCH) /\n"


@pytest.mark.parametrize(
    ("listing", "written"),
    [
        (
            f"deb [arch=amd64 signed-by=/etc/apt/keyrings/other.gpg] {REPO_URL}/stable/deb/$(ARCH) /\n",
            f"deb [signed-by={KEYRING} arch=amd64] {REPO_URL}/stable/deb/$(ARCH) /\n",
        ),
        (
            f"  deb\t[ lang=none  arch=arm64,amd64 pdiffs=no ]\t{REPO_URL}/stable/deb/$(ARCH)  /  # note\r\n"
            f"deb-src {REPO_URL}/stable/deb/$(ARCH) /\n",
            f"deb [signed-by={KEYRING} arch=arm64,amd64] {REPO_URL}/stable/deb/$(ARCH) /\n",
        ),
        (
            f"deb [signed-by={KEYRING}]{REPO_URL}/stable/deb/amd64 /\ndeb {REPO_URL}/stable/deb/all /",
            f"deb [signed-by={KEYRING}] {REPO_URL}/stable/deb/amd64 /\ndeb [signed-by={KEYRING}] {REPO_URL}/stable/deb/all /\n",
        ),
    ],
)
def test_toolkit_apt_list_options_are_rewritten(toolkit_host: Host, listing: str, written: str) -> None:
    serve(toolkit_host, listing=listing)
    result = toolkit_host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    assert (toolkit_host.root / APT_LIST).read_text() == written


@pytest.mark.parametrize(
    ("listing", "word"),
    [
        (f"deb [trusted=yes] {REPO_URL}/stable/deb/$(ARCH) /\n", "trusted=yes"),
        (f"deb [arch=amd64 allow-insecure=yes] {REPO_URL}/stable/deb/$(ARCH) /\n", "allow-insecure=yes"),
        (f"deb [ allow-weak=yes ] {REPO_URL}/stable/deb/$(ARCH) /\n", "allow-weak=yes"),
        (f"deb [allow-downgrade-to-insecure=yes] {REPO_URL}/stable/deb/$(ARCH) /\n", "allow-downgrade"),
        (f"deb [check-valid-until=no] {REPO_URL}/stable/deb/$(ARCH) /\n", "check-valid-until=no"),
        (f"deb [Trusted+=yes] {REPO_URL}/stable/deb/$(ARCH) /\n", "Trusted+=yes"),
        (f"deb-src [trusted=yes] {REPO_URL}/stable/deb/$(ARCH) /\n", "weakens"),
        (f"{NVIDIA_LIST}deb [trusted=yes] https://attacker.example/deb /\n", "line 3"),
        (
            "deb https://nvidia.github.io.attacker.example/libnvidia-container/stable/deb/$(ARCH) /\n",
            "not under",
        ),
        ("deb http://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n", "not under"),
        ("deb https://nvidia.github.io/libnvidia-container.attacker/deb /\n", "not under"),
        ("deb https://x@nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n", "not under"),
        ("deb mirror+https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n", "not under"),
        (f"deb {REPO_URL}/../../attacker/deb /\n", "not under"),
        (f"deb [arch=amd64 {REPO_URL}/stable/deb/$(ARCH) /\n", "unclosed"),
        (f"deb [trusted] {REPO_URL}/stable/deb/$(ARCH) /\n", "NAME=VALUE"),
        (f'deb {REPO_URL}/stable/deb/$(ARCH) "/"\n', "plain word"),
        (f"deb {REPO_URL}/stable/deb/$(ARCH)\n", "no URI and suite"),
        ("Types: deb\n", "not a 'deb'"),
        ("# nothing here\n", "no 'deb' line"),
    ],
)
def test_toolkit_apt_list_that_weakens_or_points_elsewhere_is_refused(
    toolkit_host: Host, listing: str, word: str
) -> None:
    serve(toolkit_host, listing=listing)
    result = toolkit_host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert_refused(toolkit_host, result, word, "nvidia-container-toolkit.list")


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (("repo_gpgcheck=1", "repo_gpgcheck=0"), "turns repo_gpgcheck off"),
        (("sslverify=1", "sslverify=False"), "turns sslverify off"),
        (("sslverify=1", "sslverify=1\nlocalpkg_gpgcheck=no"), "localpkg_gpgcheck"),
        (("gpgcheck=0", "gpgcheck=maybe"), "not a boolean"),
        (("enabled=1", "enabled=2"), "not a boolean"),
        (("sslverify=1", "sslverify=1\nmirrorlist=https://attacker.example/mirrors"), "mirrorlist"),
        (("sslverify=1", "sslverify=1\nmetalink=https://attacker.example/metalink"), "metalink"),
        (("baseurl=https://nvidia.github.io", "baseurl=https://attacker.example"), "baseurl"),
        (("baseurl=https://", "baseurl=http://"), "baseurl"),
        (("gpgkey=https://nvidia.github.io", "gpgkey=https://attacker.example"), "gpgkey"),
        (("/gpgkey", "/gpgkey https://attacker.example/key"), "gpgkey"),
        (("[nvidia-container-toolkit]", "[main]\ngpgcheck=0\n[nvidia-container-toolkit]"), "[main]"),
        (("[nvidia-container-toolkit]", "gpgcheck=0\n[nvidia-container-toolkit]"), "before any [section]"),
        (("-experimental]", "]"), "repeats the section"),
        (("name=nvidia-container-toolkit\n", "just a line\n"), "KEY=VALUE"),
    ],
)
def test_toolkit_dnf_repo_that_weakens_or_points_elsewhere_is_refused(
    toolkit_host: Host, change: tuple[str, str], word: str
) -> None:
    host = toolkit_host
    host.set_os("rocky9")
    serve(host, repo=NVIDIA_REPO.replace(*change))
    assert_refused(
        host, host.run("install-toolkit", TOOLKIT_ACTION="install"), word, "NEXT: nothing was written"
    )
    assert len(host.called("curl")) == 1, "no key is downloaded for a refused .repo"


@pytest.mark.parametrize(
    ("repo", "word"),
    [
        ("", "no [section]"),
        (
            NVIDIA_REPO.replace("gpgkey=https://nvidia.github.io/libnvidia-container/gpgkey\n", ""),
            "no gpgkey",
        ),
        (
            "[nvidia-container-toolkit]\ngpgkey=https://nvidia.github.io/libnvidia-container/gpgkey\n",
            "no baseurl",
        ),
    ],
)
def test_toolkit_dnf_repo_missing_parts_is_refused(toolkit_host: Host, repo: str, word: str) -> None:
    toolkit_host.set_os("rhel9")
    serve(toolkit_host, repo=repo)
    assert_refused(toolkit_host, toolkit_host.run("install-toolkit", TOOLKIT_ACTION="install"), word)


def test_toolkit_dnf_key_fingerprint_mismatch_is_not_imported(toolkit_host: Host) -> None:
    host = toolkit_host
    host.set_os("rhel9")
    host.env["STUB_GPG_FPR"] = "0" * 40
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert_refused(host, result, "fingerprint", "0" * 40, FINGERPRINT, f"{REPO_URL}/gpgkey")
    assert host.called("curl")[1].endswith(f" {REPO_URL}/gpgkey")


def test_toolkit_dnf_key_import_failure(toolkit_host: Host) -> None:
    host = toolkit_host
    host.set_os("rhel9")
    host.env["STUB_RPM_IMPORT_FAIL"] = "1"
    assert_fails(host.run("install-toolkit", TOOLKIT_ACTION="install"), 12, "rpm --import")
    assert not (host.root / DNF_REPO).exists() and not host.called("dnf")


# --- generated lists and .repo files ---

TOOLKIT_PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
APT_WEAKENING = [
    "trusted",
    "allow-insecure",
    "allow-weak",
    "allow-downgrade-to-insecure",
    "check-valid-until",
    "check-date",
    "valid-until-min",
    "valid-until-max",
    "date-max-future",
]
PLAIN_WORD = re.compile(r"[A-Za-z0-9._~/$()+-]+")
SPACE = st.sampled_from([" ", "\t", "  ", " \t "])
MAYBE_SPACE = st.sampled_from(["", " ", "\t", "  "])
NOISE = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\x00"), max_size=30
) | st.sampled_from(
    ["deb [trusted=yes] http://attacker.example/ /", "gpgcheck=0", "[main]", "sslverify=0", "]"]
)
FOREIGN_URLS = st.sampled_from(
    [
        "https://attacker.example/libnvidia-container/stable/deb/$(ARCH)",
        "http://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)",
        "https://nvidia.github.io.attacker.example/libnvidia-container/stable",
        "https://nvidia.github.io/libnvidia-container.attacker/stable",
        "https://user@nvidia.github.io/libnvidia-container/stable",
        "https://nvidia.github.io/libnvidia-container/../attacker",
        "https://nvidia.github.io/libnvidia-container/stable?x=1",
        "mirror+https://nvidia.github.io/libnvidia-container/stable",
        "tor+https://nvidia.github.io/libnvidia-container/stable",
        "HTTPS://nvidia.github.io/libnvidia-container/stable",
        "https://nvidia.github.io/libnvidia-container",
        "https://nvidia.github.io/other/stable",
        "file:///srv/mirror",
        "cdrom:[Debian]/",
    ]
) | st.from_regex(r"https?://[a-z0-9.-]{1,20}(/[a-z0-9$()._-]{0,10}){0,3}", fullmatch=True)
NVIDIA_URLS = st.lists(  # under REPO_URL, unless a `..` part climbs out
    st.sampled_from(
        ["stable", "deb", "rpm", "$(ARCH)", "$basearch", "experimental", "amd64", "ubuntu22.04", ".."]
    )
    | st.from_regex(r"[A-Za-z0-9._~+-]{1,8}", fullmatch=True),
    min_size=1,
    max_size=4,
).map(lambda parts: f"{REPO_URL}/" + "/".join(parts))


def nvidia_url(url: str) -> bool:
    """The rule the script applies: one plain https URL under REPO_URL/, without `..`."""
    return url.startswith(f"{REPO_URL}/") and ".." not in url and PLAIN_WORD.fullmatch(url[8:]) is not None


@st.composite
def random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=True))


APT_OPTION_VALUES = st.sampled_from(
    [
        "yes",
        "no",
        "amd64",
        "amd64,arm64",
        "arm64",
        KEYRING,
        "/etc/apt/keyrings/other.gpg",
        "Contents-deb",
        "1",
    ]
) | st.text(alphabet="abcxyzAZ019-_.,/:=+[", min_size=1, max_size=8)
SAFE_APT_OPTIONS = st.tuples(
    st.sampled_from(
        ["arch", "lang", "target", "pdiffs", "by-hash", "signed-by", "inrelease-path", "snapshot"]
    )
    | st.from_regex(r"[a-z][a-z-]{0,10}[a-z]", fullmatch=True).filter(lambda name: name not in APT_WEAKENING),
    st.sampled_from(["=", "=", "+=", "-="]),
    APT_OPTION_VALUES,
).map("".join)
ARCH_OPTIONS = st.sampled_from(["arch=", "arch+=", "Arch="]).flatmap(
    lambda option: st.sampled_from(
        ["amd64", "arm64", "amd64,arm64", "i386", "AMD64", "amd64;x", "$(ARCH)", "a=b"]
    ).map(lambda value: option + value)
)
WEAKENING_APT_OPTIONS = st.tuples(
    st.sampled_from(APT_WEAKENING).flatmap(random_case), st.sampled_from(["=", "+=", "-="]), APT_OPTION_VALUES
).map("".join)
SUITES = st.sampled_from(["/", "./", "stable", "$(ARCH)/"])
COMPONENTS = st.sampled_from(["main", "contrib", "non-free"])
MALFORMED_APT_OPTIONS = st.sampled_from(["trusted", "=yes", "arch", "x_y=1", "9=1", "-=x"])
APT_OPTION_FORM = re.compile(r"([A-Za-z](?:[A-Za-z-]*[A-Za-z])?)[+-]?=.*")


@dataclass
class AptEntry:
    kind: str
    options: list[str]
    uri: str
    words: list[str]


@st.composite
def apt_lists(draw: st.DrawFn) -> tuple[str, str | None]:
    """A downloaded list, and what the script must write from it (None: it must refuse). Entries are safe, then
    0 to 2 hazards (a weakening or malformed option, a foreign URI) go into random entries."""
    layout = draw(st.lists(st.sampled_from(["entry", "entry", "entry", "comment", "blank"]), max_size=5))
    entries = [
        AptEntry(
            draw(st.sampled_from(["deb", "deb", "deb", "deb-src"])),
            draw(st.lists(SAFE_APT_OPTIONS | ARCH_OPTIONS, max_size=3)),
            draw(NVIDIA_URLS),
            [draw(SUITES), *draw(st.lists(COMPONENTS, max_size=2))],
        )
        for kind in layout
        if kind == "entry"
    ]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2])) if entries else 0):
        entry = draw(st.sampled_from(entries))
        hazard = draw(st.sampled_from(["weakening", "malformed", "foreign"]))
        if hazard == "foreign":
            entry.uri = draw(FOREIGN_URLS)
        else:
            option = draw(WEAKENING_APT_OPTIONS if hazard == "weakening" else MALFORMED_APT_OPTIONS)
            entry.options.insert(draw(st.integers(0, len(entry.options))), option)

    text, written, refused, queue = "", "", False, iter(entries)
    for kind in layout:
        end = draw(st.sampled_from(["\n", "\r\n"]))
        if kind != "entry":
            text += draw(MAYBE_SPACE) + ("#" + draw(NOISE) if kind == "comment" else "") + end
            continue
        entry = next(queue)
        line = draw(MAYBE_SPACE) + entry.kind + draw(SPACE)
        empty_block = draw(st.booleans())
        if entry.options or empty_block:
            inside = draw(MAYBE_SPACE) + draw(SPACE).join(entry.options) + draw(MAYBE_SPACE)
            line += "[" + inside + "]" + draw(MAYBE_SPACE)
        line += entry.uri + "".join(draw(SPACE) + word for word in entry.words) + draw(MAYBE_SPACE)
        if draw(st.booleans()):
            line += "#" + draw(NOISE)
        text += line + end

        arch = ""
        for option in entry.options:
            form = APT_OPTION_FORM.fullmatch(option)
            if form is None or form.group(1).lower() in APT_WEAKENING:
                refused = True
            elif re.fullmatch(r"arch=[a-z0-9][a-z0-9,-]*", option):
                arch = option.removeprefix("arch=")
        refused = refused or not nvidia_url(entry.uri)
        if entry.kind == "deb":
            written += f"deb [signed-by={KEYRING}{' arch=' + arch if arch else ''}] {entry.uri} {' '.join(entry.words)}\n"
    if draw(st.booleans()):
        text = text.removesuffix("\r\n").removesuffix("\n")  # no newline at the end
    return text, None if refused or not written else written


SIGNED_DEB_LINE = re.compile(
    rf"deb \[signed-by={re.escape(KEYRING)}( arch=[a-z0-9][a-z0-9,-]*)?\] "
    rf"{re.escape(REPO_URL)}/[A-Za-z0-9._~/$()+-]+( [A-Za-z0-9._~/$()+-]+)+"
)


@TOOLKIT_PROPERTY
@given(case=apt_lists())
def test_toolkit_generated_apt_lists(toolkit_host: Host, case: tuple[str, str | None]) -> None:
    """Whatever the list says, every line written is a deb line with the pinned signed-by, under REPO_URL, and
    carries no option but arch; a weakening option or a foreign host anywhere means nothing is written."""
    host = toolkit_host
    listing, expected = case
    forget_toolkit(host)
    serve(host, listing=listing)
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    event("refused (exit 12)" if expected is None else "written")
    if expected is None:
        assert_refused(host, result)
        return
    assert result.returncode == 0, result.stderr
    written = (host.root / APT_LIST).read_text()
    assert written == expected
    for line in written.splitlines():
        assert SIGNED_DEB_LINE.fullmatch(line), line
        assert not any(f"{name}=" in line.lower() for name in APT_WEAKENING), line
    assert written_paths_under_root(host) == {"etc/os-release", APT_LIST, KEYRING[1:]}


BOOLS = {"1": "1", "yes": "1", "true": "1", "on": "1", "0": "0", "no": "0", "false": "0", "off": "0"}
CHECKS = ["repo_gpgcheck", "localpkg_gpgcheck", "sslverify"]  # refused when off
SAFE_REPO_ENTRIES = (
    st.tuples(
        st.sampled_from(["gpgcheck", "pkg_gpgcheck", "enabled"]), st.sampled_from([*BOOLS, "True", "NO"])
    )
    | st.tuples(st.sampled_from(CHECKS), st.sampled_from(["1", "yes", "true", "on", "True", "On"]))
    | st.tuples(st.just("baseurl"), NVIDIA_URLS)
    | st.tuples(st.just("gpgkey"), st.just(f"{REPO_URL}/gpgkey"))
    | st.tuples(
        st.sampled_from(["name", "sslcacert", "skip_if_unavailable", "priority", "type", "exclude", "proxy"]),
        st.text(alphabet="abcXYZ019-_./:$ ", max_size=12),
    )
)
REPO_HAZARDS = (
    st.tuples(
        st.sampled_from([*CHECKS, "gpgcheck", "pkg_gpgcheck", "enabled"]),
        st.sampled_from(["2", "", "1 # on"]),
    )
    | st.tuples(st.sampled_from(CHECKS), st.sampled_from(["0", "no", "false", "off", "False", "OFF"]))
    | st.tuples(st.sampled_from(["mirrorlist", "metalink"]), FOREIGN_URLS | NVIDIA_URLS)
    | st.tuples(st.sampled_from(["baseurl", "gpgkey"]), FOREIGN_URLS)
    | st.tuples(st.just("gpgkey"), st.just(f"{REPO_URL}/stable/gpgkey"))  # a second key
    | st.sampled_from(["[main]", "[Main]", "[duplicate]", "[bad id]", "key before any section", "no baseurl"])
)
SECTION_IDS = st.sampled_from(
    ["nvidia-container-toolkit", "nvidia-container-toolkit-experimental"]
) | st.from_regex(r"[A-Za-z0-9._:-]{1,16}", fullmatch=True)


@st.composite
def dnf_repos(draw: st.DrawFn) -> tuple[str, str | None, str | None]:
    """A downloaded .repo, what the script must write from it (None: refuse), and the key URL it names. Sections
    are safe (a baseurl and NVIDIA's gpgkey, then safe entries), then 0 to 2 hazards go into random places."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for index, section in enumerate(draw(st.lists(SECTION_IDS, min_size=1, max_size=3, unique=True))):
        entries = draw(st.lists(SAFE_REPO_ENTRIES, max_size=5))
        entries.insert(draw(st.integers(0, len(entries))), ("baseurl", draw(NVIDIA_URLS)))
        if index == 0 or draw(st.booleans()):
            entries.insert(draw(st.integers(0, len(entries))), ("gpgkey", f"{REPO_URL}/gpgkey"))
        sections.append((section, entries))
    preamble: list[tuple[str, str]] = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        hazard = draw(REPO_HAZARDS)
        section, entries = draw(st.sampled_from(sections))
        if hazard in ("[main]", "[Main]", "[bad id]"):
            sections.insert(
                draw(st.integers(0, len(sections))), (hazard[1:-1], [("baseurl", draw(NVIDIA_URLS))])
            )
        elif hazard == "[duplicate]":
            sections.append((section, [("baseurl", draw(NVIDIA_URLS))]))
        elif hazard == "key before any section":
            preamble.append(draw(SAFE_REPO_ENTRIES))
        elif hazard == "no baseurl":
            entries[:] = [entry for entry in entries if entry[0] != "baseurl"]
        else:
            assert isinstance(hazard, tuple)
            entries.insert(draw(st.integers(0, len(entries))), hazard)

    end = draw(st.sampled_from(["\n", "\r\n"]))
    lines: list[str] = []

    def entry_line(key: str, value: str) -> str:
        key = draw(random_case(key)) if draw(st.booleans()) else key
        return (
            draw(MAYBE_SPACE) + key + draw(MAYBE_SPACE) + "=" + draw(MAYBE_SPACE) + value + draw(MAYBE_SPACE)
        )

    def comment_or_blank() -> None:
        if draw(st.booleans()):
            comment = draw(st.sampled_from(["#", ";", "  # ", "\t;"])) + draw(NOISE)
            lines.append(comment if draw(st.booleans()) else draw(MAYBE_SPACE))

    refused, written = bool(preamble), ""
    key_url: str | None = None
    ids: set[str] = set()
    lines.extend(entry_line(*entry) for entry in preamble)
    for section, entries in sections:
        comment_or_blank()
        lines.append(draw(MAYBE_SPACE) + f"[{section}]" + draw(MAYBE_SPACE))
        refused = refused or section.lower() == "main" or section in ids or " " in section
        ids.add(section)
        baseurl, enabled = None, "1"
        for key, value in entries:
            comment_or_blank()
            lines.append(entry_line(key, value))
            flag = BOOLS.get(value.lower())
            if key in ("gpgcheck", "pkg_gpgcheck", "enabled"):
                refused = refused or flag is None
                enabled = flag if key == "enabled" and flag else enabled
            elif key in CHECKS:
                refused = refused or flag != "1"
            elif key in ("mirrorlist", "metalink"):
                refused = True
            elif key == "baseurl":
                refused = refused or not nvidia_url(value)
                baseurl = value
            elif key == "gpgkey":
                refused = refused or not nvidia_url(value) or key_url not in (None, value)
                key_url = key_url or value
        refused = refused or baseurl is None
        written += pinned_section(section, baseurl or "", enabled)
    refused = refused or key_url is None
    return end.join(lines) + draw(st.sampled_from(["", end])), None if refused else written, key_url


@TOOLKIT_PROPERTY
@given(case=dnf_repos(), key_matches=st.sampled_from([True, True, True, False]))
def test_toolkit_generated_dnf_repos(
    toolkit_host: Host, case: tuple[str, str | None, str | None], key_matches: bool
) -> None:
    """Whatever the .repo says, what is written has gpgcheck=1, repo_gpgcheck=1, sslverify=1, the pinned key as a
    local file and baseurls under REPO_URL only; the key is imported only once its fingerprint matched."""
    host = toolkit_host
    repo, expected, key_url = case
    forget_toolkit(host)
    host.set_os("rocky9")
    serve(host, repo=repo)
    host.env["STUB_GPG_FPR"] = FINGERPRINT if key_matches else "1" * 40
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    event("written" if expected and key_matches else "refused: key" if expected else "refused: .repo")
    if expected is None or not key_matches:
        assert_refused(host, result)
        if expected is None:
            assert not host.called("gpg"), "no key is downloaded or read for a refused .repo"
        return
    assert key_url is not None
    assert result.returncode == 0, result.stderr
    written = (host.root / DNF_REPO).read_text()
    assert written == expected
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(written)
    for section in parsed.sections():
        assert dict(parsed[section]) | {"name": "", "baseurl": "", "enabled": ""} == {
            "name": "",
            "baseurl": "",
            "enabled": "",
            "gpgcheck": "1",
            "repo_gpgcheck": "1",
            "gpgkey": f"file://{RPM_KEY}",
            "sslverify": "1",
        }
        assert nvidia_url(parsed[section]["baseurl"])
    assert (host.root / RPM_KEY[1:]).read_text() == served_key(key_url)
    assert host.called("rpm --import") == [f"rpm --import {host.root}{RPM_KEY}"]
    assert_key_checked_before_import(host, key_url)
    assert written_paths_under_root(host) == {"etc/os-release", DNF_REPO, RPM_KEY[1:]}


# --- install-driver ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("os_key", "modules", "package"),
    [
        ("ubuntu22", "proprietary", "nvidia-driver-580-server"),
        ("ubuntu24", "open", "nvidia-driver-580-server-open"),
    ],
)
def test_driver_apt_install_reboot_never(host: Host, os_key: str, modules: str, package: str) -> None:
    host.set_os(os_key)
    env = {"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580", "KERNEL_MODULES": modules, "REBOOT": "never"}
    result = host.run("install-driver", **env)
    assert_fails(result, 15, "reboot", "pulumi up")
    assert host.called("apt-get") == ["apt-get update", f"apt-get install -y {package}"]
    assert host.called("update-initramfs") == ["update-initramfs -u"]
    assert not host.called("systemctl")
    blacklist = host.root / "etc/modprobe.d/blacklist-nouveau.conf"
    assert blacklist.read_text() == "blacklist nouveau\noptions nouveau modeset=0\n"

    again = host.run("install-driver", **env)  # not rebooted yet: no second install
    assert_fails(again, 15, "reboot")
    assert not host.called("apt-get") and not host.called("update-initramfs")


@pytest.mark.parametrize(("modules", "stream"), [("proprietary", "580-dkms"), ("open", "580-open")])
@pytest.mark.parametrize("os_key", DNF_OSES)
def test_driver_dnf_install_reboot_if_needed(host: Host, os_key: str, modules: str, stream: str) -> None:
    host.set_os(os_key)
    env = {"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580", "KERNEL_MODULES": modules}
    env["REBOOT"] = "if-needed"
    result = host.run("install-driver", **env)
    assert result.returncode == 16, result.stderr
    assert "REBOOTING" in result.stderr
    assert host.called("curl")[0].endswith(
        "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/cuda-rhel9.repo"
    )
    assert (host.root / "etc/yum.repos.d/cuda-rhel9.repo").is_file()
    locked = "nvidia-driver-580.65.06-1.el9 nvidia-driver-cuda-580.65.06-1.el9"
    assert host.called("dnf") == [
        f"dnf module enable -y nvidia-driver:{stream}",
        "dnf install -y kernel-devel-5.14.0-427.el9.x86_64 kernel-headers",
        "dnf install -y nvidia-driver nvidia-driver-cuda",
        "dnf --version",
        "dnf install -y python3-dnf-plugin-versionlock",
        f"dnf versionlock add {locked}",  # held before the reboot
    ]
    assert host.called("dracut") == ["dracut --force"]
    assert host.called("systemctl") == ["systemctl reboot"]

    after_reboot = host.run("install-driver", **env)
    assert after_reboot.returncode == 0, after_reboot.stderr
    assert after_reboot.stdout == "580.65.06\n"
    assert f"already held (dnf): {locked}" in after_reboot.stderr
    assert [c.split()[0] for c in host.calls()] == ["nvidia-smi", "rpm"]  # nothing installed, nothing locked


def test_driver_already_working_is_untouched(host: Host) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580", REBOOT="if-needed")
    assert result.returncode == 0, result.stderr
    assert "nothing to install" in result.stderr
    assert "no installed package of the NVIDIA 580 driver" in result.stderr  # nothing in the dpkg stub
    assert written_paths_under_root(host) == {"etc/os-release"}
    assert [c.split()[0] for c in host.calls()] == ["nvidia-smi", "dpkg-query"]


def test_driver_other_branch_is_upgraded(host: Host) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    host.env["STUB_DRIVER_VERSION"] = "550.144.03"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert result.returncode == 15
    assert "apt-get install -y nvidia-driver-580-server" in host.calls()


def test_driver_dnf_other_branch_installed_is_replaced(host: Host) -> None:
    host.set_os("rocky9")
    (host.state / "pkg-nvidia-driver").touch()
    host.env["STUB_RPM_VERSION"] = "550.144.03"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert result.returncode == 15
    assert "dnf install -y nvidia-driver nvidia-driver-cuda" in host.calls()


def test_driver_reboot_failure(host: Host) -> None:
    host.env["STUB_SYSTEMCTL_FAIL"] = "1"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580", REBOOT="if-needed")
    assert_fails(result, 15, "systemctl reboot failed")


def test_driver_install_failure(host: Host) -> None:
    host.env["STUB_APT_FAIL"] = "1"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 13, "apt-get update failed")


def test_driver_dnf_repo_download_failure(host: Host) -> None:
    host.set_os("rhel9")
    host.env["STUB_CURL_FAIL"] = "1"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 12, "cuda-rhel9.repo", "developer.download.nvidia.com")


def test_driver_verify(host: Host) -> None:
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert_fails(result, 14, "nvidia-smi failed")
    host.env["STUB_NVIDIA_SMI"] = "ok"
    ok = host.run("install-driver", DRIVER_ACTION="verify")
    assert ok.returncode == 0 and ok.stdout == "580.65.06\n"
    skipped = host.run("install-driver", DRIVER_ACTION="skip")
    assert skipped.returncode == 0 and host.calls() == []


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"DRIVER_ACTION": "upgrade"}, "DRIVER_ACTION"),
        ({"DRIVER_ACTION": "install", "DRIVER_BRANCH": "latest"}, "DRIVER_BRANCH"),
        ({"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580", "KERNEL_MODULES": "nouveau"}, "KERNEL_MODULES"),
        ({"DRIVER_ACTION": "install", "DRIVER_BRANCH": "580", "REBOOT": "always"}, "REBOOT"),
        ({"DRIVER_ACTION": "verify", "DRIVER_HOLD": "true"}, "DRIVER_HOLD"),
    ],
)
def test_driver_bad_parameters(host: Host, env: dict[str, str], word: str) -> None:
    assert_fails(host.run("install-driver", **env), 19, word)
    assert host.calls() == []


# --- install-driver: holding the driver packages, telling a version mismatch apart ----------------------

# An Ubuntu 22.04 host running the 580 server driver, as dpkg lists it: the branch's packages (the DKMS
# and the precompiled per-kernel module both), a leftover library of the 550 branch, and NVIDIA's and
# others' packages that are not the driver, some with versions that look like a driver's.
UBUNTU_580 = {
    "nvidia-driver-580-server": "580.65.06-0ubuntu0.22.04.1",
    "libnvidia-compute-580-server": "580.65.06-0ubuntu0.22.04.1",
    "libnvidia-compute-580-server:i386": "580.65.06-0ubuntu0.22.04.1",
    "nvidia-utils-580-server": "580.65.06-0ubuntu0.22.04.1",
    "nvidia-dkms-580-server": "580.65.06-0ubuntu0.22.04.1",
    "nvidia-kernel-common-580-server": "580.65.06-0ubuntu0.22.04.1",
    "nvidia-firmware-580-server-580.65.06": "580.65.06-0ubuntu0.22.04.1",
    "linux-modules-nvidia-580-server-6.8.0-60-generic": "6.8.0-60.63~22.04.1",
}
UBUNTU_OTHERS = {
    "linux-modules-nvidia-580-server-generic-hwe-22.04": "6.8.0-60.63~22.04.1",  # the meta: a new kernel needs it
    "libnvidia-compute-550-server": "550.163.01-0ubuntu0.22.04.1",
    "nvidia-container-toolkit": "1.17.8-1",
    "libnvidia-container1": "1.17.8-1",
    "nvidia-prime": "0.8.17.1",
    "nvidia-settings": "510.47.03-0ubuntu1",
    "libcudart12": "12.0.146~12.0.1-4build4",
    "cuda-toolkit-12-8": "12.8.1-1",
    "linux-image-6.8.0-60-generic": "6.8.0-60.63~22.04.1",
    "libc6": "2.35-0ubuntu3.10",
    "tool-580": "580.1-1",
}
# Rocky 9 with NVIDIA's CUDA repository (module stream 580-dkms) and the container toolkit.
ROCKY_580 = {
    "nvidia-driver": "580.65.06-1.el9",
    "nvidia-driver-cuda": "580.65.06-1.el9",
    "nvidia-driver-cuda-libs": "580.65.06-1.el9",
    "nvidia-driver-libs": "580.65.06-1.el9",
    "kmod-nvidia-latest-dkms": "580.65.06-1.el9",
    "nvidia-kmod-common": "580.65.06-1.el9",
    "libnvidia-ml": "580.65.06-1.el9",
}
ROCKY_OTHERS = {
    "nvidia-container-toolkit": "1.17.8-1",
    "libnvidia-container1": "1.17.8-1",
    "dnf-plugin-nvidia": "2.2-1.el9",
    "kernel": "5.14.0-427.el9",
    "python3": "3.9.18-3.el9",
}
DNF_LOCKS = "etc/dnf/plugins/versionlock.list"


def install_packages(host: Host, packages: dict[str, str], held: tuple[str, ...] = ()) -> None:
    """Put packages in the stubs' dpkg/rpm database (name -> version), some of them held (apt)."""
    for name, version in packages.items():
        (host.state / f"pkg-{name}").write_text(version)
    for name in held:
        (host.state / f"hold-{name}").touch()


def held_packages(host: Host) -> set[str]:
    return {path.name.removeprefix("hold-") for path in host.state.glob("hold-*")}


def test_driver_verify_holds_the_running_branch_and_nothing_else(host: Host) -> None:
    install_packages(host, {**UBUNTU_580, **UBUNTU_OTHERS})
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "580.65.06\n"  # stdout stays the version alone
    [hold] = host.called("apt-mark")
    assert hold == "apt-mark hold " + " ".join(sorted(UBUNTU_580))
    assert held_packages(host) == set(UBUNTU_580)
    expected = (
        f"==> held the NVIDIA 580 driver packages at their installed versions (apt-mark hold): {hold[14:]}"
    )
    assert expected in result.stderr.splitlines()

    again = host.run("install-driver", DRIVER_ACTION="verify")  # idempotent: reported, not redone
    assert again.returncode == 0, again.stderr
    assert not host.called("apt-mark")
    assert f"==> already held (apt-mark): {hold[14:]}" in again.stderr.splitlines()


def test_driver_verify_holds_debian_packages_by_their_version(host: Host) -> None:
    """Debian's and NVIDIA's Debian packages carry the branch in the version only (an epoch too, here)."""
    host.set_os("debian12")
    branch = {
        "nvidia-driver": "535.247.01-1~deb12u1",
        "libcuda1": "535.247.01-1~deb12u1",
        "libnvidia-ml1": "1:535.247.01-1~deb12u1",
        "nvidia-kernel-dkms": "535.247.01-1~deb12u1",
        "firmware-nvidia-gsp": "535.247.01-1~deb12u1",
        "nvidia-smi": "535.247.01-1~deb12u1",
    }
    install_packages(host, {**branch, "nvidia-settings": "525.125.06-1", "libcudart12": "12.0.146~12.0.1-4"})
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_DRIVER_VERSION="535.247.01")
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 0, result.stderr
    assert held_packages(host) == set(branch)


def test_driver_hold_can_be_turned_off(host: Host) -> None:
    install_packages(host, UBUNTU_580)
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="verify", DRIVER_HOLD="no")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in host.calls()] == ["nvidia-smi"]
    assert (
        "DRIVER_HOLD=no (provision.driverHold: false): the NVIDIA driver packages are not held"
        in result.stderr
    )


def test_driver_hold_needs_root_only_for_what_is_not_held(host: Host) -> None:
    install_packages(host, UBUNTU_580, held=("nvidia-driver-580-server",))
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_UID="1000", STUB_SUDO_DENY="1")
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert_fails(
        result, 11, "holding the NVIDIA 580 driver packages needs root", "provision.driverHold: false"
    )
    rest = " ".join(sorted(set(UBUNTU_580) - {"nvidia-driver-580-server"}))
    assert f"NEXT: have an administrator run 'sudo apt-mark hold {rest}' once" in result.stderr
    assert not host.called("apt-mark")
    assert result.stdout == ""

    install_packages(host, {}, held=tuple(UBUNTU_580))  # the administrator did
    again = host.run("install-driver", DRIVER_ACTION="verify")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "580.65.06\n"


def test_driver_hold_failure(host: Host) -> None:
    install_packages(host, UBUNTU_580)
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_APT_MARK_FAIL="1")
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert_fails(result, 13, "holding the NVIDIA 580 driver packages failed (apt-mark hold, exit 100)")


def test_driver_verify_on_an_os_it_cannot_hold_on(host: Host) -> None:
    host.set_os("alpine")
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 0, result.stderr
    assert "cannot hold the driver packages on this operating system" in result.stderr


def test_driver_install_releases_other_branches_and_holds_the_new_one(host: Host) -> None:
    old = {name.replace("580", "550"): v.replace("580.65.06", "550.163.01") for name, v in UBUNTU_580.items()}
    install_packages(host, {**old, "libc6": "2.35-0ubuntu3.10"}, held=(*old, "libc6"))
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_DRIVER_VERSION="550.163.01")
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 15, "reboot")  # the 550 module stays loaded until the reboot
    calls = [c for c in host.calls() if c.startswith(("apt-mark", "apt-get install"))]
    assert calls == [
        "apt-mark unhold " + " ".join(sorted(old)),
        "apt-get install -y nvidia-driver-580-server",
        "apt-mark hold nvidia-driver-580-server",
    ]
    assert held_packages(host) == {"libc6", "nvidia-driver-580-server"}  # never anything but NVIDIA's


def test_driver_install_holds_before_asking_for_the_reboot(host: Host) -> None:
    install_packages(host, UBUNTU_580)  # installed, not loaded
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 15, "installed but not loaded")
    assert not host.called("apt-get")
    assert held_packages(host) == set(UBUNTU_580)


@pytest.mark.parametrize("os_key", DNF_OSES)
def test_driver_dnf_verify_locks_the_running_branch(host: Host, os_key: str) -> None:
    host.set_os(os_key)
    install_packages(host, {**ROCKY_580, **ROCKY_OTHERS})
    locks = host.root / DNF_LOCKS
    locks.parent.mkdir(parents=True)
    locks.write_text(
        "# Added by an administrator\nkernel-0:5.14.0-427.el9.*\n!nvidia-driver-3:590.1-1.el9.*\n"
    )
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 0, result.stderr
    specs = sorted(f"{name}-{version}" for name, version in ROCKY_580.items())
    assert host.called("dnf") == [
        "dnf --version",
        "dnf install -y python3-dnf-plugin-versionlock",
        "dnf versionlock add " + " ".join(specs),
    ]
    lines = locks.read_text().splitlines()
    assert lines[:3] == [
        "# Added by an administrator",
        "kernel-0:5.14.0-427.el9.*",
        "!nvidia-driver-3:590.1-1.el9.*",
    ]
    assert lines[3:] == [f"{name}-3:{version}.*" for name, version in sorted(ROCKY_580.items())]

    again = host.run("install-driver", DRIVER_ACTION="verify")
    assert again.returncode == 0, again.stderr
    assert not host.called("dnf")
    assert "==> already held (dnf): " + " ".join(specs) in again.stderr.splitlines()


def test_driver_dnf_lock_failure(host: Host) -> None:
    host.set_os("rocky9")
    install_packages(host, ROCKY_580)
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_VERSIONLOCK_FAIL="1")
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert_fails(result, 13, "holding the NVIDIA 580 driver packages failed (dnf versionlock add, exit 1)")
    assert result.stdout == ""


def test_driver_dnf5_has_versionlock_built_in_and_its_toml(host: Host) -> None:
    host.set_os("rocky9")
    install_packages(host, ROCKY_580)
    toml = host.root / "etc/dnf/versionlock.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text(
        'version = "1.0"\n[[packages]]\nname = "nvidia-driver"\n[[packages.conditions]]\nkey = "evr"\n'
        'comparator = "="\nvalue = "3:580.65.06-1.el9"\n'
    )
    host.env.update(STUB_NVIDIA_SMI="ok", STUB_DNF_VERSION="dnf5 version 5.2.6.2")
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 0, result.stderr
    rest = sorted(f"{name}-{version}" for name, version in ROCKY_580.items() if name != "nvidia-driver")
    assert host.called("dnf") == ["dnf --version", "dnf versionlock add " + " ".join(rest)]
    assert "==> already held (dnf): nvidia-driver-580.65.06-1.el9" in result.stderr.splitlines()


def test_driver_dnf_install_releases_locks_of_other_branches(host: Host) -> None:
    host.set_os("rocky9")
    locks = host.root / DNF_LOCKS
    locks.parent.mkdir(parents=True)
    locks.write_text(
        "kernel-0:5.14.0-427.el9.*\nnvidia-driver-3:550.144.03-1.el9.*\nlibnvidia-ml-3:550.144.03-1.el9.*\n"
    )
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 15, "reboot")
    dnf = host.called("dnf")
    assert dnf[0] == "dnf versionlock delete libnvidia-ml nvidia-driver"
    assert dnf[-1] == "dnf versionlock add nvidia-driver-580.65.06-1.el9 nvidia-driver-cuda-580.65.06-1.el9"
    assert locks.read_text().splitlines() == [
        "kernel-0:5.14.0-427.el9.*",
        "nvidia-driver-3:580.65.06-1.el9.*",
        "nvidia-driver-cuda-3:580.65.06-1.el9.*",
    ]


PROPRIETARY_MODULE = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:25 UTC 2025\n"
    "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n"
)
OPEN_MODULE = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  580.65.06  Release Build  "
    "(dvs-builder@U22-I3-AM02-24-3)  Sun Jul 27 06:54:41 UTC 2025\n"
    "GCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n"
)


def fake_driver_files(root: Path, module: str | None, libdir: str, *libraries: str) -> None:
    """/proc/driver/nvidia/version (None: no module loaded) and libnvidia-ml.so.<version> files."""
    if module is not None:
        (root / "proc/driver/nvidia").mkdir(parents=True, exist_ok=True)
        (root / "proc/driver/nvidia/version").write_text(module)
    (root / libdir).mkdir(parents=True, exist_ok=True)
    (root / libdir / "libnvidia-ml.so.1").touch()
    for version in libraries:
        (root / libdir / f"libnvidia-ml.so.{version}").touch()


@pytest.mark.parametrize(
    ("module", "libdir"),
    [(PROPRIETARY_MODULE, "usr/lib/x86_64-linux-gnu"), (OPEN_MODULE, "usr/lib/aarch64-linux-gnu")],
)
def test_driver_verify_names_a_version_mismatch(host: Host, module: str, libdir: str) -> None:
    fake_driver_files(host.root, module, libdir, "580.82.07")
    host.env["STUB_NVIDIA_SMI"] = "fail"
    result = host.run("install-driver", DRIVER_ACTION="verify")
    assert result.returncode == 15, result.stderr
    assert result.stderr.splitlines() == [
        "ERROR: driver/library version mismatch: the loaded NVIDIA kernel module is 580.65.06 but the installed "
        "library is libnvidia-ml.so.580.82.07 (the driver packages were replaced under the running driver)",
        "NEXT: reboot the host (sudo systemctl reboot) to load the installed driver, or reinstall the 580.65.06 "
        "driver packages; then run pulumi up again, which holds them",
    ]
    assert not host.called("apt-mark") and not host.called("systemctl")


@pytest.mark.parametrize(
    ("module", "libraries"),
    [(PROPRIETARY_MODULE, ("580.65.06",)), (None, ("580.82.07",)), (PROPRIETARY_MODULE, ())],
)
def test_driver_verify_without_a_mismatch_is_not_working(
    host: Host, module: str | None, libraries: tuple[str, ...]
) -> None:
    fake_driver_files(host.root, module, "usr/lib64", *libraries)
    host.env["STUB_NVIDIA_SMI"] = "fail"
    assert_fails(host.run("install-driver", DRIVER_ACTION="verify"), 14, "nvidia-smi failed")


def test_driver_install_logs_the_mismatch_and_asks_for_the_reboot(host: Host) -> None:
    install_packages(host, UBUNTU_580)
    fake_driver_files(
        host.root,
        PROPRIETARY_MODULE.replace("580.65.06", "580.76.05"),
        "usr/lib/x86_64-linux-gnu",
        "580.65.06",
    )
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580")
    assert_fails(result, 15, "installed but not loaded")
    assert (
        "==> driver/library version mismatch: the loaded kernel module is 580.76.05, the installed library "
        "libnvidia-ml.so.580.65.06"
    ) in result.stderr.splitlines()


# --- configure-runtime ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "config", "ctk_runtime", "restart"),
    [
        ("docker", "etc/docker/daemon.json", "docker", "systemctl restart docker"),
        ("containerd", "etc/containerd/config.toml", "containerd", "systemctl restart containerd"),
    ],
)
def test_configure_runtime_restarts_only_on_change(
    host: Host, runtime: str, config: str, ctk_runtime: str, restart: str
) -> None:
    result = host.run("configure-runtime", CONTAINER_RUNTIME=runtime)
    assert result.returncode == 0, result.stderr
    assert host.called("nvidia-ctk") == [
        f"nvidia-ctk runtime configure --runtime={ctk_runtime} --config={host.root}/{config}"
    ]
    assert "nvidia-container-runtime" in (host.root / config).read_text()
    restarts = [c for c in host.calls() if c.startswith(("systemctl", "snap"))]
    assert restarts == [restart]

    again = host.run("configure-runtime", CONTAINER_RUNTIME=runtime)
    assert again.returncode == 0, again.stderr
    assert "no restart" in again.stderr
    assert not [c for c in host.calls() if c.startswith(("systemctl", "snap", "microk8s"))]


MICROK8S_TEMPLATE = (
    Path(__file__).resolve().parents[1] / "upstream" / "microk8s-1.30-containerd-template.toml"
)


def render_like_microk8s(template: str) -> dict[str, Any]:
    """microk8s 1.30 wrappers/run-containerd-with-args (lines 49-58): sed over the template, then TOML."""
    values = {
        "${SNAP}": "/snap/microk8s/7000",
        "${SNAP_DATA}": "/var/snap/microk8s/7000",
        "${SNAPSHOTTER}": "overlayfs",
        "${RUNTIME}": "runc",
        "${RUNTIME_TYPE}": "io.containerd.runc.v2",
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    assert "${" not in template, "a placeholder MicroK8s does not render"
    return tomllib.loads(template)


def test_microk8s_gets_the_nvidia_runtime_in_its_real_template(host: Host) -> None:
    """The real MicroK8s 1.30 template, changed by the script, still renders into a containerd config with
    every original runtime and setting, plus `nvidia` shaped like the template's own GPU runtime; no
    drop-in import (what nvidia-ctk 1.18+ would add with unrendered placeholders). Idempotent."""
    config = host.root / "var/snap/microk8s/current/args/containerd-template.toml"
    config.parent.mkdir(parents=True)
    original = MICROK8S_TEMPLATE.read_text()
    config.write_text(original)
    result = host.run("configure-runtime", CONTAINER_RUNTIME="microk8s")
    assert result.returncode == 0, result.stderr
    assert not host.called("nvidia-ctk runtime"), "nvidia-ctk would write a drop-in from 1.18 on"
    assert host.called("snap") == ["snap restart microk8s"]
    changed = config.read_text()
    assert changed.startswith(original), "nothing of the template is changed, only added to"
    before, after = render_like_microk8s(original), render_like_microk8s(changed)
    cri_before = before["plugins"]["io.containerd.grpc.v1.cri"]
    cri_after = after["plugins"]["io.containerd.grpc.v1.cri"]
    runtimes = cri_after["containerd"].pop("runtimes")
    assert set(runtimes) == {"runc", "nvidia-container-runtime", "kata", "nvidia"}
    assert runtimes["nvidia"] == runtimes["nvidia-container-runtime"]
    assert runtimes["nvidia"]["runtime_type"] == runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"
    cri_before["containerd"].pop("runtimes")
    assert cri_after == cri_before and "imports" not in after
    assert {k: v for k, v in after.items() if k != "plugins"} == {
        k: v for k, v in before.items() if k != "plugins"
    }

    again = host.run("configure-runtime", CONTAINER_RUNTIME="microk8s")
    assert again.returncode == 0 and "no restart" in again.stderr
    assert not host.called("snap") and config.read_text() == changed


@pytest.mark.parametrize(
    ("runtimes", "dockerd_age_s", "hook_age_s", "reason"),
    [
        ('{"runc":{}}', "", None, "the running dockerd does not list the nvidia runtime"),
        ('{"nvidia":{},"runc":{}}', "3600", 60, "dockerd started before"),
        ('{"nvidia":{},"runc":{}}', "60", 3600, None),
        ('{"nvidia":{},"runc":{}}', "", 60, None),  # no dockerd age known: nothing to compare
    ],
)
def test_configure_runtime_restarts_docker_that_cannot_run_gpu_containers(
    host: Host, runtimes: str, dockerd_age_s: str, hook_age_s: int | None, reason: str | None
) -> None:
    """daemon.json unchanged, yet the running dockerd lacks the runtime or started before the hook existed."""
    (host.root / "etc/docker").mkdir(parents=True)
    (host.root / "etc/docker/daemon.json").write_text("# runtimes.nvidia = nvidia-container-runtime\n")
    if hook_age_s is not None:
        hook = Path(host.env["PATH"].split(":")[0]) / "nvidia-container-runtime-hook"
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
        os.utime(hook, (time.time() - hook_age_s, time.time() - hook_age_s))
    host.env["STUB_DOCKER_RUNTIMES"] = runtimes
    host.env["STUB_DOCKERD_ETIMES"] = dockerd_age_s
    result = host.run("configure-runtime", CONTAINER_RUNTIME="docker")
    assert result.returncode == 0, result.stderr
    if reason is None:
        assert "no restart" in result.stderr and not host.called("systemctl")
    else:
        assert f"{reason}" in result.stderr
        assert host.called("systemctl") == ["systemctl restart docker"]


def test_configure_runtime_failures(host: Host) -> None:
    host.env["STUB_CTK_CONFIGURE_FAIL"] = "1"
    result = host.run("configure-runtime", CONTAINER_RUNTIME="docker")
    assert_fails(result, 17, "nvidia-ctk runtime configure --runtime=docker failed")
    assert not host.called("systemctl")
    del host.env["STUB_CTK_CONFIGURE_FAIL"]
    host.env["STUB_SYSTEMCTL_FAIL"] = "1"
    assert_fails(host.run("configure-runtime", CONTAINER_RUNTIME="docker"), 17, "systemctl restart docker")
    assert_fails(host.run("configure-runtime", CONTAINER_RUNTIME="microk8s"), 17, "MicroK8s installed")
    assert_fails(host.run("configure-runtime", CONTAINER_RUNTIME="podman"), 19, "CONTAINER_RUNTIME")


# --- verify-gpu ----------------------------------------------------------------------------------

IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"


def test_verify_gpu_docker(host: Host) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="docker")
    assert result.returncode == 0, result.stderr
    assert host.called("docker") == [f"docker run --rm --runtime=nvidia --gpus all {IMAGE} nvidia-smi"]
    host.env["STUB_DOCKER_FAIL"] = "1"
    assert_fails(host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="docker"), 18, IMAGE)


@pytest.mark.parametrize(("runtime", "ctr"), [("containerd", "ctr"), ("microk8s", "microk8s ctr")])
def test_verify_gpu_ctr(host: Host, runtime: str, ctr: str) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME=runtime)
    assert result.returncode == 0, result.stderr
    calls = [c for c in host.calls() if c.startswith(("ctr", "microk8s"))]
    assert calls[0] == f"{ctr} image pull docker.io/{IMAGE}"
    assert calls[1].startswith(f"{ctr} run --rm --gpus 0 docker.io/{IMAGE} gpu-check-")
    assert calls[1].endswith(" nvidia-smi")
    host.env["STUB_CTR_FAIL"] = "1"
    assert_fails(host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME=runtime), 18, runtime)


def test_verify_gpu_failures(host: Host) -> None:
    result = host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="docker")
    assert_fails(result, 14, "nvidia-smi failed on the host")
    assert not host.called("docker")
    assert_fails(host.run("verify-gpu", CUDA_IMAGE="", CONTAINER_RUNTIME="docker"), 19, "CUDA_IMAGE")
    assert_fails(host.run("verify-gpu", CUDA_IMAGE=IMAGE, CONTAINER_RUNTIME="lxc"), 19, "CONTAINER_RUNTIME")


# --- prepare-dirs --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_dirs_owner_and_mode(host: Host) -> None:
    (host.root / "srv").mkdir(mode=0o755)
    dirs = "/srv/models/hf\n\n/srv/cache/gpu-deploy\n"
    result = host.run("prepare-dirs", ROOT="/srv", DIRS=dirs, OWNER="1001:1002")
    assert result.returncode == 0, result.stderr
    for rel in ("srv/models/hf", "srv/cache/gpu-deploy"):
        info = (host.root / rel).stat()
        assert (info.st_uid, info.st_gid) == (1001, 1002)
        assert stat.S_IMODE(info.st_mode) == 0o750
    parent = (host.root / "srv/models").stat()
    assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (0, 0o755)
    for path in host.root.rglob("*"):
        assert not path.stat().st_mode & stat.S_IWOTH, path

    (host.root / "srv/models/hf/model.bin").write_text("weights")
    again = host.run("prepare-dirs", ROOT="/srv", DIRS=dirs, OWNER="1001:1002")
    assert again.returncode == 0, again.stderr
    assert "already 1001:1002 mode 750" in again.stderr
    assert (host.root / "srv/models/hf/model.bin").read_text() == "weights"

    (host.root / "srv/models/hf").chmod(0o777)  # drift is repaired, not widened
    fixed = host.run("prepare-dirs", ROOT="/srv", DIRS="/srv/models/hf", OWNER="1001:1002", MODE="0755")
    assert fixed.returncode == 0, fixed.stderr
    assert stat.S_IMODE((host.root / "srv/models/hf").stat().st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_dirs_makes_existing_contents_the_owners(host: Host, tmp_path: Path) -> None:
    """A SQLite database left by the old compose setup (root-owned, read-only) becomes writable for the
    service; a symlink planted inside is re-owned itself and never followed; nothing turns world-writable."""
    data = host.root / "srv/app/data"
    (data / "sub").mkdir(parents=True)
    (data / "app.db").write_text("db")
    (data / "app.db").chmod(0o444)
    (data / "sub/shared.log").write_text("log")
    (data / "sub/shared.log").chmod(0o666)
    (data / "sub").chmod(0o555)
    outside = tmp_path / "outside"
    outside.write_text("not the service's")
    outside.chmod(0o600)
    (data / "escape").symlink_to(outside)

    result = host.run("prepare-dirs", ROOT="/srv/app", DIRS="/srv/app/data", OWNER="1001:1002")
    assert result.returncode == 0, result.stderr
    assert "re-owned 4 existing entries to 1001:1002, made 3 owner-writable" in result.stderr
    for path in [data / "app.db", data / "sub", data / "sub/shared.log"]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (1001, 1002), path
        assert info.st_mode & stat.S_IWUSR, path
        assert not info.st_mode & stat.S_IWOTH, path
    assert stat.S_IMODE((data / "app.db").stat().st_mode) == 0o644
    link = (data / "escape").lstat()
    assert (link.st_uid, link.st_gid) == (1001, 1002)
    target = outside.stat()
    assert (target.st_uid, stat.S_IMODE(target.st_mode)) == (0, 0o600)

    again = host.run("prepare-dirs", ROOT="/srv/app", DIRS="/srv/app/data", OWNER="1001:1002")
    assert again.returncode == 0 and "existing entries" not in again.stderr


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"DIRS": "srv/models"}, "not an absolute path"),
        ({"DIRS": "/srv/../etc"}, "contains '..'"),
        ({"DIRS": "/srv/models/.."}, "contains '..'"),
        ({"DIRS": "/"}, "'/' itself"),
        ({"DIRS": "//"}, "'/' itself"),
        ({"DIRS": "/ok\nrelative"}, "not an absolute path"),
        ({"DIRS": "\n"}, "no directories"),
        ({"DIRS": "/srv/x", "OWNER": "app:app"}, "OWNER"),
        ({"DIRS": "/srv/x", "OWNER": ""}, "OWNER"),
        ({"DIRS": "/srv/x", "MODE": "0777"}, "world-writable"),
        ({"DIRS": "/srv/x", "MODE": "0752"}, "world-writable"),
        ({"DIRS": "/srv/x", "MODE": "u+rwx"}, "MODE"),
        ({"DIRS": "/srv/x", "MODE": "1777"}, "MODE"),
        ({"DIRS": "/srv/x", "ROOT": ""}, "ROOT must be an absolute directory"),
        ({"DIRS": "/srv/x", "ROOT": "/"}, "ROOT must be an absolute directory"),
        ({"DIRS": "/etc/ssh", "ROOT": "/srv"}, "outside the stack's root /srv"),
        ({"DIRS": "/srv2/x", "ROOT": "/srv"}, "outside the stack's root /srv"),
    ],
)
def test_prepare_dirs_refuses_bad_input(host: Host, env: dict[str, str], word: str) -> None:
    variables = {"OWNER": "1001:1001", "ROOT": "/srv", **env}
    assert_fails(host.run("prepare-dirs", **variables), 19, word)
    assert written_paths_under_root(host) == {"etc/os-release"}
    assert sorted(p.name for p in host.root.iterdir()) == ["etc"]


def test_prepare_dirs_refuses_a_file(host: Host) -> None:
    (host.root / "srv").mkdir()
    (host.root / "srv/data").write_text("x")
    assert_fails(host.run("prepare-dirs", ROOT="/srv", DIRS="/srv/data", OWNER="0:0"), 19, "not a directory")
    assert (host.root / "srv/data").read_text() == "x"


# --- run-verified --------------------------------------------------------------------------------


@dataclass
class Runner:
    home: Path
    directory: Path
    env: dict[str, str]

    def run(self, files: str, *command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        line = command_with_script(
            "run-verified", {"RUNNER_DIR": ".gpu-deploy/prod", "RUNNER_FILES": files}, command
        )
        return subprocess.run(
            ["bash", "-c", line],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    home = tmp_path / "home"
    directory = home / ".gpu-deploy" / "prod"
    directory.mkdir(parents=True)
    home.chmod(0o755)
    (home / ".gpu-deploy").chmod(0o755)
    (directory / "tool.py").write_text("import sys\nprint('ran', sys.stdin.read())\n")
    (directory / "lib.py").write_text("X = 1\n")
    return Runner(home, directory, {"PATH": os.environ["PATH"], "HOME": str(home)})


def sums(runner: Runner, *names: str) -> str:
    return "\n".join(f"{hashlib.sha256((runner.directory / n).read_bytes()).hexdigest()}  {n}" for n in names)


def test_run_verified_runs_what_was_copied_with_stdin(runner: Runner) -> None:
    result = runner.run(sums(runner, "tool.py", "lib.py"), sys.executable, "./tool.py", stdin="checks")
    assert (result.returncode, result.stdout) == (0, "ran checks\n"), result.stderr
    assert stat.S_IMODE(runner.directory.stat().st_mode) == 0o700, "the runner directory is made private"


@pytest.mark.parametrize(
    ("tamper", "word"),
    [
        (
            lambda r: (r.directory / "tool.py").write_text("print('swapped')\n"),
            "is not the file that was copied",
        ),
        (lambda r: (r.directory / "lib.py").unlink(), "lib.py is missing"),
        (lambda r: (r.directory / "lib.py").chmod(0o666), "writable by group or others"),
        (lambda r: (r.home / ".gpu-deploy").chmod(0o777), "writable by group or others (mode 777)"),
        (lambda r: r.home.chmod(0o775), "writable by group or others (mode 775)"),
    ],
)
def test_run_verified_refuses_a_runner_it_cannot_trust(runner: Runner, tamper: Any, word: str) -> None:
    files = sums(runner, "tool.py", "lib.py")
    tamper(runner)
    marker = runner.home / "ran"
    result = runner.run(files, "touch", str(marker))
    assert_fails(result, 21, word)
    assert "NEXT: remove" in result.stderr
    assert not marker.exists(), "nothing ran"


def test_run_verified_refuses_a_link_or_a_file_of_another_user(runner: Runner, tmp_path: Path) -> None:
    files = sums(runner, "tool.py")
    elsewhere = tmp_path / "planted.py"
    elsewhere.write_bytes((runner.directory / "tool.py").read_bytes())  # same content, another place
    (runner.directory / "tool.py").unlink()
    (runner.directory / "tool.py").symlink_to(elsewhere)
    assert_fails(runner.run(files, "true"), 21, "tool.py is missing or not a regular file")
    if os.geteuid() == 0:
        (runner.directory / "tool.py").unlink()
        (runner.directory / "tool.py").write_bytes(elsewhere.read_bytes())
        os.chown(runner.directory / "tool.py", 4321, 4321)
        assert_fails(runner.run(files, "true"), 21, "belongs to uid 4321")


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"RUNNER_FILES": "nothex  tool.py"}, "is not 'SHA256  NAME'"),
        ({"RUNNER_FILES": "0" * 64 + "  ../x"}, "NAME"),
    ],
)
def test_run_verified_refuses_bad_parameters(runner: Runner, env: dict[str, str], word: str) -> None:
    assert_fails(runner.run(env["RUNNER_FILES"], "true"), 19, word)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_dirs_never_follows_a_planted_symlink(host: Host, tmp_path: Path) -> None:
    """A nested volume (data/models) whose parent the container user owns: the user replaced models with
    a link to a system directory. Nothing is created, re-owned or re-moded through it."""
    outside = tmp_path / "etc-like"
    outside.mkdir()
    outside.chmod(0o755)
    data = host.root / "srv/app/data"
    data.mkdir(parents=True)
    (data / "models").symlink_to(outside)
    result = host.run(
        "prepare-dirs", ROOT="/srv/app", DIRS="/srv/app/data\n/srv/app/data/models", OWNER="1001:1001"
    )
    assert_fails(result, 19, "/srv/app/data/models is a symlink")
    info = outside.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755), "the link's target is untouched"
    (data / "models").unlink()
    (host.root / "srv/app").rename(host.root / "srv/real-app")
    (host.root / "srv/app").symlink_to(host.root / "srv/real-app")
    assert_fails(
        host.run("prepare-dirs", ROOT="/srv/app", DIRS="/srv/app/data", OWNER="1001:1001"),
        19,
        "must be a real directory",
    )
