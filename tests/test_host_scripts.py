"""Run the host provisioning scripts for real against a fake root and stub commands.

Every test executes exactly the text `script(name)` returns, as `bash -c command_line(env)` with
that text on stdin (what `command.remote.Command` does over SSH). HOST_ROOT points the scripts at
a temporary directory; a stub bin directory first on PATH records every call in calls.log and
keeps package/driver state in files, so installs, restarts and reboots are observable.
"""

from __future__ import annotations

import hashlib
import os
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

from components.host_scripts import SCRIPTS_DIR, command_line, command_with_script, script, script_names
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
exit 0
""",
    "dpkg-query": """
p="${!#}"
[ -e "$STATE/pkg-$p" ] && { echo "install ok installed"; exit 0; }
echo "dpkg-query: no packages found matching $p" >&2; exit 1
""",
    "rpm": """
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


# --- host_scripts.py ---------------------------------------------------------------------------


def test_script_inlines_common_once() -> None:
    assert set(script_names()) == {
        "configure-runtime",
        "install-driver",
        "install-toolkit",
        "prepare-dirs",
        "run-verified",
        "verify-gpu",
    }
    for name in script_names():
        text = script(name)
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "BASH_SOURCE" not in text
        assert text.count("die() {") == 1
        assert text.count("readonly EXIT_BAD_PARAMS=19") == 1


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
def test_toolkit_dnf_install_then_idempotent(host: Host, os_key: str) -> None:
    host.set_os(os_key)
    result = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert result.returncode == 0, result.stderr
    assert len(host.called("curl")) == 1
    assert "stable/rpm/nvidia-container-toolkit.repo" in host.called("curl")[0]
    assert (host.root / "etc/yum.repos.d/nvidia-container-toolkit.repo").is_file()
    assert host.called("dnf") == ["dnf install -y nvidia-container-toolkit"]
    assert not host.called("apt-get") and not host.called("gpg")
    again = host.run("install-toolkit", TOOLKIT_ACTION="install")
    assert again.returncode == 0
    assert not host.called("dnf") and not host.called("curl")


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


def test_toolkit_package_failure(host: Host) -> None:
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
        ("prepare-dirs", {"DIRS": "/srv/models", "OWNER": "1001:1001"}),
    ]:
        result = host.run(name, **env)
        assert_fails(result, 11, "sudo -n", "passwordless sudo")
        assert not host.called("apt-get") and not host.called("nvidia-ctk runtime")


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
    assert host.called("dnf") == [
        f"dnf module enable -y nvidia-driver:{stream}",
        "dnf install -y kernel-devel-5.14.0-427.el9.x86_64 kernel-headers",
        "dnf install -y nvidia-driver nvidia-driver-cuda",
    ]
    assert host.called("dracut") == ["dracut --force"]
    assert host.called("systemctl") == ["systemctl reboot"]

    after_reboot = host.run("install-driver", **env)
    assert after_reboot.returncode == 0, after_reboot.stderr
    assert after_reboot.stdout == "580.65.06\n"
    assert host.calls() == ["nvidia-smi --query-gpu=driver_version --format=csv,noheader"]


def test_driver_already_working_is_untouched(host: Host) -> None:
    host.env["STUB_NVIDIA_SMI"] = "ok"
    result = host.run("install-driver", DRIVER_ACTION="install", DRIVER_BRANCH="580", REBOOT="if-needed")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert written_paths_under_root(host) == {"etc/os-release"}
    assert [c.split()[0] for c in host.calls()] == ["nvidia-smi"]


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
    ],
)
def test_driver_bad_parameters(host: Host, env: dict[str, str], word: str) -> None:
    assert_fails(host.run("install-driver", **env), 19, word)
    assert host.calls() == []


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


MICROK8S_TEMPLATE = Path(__file__).parent / "upstream" / "microk8s-1.30-containerd-template.toml"


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
    dirs = "/srv/models/hf\n\n/var/lib/gpu-deploy/cache\n"
    result = host.run("prepare-dirs", DIRS=dirs, OWNER="1001:1002")
    assert result.returncode == 0, result.stderr
    for rel in ("srv/models/hf", "var/lib/gpu-deploy/cache"):
        info = (host.root / rel).stat()
        assert (info.st_uid, info.st_gid) == (1001, 1002)
        assert stat.S_IMODE(info.st_mode) == 0o750
    parent = (host.root / "srv/models").stat()
    assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (0, 0o755)
    for path in host.root.rglob("*"):
        assert not path.stat().st_mode & stat.S_IWOTH, path

    (host.root / "srv/models/hf/model.bin").write_text("weights")
    again = host.run("prepare-dirs", DIRS=dirs, OWNER="1001:1002")
    assert again.returncode == 0, again.stderr
    assert "already 1001:1002 mode 750" in again.stderr
    assert (host.root / "srv/models/hf/model.bin").read_text() == "weights"

    (host.root / "srv/models/hf").chmod(0o777)  # drift is repaired, not widened
    fixed = host.run("prepare-dirs", DIRS="/srv/models/hf", OWNER="1001:1002", MODE="0755")
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

    result = host.run("prepare-dirs", DIRS="/srv/app/data", OWNER="1001:1002")
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

    again = host.run("prepare-dirs", DIRS="/srv/app/data", OWNER="1001:1002")
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
    ],
)
def test_prepare_dirs_refuses_bad_input(host: Host, env: dict[str, str], word: str) -> None:
    variables = {"OWNER": "1001:1001", **env}
    assert_fails(host.run("prepare-dirs", **variables), 19, word)
    assert written_paths_under_root(host) == {"etc/os-release"}
    assert sorted(p.name for p in host.root.iterdir()) == ["etc"]


def test_prepare_dirs_refuses_a_file(host: Host) -> None:
    (host.root / "srv").mkdir()
    (host.root / "srv/data").write_text("x")
    assert_fails(host.run("prepare-dirs", DIRS="/srv/data", OWNER="0:0"), 19, "not a directory")
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
