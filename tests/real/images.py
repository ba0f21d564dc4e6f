"""Base images without a registry: Debian bookworm root filesystems made with debootstrap, `docker import`ed.

- `gpu-deploy-test/bash:bookworm`: `debootstrap --variant=minbase bookworm` (bash, coreutils, dpkg, apt,
  perl-base as Debian's Essential set; no curl, wget, python3 or node).
- `gpu-deploy-test/python3:bookworm`: the same tree plus python3 (the interpreter and its standard library,
  no recommended packages: python3-minimal alone lacks json, urllib and argparse, which the smoke runner
  and the preflight import), installed by apt inside it from the package lists debootstrap just fetched:
  the same result as `debootstrap --include=python3`, with one debootstrap instead of two.

Each root filesystem is cached as a tarball under CACHE_DIR (GPU_DEPLOY_TEST_CACHE overrides), named by the
suite, the variant, the package list and a hash of this recipe, so a later run on the same machine only runs
`docker import`. Documentation, man pages, apt's lists and downloaded packages are left out of the tarballs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.real.engine import Engine
from tests.real.procs import SetupError, run_checked, unmount_under
from tests.real.requirements import find_program

SUITE = "bookworm"
VARIANT = "minbase"
RECIPE_VERSION = 1  # bump when the recipe below changes: the cache key changes with it
CACHE_DIR = Path(os.environ.get("GPU_DEPLOY_TEST_CACHE", "/var/cache/gpu-deploy-tests"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STRIP = (
    "var/lib/apt/lists",
    "var/cache/apt/archives",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


@dataclass(frozen=True)
class Rootfs:
    """One cached root filesystem and the image it becomes."""

    name: str
    image: str
    include: tuple[str, ...]

    @property
    def key(self) -> str:
        recipe = json.dumps([RECIPE_VERSION, SUITE, VARIANT, list(self.include), STRIP])
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
        packages = "".join(f"+{package}" for package in self.include)
        return f"{SUITE}-{VARIANT}{packages}-{digest}"

    def tarball(self, cache_dir: Path) -> Path:
        return cache_dir / "rootfs" / f"{self.key}.tar"


BASH = Rootfs(name="bash", image=f"gpu-deploy-test/bash:{SUITE}", include=())
PYTHON3 = Rootfs(name="python3", image=f"gpu-deploy-test/python3:{SUITE}", include=("python3",))
ROOTFS = (BASH, PYTHON3)


@dataclass(frozen=True)
class BaseImages:
    """The imported images: `bash` and `python3` are image references for `docker run`."""

    bash: str
    python3: str
    tarballs: dict[str, Path]
    built: bool  # True when this run had to debootstrap (cold cache)
    build_seconds: float
    import_seconds: float


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive apt already uses here for SUITE (GPU_DEPLOY_TEST_MIRROR overrides): the first
    `deb` entry of sources.list or sources.list.d whose suite is SUITE and whose URI ends in /debian."""
    override = os.environ.get("GPU_DEPLOY_TEST_MIRROR")
    if override:
        return override
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.lstrip().startswith("#"):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
                    for uri in fields.get("uris", []):
                        if uri.rstrip("/").endswith("/debian"):
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line).split()
                deb = len(words) >= 3 and words[0] == "deb" and words[2] == SUITE
                if deb and words[1].rstrip("/").endswith("/debian"):
                    return words[1].rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One builder at a time per cache (two test runs on one machine wait for each other)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    """rm -rf, after unmounting anything debootstrap left mounted inside (never deletes through a mount)."""
    if not path.exists():
        return
    stuck = unmount_under(path)
    if stuck:
        raise SetupError(f"cannot remove {path}: still mounted {stuck}")
    shutil.rmtree(path)


def _strip(tree: Path) -> None:
    for rel in STRIP:
        target = tree / rel
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for rel in ("etc/resolv.conf", "etc/hostname"):  # the engine provides them in each container
        with contextlib.suppress(FileNotFoundError):
            (tree / rel).unlink()
    for cache in (tree / "var/cache/apt").glob("*.bin"):
        cache.unlink()


def _tar(tree: Path, tarball: Path) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
    run_checked(
        ["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
         "-C", str(tree), "-cf", str(partial), "."],
        timeout=300,
    )  # fmt: skip
    partial.replace(tarball)


def build_rootfs_tarballs(
    work_parent: Path, cache_dir: Path = CACHE_DIR, mirror: str | None = None
) -> tuple[dict[str, Path], bool]:
    """The cached tarballs, made first when any is missing (debootstrap writes under `work_parent`: the
    run directory, a tmpfs where dpkg's fsyncs cost nothing); returns them and whether debootstrap ran."""
    tarballs = {rootfs.name: rootfs.tarball(cache_dir) for rootfs in ROOTFS}
    with _locked(cache_dir):
        if all(path.is_file() for path in tarballs.values()):
            return tarballs, False
        mirror = mirror or apt_mirror()
        debs = cache_dir / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        work = work_parent / f"rootfs-{os.getpid()}"
        _remove_tree(work)
        work.mkdir(mode=0o755)
        try:
            base = work / BASH.name
            debootstrap = find_program("debootstrap", "/usr/sbin/debootstrap") or "debootstrap"
            run_checked(
                [debootstrap, f"--variant={VARIANT}", f"--cache-dir={debs}", SUITE, str(base), mirror],
                timeout=600,
            )
            for rootfs in ROOTFS:
                if rootfs is BASH or tarballs[rootfs.name].is_file():
                    continue
                tree = work / rootfs.name
                run_checked(["cp", "-a", str(base), str(tree)])
                run_checked(
                    ["chroot", str(tree), "/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", f"PATH={IMAGE_PATH}",
                     "apt-get", "install", "-y", "--no-install-recommends",
                     "-o", "Dpkg::Options::=--force-unsafe-io", *rootfs.include],
                    timeout=300,
                )  # fmt: skip
                _strip(tree)
                _tar(tree, tarballs[rootfs.name])
            if not tarballs[BASH.name].is_file():
                _strip(base)
                _tar(base, tarballs[BASH.name])
        finally:
            _remove_tree(work)
    return tarballs, True


def import_base_images(engine: Engine, cache_dir: Path = CACHE_DIR) -> BaseImages:
    """Both images in `engine`, from the cache (built first on a cold cache)."""
    started = time.monotonic()
    tarballs, built = build_rootfs_tarballs(engine.run_dir, cache_dir)
    build_seconds = time.monotonic() - started

    def load(rootfs: Rootfs) -> None:
        engine.docker_cli(
            "import",
            "--change", 'CMD ["/bin/bash"]',
            "--change", f"ENV PATH={IMAGE_PATH}",
            "--message", f"gpu-deploy real-engine tier: {rootfs.key}",
            str(tarballs[rootfs.name]),
            rootfs.image,
            timeout=300,
        )  # fmt: skip

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(ROOTFS)) as pool:
        list(pool.map(load, ROOTFS))
    return BaseImages(
        bash=BASH.image,
        python3=PYTHON3.image,
        tarballs=tarballs,
        built=built,
        build_seconds=build_seconds,
        import_seconds=time.monotonic() - started,
    )
