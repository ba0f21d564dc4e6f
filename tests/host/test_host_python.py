"""What runs on a GPU host keeps to the standard library and to the oldest Python the hosts have, 3.8.

components/host and components/core import only the standard library (core also itself; the host's
runners their shipped siblings, and the repo only where the standalone copy falls back); their source
parses as Python 3.8 and makes no 3.9+ generic or `X | Y` at run time. The runner bundle that ships
(components/remote/runners.py: runner_files()) is copied into a bare folder and imported and run there
under `-I -S` / `-E -s -S -B` (no site-packages: pulumi, pydantic, yaml are out of reach), by this
interpreter and by a Python 3.8 where this machine has one. ruff (target py38) and vermin (the standard
library's API by version), both in `make lint`, hold the rest.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.host import HOST_DIR
from components.remote.runners import runner_files

REPO = Path(__file__).resolve().parents[2]
CORE_DIR = REPO / "components" / "core"
OLDEST = (3, 8)
BUNDLE = {name.removesuffix(".py") for name in runner_files()}  # importable beside each other on the host
SIBLINGS = BUNDLE - {"pynvml"}  # ours: the modules a runner imports from beside itself
RUNTIME_GENERICS = {"dict", "frozenset", "list", "set", "tuple", "type"}  # subscriptable from 3.9
TYPE_NAMES = RUNTIME_GENERICS | {"None", "bool", "bytes", "float", "int", "object", "str"}


def host_sources() -> list[Path]:
    """What runs on a host, or is written for one: components/host/*.py and the catalog that ships."""
    return [*sorted(HOST_DIR.glob("*.py")), *sorted(p for p in CORE_DIR.glob("*.py") if p.stem in SIBLINGS)]


def _oldest_python() -> str | None:
    """A Python 3.8 on this machine (on PATH, or installed by pyenv), or None."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.8"), *sorted(glob.glob(f"{root}/versions/3.8*/bin/python3.8"))]
    for candidate in filter(None, candidates):
        probe = [candidate, "-I", "-c", "import sys; print(sys.version_info[:2] == (3, 8))"]
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0 and result.stdout.strip() == "True":
            return candidate
    return None


PYTHON_3_8 = _oldest_python()
INTERPRETERS = [
    pytest.param(sys.executable, id="this-python"),
    pytest.param(
        PYTHON_3_8,
        id="python3.8",
        marks=pytest.mark.skipif(PYTHON_3_8 is None, reason="no Python 3.8 on this machine (pyenv or PATH)"),
    ),
]


# --- the source -------------------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    names = []
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names += [kind.id for kind in kinds if isinstance(kind, ast.Name)]
    return any(name in ("ImportError", "ModuleNotFoundError") for name in names)


def _walk(node: ast.AST, where: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node under `node` with where it stands: 'code', 'type-checking', 'repo-first' (the `try` body
    of an import fallback) or 'fallback' (its `except ImportError` body)."""
    for child in ast.iter_child_nodes(node):
        yield from _visit(child, where)


def _visit(node: ast.AST, where: str) -> Iterator[tuple[ast.AST, str]]:
    yield node, where
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for sub in node.body:
            yield from _visit(sub, "type-checking")
        for sub in node.orelse:
            yield from _visit(sub, where)
    elif isinstance(node, ast.Try) and _catches_import_error(node):
        for sub in node.body:
            yield from _visit(sub, "repo-first")
        for handler in node.handlers:
            yield from _visit(handler, "fallback")
        for sub in [*node.orelse, *node.finalbody]:
            yield from _visit(sub, where)
    else:
        yield from _walk(node, where)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return ["." * node.level + (node.module or "")]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return [str(node.args[0].value)]
    return []


def import_problems(path: Path) -> list[str]:
    """Imports in `path` that a bare host Python (or, for core, anything but core itself) could not meet."""
    in_core = path.parent == CORE_DIR
    problems = []
    for node, where in _walk(ast.parse(path.read_text(encoding="utf-8")), "code"):
        for module in _imported(node):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if in_core and module.startswith("components.core") and path.stem not in SIBLINGS:
                continue  # core depends on core; what ships (the catalog and its modules) only on itself
            if where in ("type-checking", "repo-first") and module.startswith("components."):
                continue
            if module in BUNDLE and (where == "fallback" or (not in_core and module == "pynvml")):
                continue  # beside it in the runner folder (pynvml: the preflight's own fallback)
            problems.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {module} ({where})")
    return problems


@pytest.mark.parametrize("path", [*sorted(HOST_DIR.glob("*.py")), *sorted(CORE_DIR.glob("*.py"))], ids=str)
def test_host_and_core_import_only_the_standard_library(path: Path) -> None:
    assert import_problems(path) == []


def test_the_import_rule_catches_a_third_party_module_and_a_bare_repo_import(tmp_path: Path) -> None:
    """The rule above is not vacuous: yaml, a repo import outside the fallback, a sibling outside it."""
    probe = tmp_path / "smoke.py"
    extra = "\nimport yaml\nfrom components.core import values\nimport smoke_io\n"
    probe.write_text((HOST_DIR / "smoke.py").read_text() + extra)
    problems = import_problems(probe)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "yaml (code)",
        "components.core (code)",
        "smoke_io (code)",
    ]


@pytest.mark.parametrize("path", host_sources(), ids=str)
def test_host_sources_parse_as_python_3_8(path: Path) -> None:
    """match, parenthesised context managers, except* ... are syntax errors on the hosts' Python."""
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=OLDEST)


def _annotations(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (not evaluated: the files use `from __future__ import
    annotations`) or a TYPE_CHECKING block (never run)."""
    skipped: set[int] = set()
    for node, where in _walk(tree, "code"):
        roots: list[ast.AST | None] = []
        if where == "type-checking":
            roots.append(node)
        if isinstance(node, ast.arg | ast.AnnAssign):
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            roots.append(node.returns)
        for root in filter(None, roots):
            skipped.update(id(sub) for sub in ast.walk(root))
    return skipped


def _type_like(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return _type_like(node.value)
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _type_like(node.left)


def runtime_typing_problems(source: str) -> list[str]:
    """`list[int]` or `int | None` evaluated at run time: a TypeError on 3.8 (neither ruff nor vermin
    reports them)."""
    tree = ast.parse(source)
    skipped = _annotations(tree)
    problems = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        generic = (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in RUNTIME_GENERICS
        )
        union = (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and (_type_like(node.left) or _type_like(node.right))
        )
        if generic or union:
            problems.append(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    return problems


@pytest.mark.parametrize("path", host_sources(), ids=str)
def test_host_sources_evaluate_no_3_9_typing_at_run_time(path: Path) -> None:
    assert runtime_typing_problems(path.read_text(encoding="utf-8")) == []


def test_the_run_time_typing_rule_sees_through_annotations_only() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    Alias = list[int] | None\n"
        "def f(x: dict[str, int] | None) -> tuple[int, ...]:\n"
        "    y: list[int] = []\n"
        "    return isinstance(x, int | str), dict[str, int], 3 | 4\n"
    )
    assert sorted(runtime_typing_problems(source)) == ["line 7: dict[str, int]", "line 7: int | str"]


# --- the bundle, in a bare folder ---------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The runner folder as a host has it: exactly the files HostRunners copies, nothing of the repo."""
    folder = tmp_path / "runners"
    folder.mkdir()
    for name, path in runner_files().items():
        shutil.copyfile(path, folder / name)
    return folder


def run(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_bundle_imports_in_isolation_from_its_own_folder(python: str, bundle: Path) -> None:
    program = (
        "import importlib, json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "files = {name: importlib.import_module(name).__file__ for name in sys.argv[2:]}\n"
        "repo = sorted(name for name in sys.modules if name.split('.')[0] == 'components')\n"
        "print(json.dumps({'files': files, 'repo': repo}))\n"
    )
    result = run(python, "-I", "-S", "-c", program, str(bundle), *sorted(BUNDLE), cwd=bundle.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["repo"] == []
    assert {name: Path(file).parent for name, file in report["files"].items()} == dict.fromkeys(
        BUNDLE, bundle
    )


@pytest.mark.parametrize("python", INTERPRETERS)
@pytest.mark.parametrize(
    ("program", "usage"), [("smoke.py", "usage: smoke.py"), ("preflight.py", "usage: preflight")]
)
def test_each_runner_starts_as_the_host_starts_it(
    python: str, bundle: Path, program: str, usage: str
) -> None:
    """`python3 -E -s -B ./PROGRAM` in the runner folder (run-verified.sh), here with -S as well."""
    result = run(python, "-E", "-s", "-S", "-B", f"./{program}", "--help", cwd=bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)


class _Service(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "token": "s3cr3t"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("python", INTERPRETERS)
def test_the_smoke_runner_checks_a_service_from_the_bare_folder(
    python: str, bundle: Path, service: str
) -> None:
    """Parsing, the request thread, the origin rule, the JSON checks and the masking, all on the host's
    Python: a check that passes, then one that fails with the response masked."""
    passing = [{"http": {"path": "/health", "json": {"status": "string"}, "equals": {"status": "ok"}}}]
    argv = ["-E", "-s", "-S", "-B", "./smoke.py", "--base-url", service, "--deadline", "5", "--checks"]
    result = run(python, *argv, json.dumps(passing), cwd=bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PASS http GET /health 200 in ")
    failing = [{"http": {"path": "/health", "equals": {"status": "up"}}}]
    result = run(python, *argv, json.dumps(failing), "--deadline", "0.5", "--interval", "1", cwd=bundle)
    assert result.returncode == 3, result.stderr
    assert """FAIL http GET /health: field 'status' is "ok", expected "up"; status 200""" in result.stderr
    assert '"token": "***"' in result.stderr
    assert "s3cr3t" not in result.stderr
