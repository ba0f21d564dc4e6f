"""HostRunners: the programs a deploy runs on the GPU host, copied where only the deploy user can write.

Creates one `command.remote.CopyToRemote` per file (a path-backed FileAsset: pulumi-command v1.2.1 refuses
in-memory archives at Check, and creates the parent directories of a file's remotePath), into
`~/.gpu-deploy/<stack>/` of the deploy user (a relative remotePath is resolved by the SFTP server in the
login directory). Nothing goes to a shared, world-writable place such as /var/tmp.

`command()` builds the command line that runs one of them: run-verified.sh first checks that the directory
chain is the user's (or root's) and not writable by others, that each file is the one copied (sha256 fixed
at plan time), and only then runs the program. The command line carries the hashes, so a changed runner
re-runs the commands that use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import pulumi
import pulumi_command as command

from components.core import architectures, cards, catalog, cuda
from components.host import NVML_FACTS, PREFLIGHT, SMOKE_FILES, SMOKE_RUNNER
from components.host import shell as host_scripts
from components.options import child_options

CATALOG_MODULES = (
    catalog,
    cards,
    architectures,
    cuda,
)  # the catalog and the modules it imports beside itself
PYTHON = ["python3", "-E", "-s", "-B"]  # no PYTHON* variables, no user site, no .pyc written beside the files


def _pynvml_file() -> Path:
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:
        raise RuntimeError("pynvml (nvidia-ml-py) is not installed: pip install -r requirements.txt")
    return Path(spec.origin)


def runner_files() -> dict[str, Path]:
    """name on the host -> the local file: the preflight (with the catalog and the NVML bindings it
    imports from beside itself) and the smoke runner (with its modules). Standard library only on the host."""
    return {
        "preflight.py": PREFLIGHT,
        "nvml_facts.py": NVML_FACTS,
        **{
            f"{module.__name__.rsplit('.', 1)[-1]}.py": Path(str(module.__file__))
            for module in CATALOG_MODULES
        },
        "pynvml.py": _pynvml_file(),
        **SMOKE_FILES,
    }


# program -> the files it imports from beside itself, which run-verified.sh checks with it
IMPORTS: dict[str, tuple[str, ...]] = {
    PREFLIGHT.name: ("catalog.py", "cards.py", "architectures.py", "cuda.py", "nvml_facts.py", "pynvml.py"),
    SMOKE_RUNNER.name: tuple(name for name in SMOKE_FILES if name != SMOKE_RUNNER.name),
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HostRunners(pulumi.ComponentResource):
    """The runner files on one host; `command(...)` runs one of them, verified."""

    copies: list[command.remote.CopyToRemote]

    def __init__(
        self,
        name: str,
        *,
        stack: str,
        connection: command.remote.ConnectionArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-deploy:host:HostRunners", name, None, opts)
        self.directory = f".gpu-deploy/{stack}"
        self.files = runner_files()
        self.copies = [
            command.remote.CopyToRemote(
                f"{name}-{file_name.removesuffix('.py')}",
                connection=connection,
                # relative to the project (the program's working directory): Pulumi compares an asset's
                # path too, so an absolute one would re-copy from every other checkout
                source=pulumi.FileAsset(os.path.relpath(local)),
                remote_path=f"{self.directory}/{file_name}",
                opts=child_options(self, opts),
            )
            for file_name, local in self.files.items()
        ]
        self.register_outputs({"directory": self.directory, "files": sorted(self.files)})

    def command(self, program: str, args: Sequence[str]) -> str:
        """`python3 PROGRAM ARGS` in the runner directory, after run-verified.sh has checked PROGRAM and
        the files it imports (IMPORTS)."""
        checked = [program, *IMPORTS.get(program, ())]
        sums = "\n".join(f"{sha256_of(self.files[f])}  {f}" for f in checked)
        return host_scripts.command_with_script(
            "run-verified",
            {"RUNNER_DIR": self.directory, "RUNNER_FILES": sums},
            [*PYTHON, f"./{program}", *args],
        )
