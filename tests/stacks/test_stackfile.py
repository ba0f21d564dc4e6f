"""The stack-file reader: what the Pulumi CLI's YAML parser refuses is refused here, as one line, exit 2.

Generated bad files of five classes (repeated keys at random depths, broken syntax, values that are
not strings or JSON, alias bombs, and, as a control, files that must be read as PyYAML reads them) go
through `python -m stacks plan prod --config-file FILE`: as a subprocess (the real CLI, a few dozen
files a class) and in-process through `main()` (hundreds a class). STACKFILE_CLI_EXAMPLES and
STACKFILE_EXAMPLES scale them; the counts are printed at the end of the module (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stacks.__main__ import main
from stacks.config import ConfigError
from stacks.plan import PROJECT_DIR, list_stacks, read_stack_config
from stacks.stackfile import ALIAS_BUDGET, MAX_DEPTH, StackFileError, read_project, read_stack

CLI_EXAMPLES = int(os.environ.get("STACKFILE_CLI_EXAMPLES", "3"))
CLI_BATCH = 4  # files a hypothesis example writes and runs at once, one CLI process each
EXAMPLES = int(os.environ.get("STACKFILE_EXAMPLES", "200"))
COUNTS: Counter[str] = Counter()

CLI_SETTINGS = settings(
    max_examples=CLI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FAST_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    print("\ngenerated stack files checked, by class and how:", file=sys.stderr)
    for key, count in sorted(COUNTS.items()):
        print(f"  {key}: {count}", file=sys.stderr)


# ---------------------------------------------------------------- a tiny YAML writer
class M(list[tuple[Any, Any]]):
    """A YAML mapping as written: (key, value) pairs in order, repeats allowed."""


@dataclass(frozen=True)
class Raw:
    """A scalar written exactly as given (a plain date, a tagged value, an anchor or alias...)."""

    text: str


@dataclass(frozen=True)
class Quoted:
    """A key written single-quoted (the same string as its plain or double-quoted spelling)."""

    text: str


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML11_WORDS = {"yes", "no", "on", "off", "true", "false", "null", "y", "n"}


def _key_text(key: Any) -> str:
    return key.text if isinstance(key, (Raw, Quoted)) else str(key)


def render_key(key: Any) -> str:
    if isinstance(key, Raw):
        return key.text
    if isinstance(key, Quoted):
        return "'" + key.text.replace("'", "''") + "'"
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS:
        return str(key)
    return json.dumps(key, ensure_ascii=False)


def _inline(value: Any) -> str | None:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, (M, list)):
        return ("{}" if isinstance(value, M) else "[]") if not value else None
    return json.dumps(value, ensure_ascii=False)


def emit(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for a mapping or a list (scalars inline)."""
    pad = " " * indent
    lines: list[str] = []
    items = (
        [(f"{render_key(k)}:", v) for k, v in value] if isinstance(value, M) else [("-", v) for v in value]
    )
    for head, item in items:
        inline = _inline(item)
        if inline is not None:
            lines.append(f"{pad}{head} {inline}")
        else:
            lines.append(f"{pad}{head}")
            lines += emit(item, indent + 2)
    return lines


def document(top: str, tree: M) -> M:
    return M([("config", M([("gpu-deploy:profile", "p40"), (f"gpu-deploy:{top}", tree)]))])


def text_of(doc: M) -> str:
    return "\n".join(emit(doc)) + "\n"


def containers(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """Every mapping and list in `value` with its key path (list positions as numbers, as ConfigError)."""
    if isinstance(value, M):
        yield value, path
        for key, item in value:
            yield from containers(item, (*path, _key_text(key)))
    elif isinstance(value, list):
        yield value, path
        for index, item in enumerate(value):
            yield from containers(item, (*path, str(index)))


# ---------------------------------------------------------------- strategies
_CHARS = st.characters(exclude_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp"), exclude_characters="\x85")
keys = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,9}", fullmatch=True), st.text(_CHARS, min_size=1, max_size=12)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_CHARS, max_size=20),
)


def maps(children: st.SearchStrategy[Any], min_size: int = 0) -> st.SearchStrategy[M]:
    return st.lists(st.tuples(keys, children), min_size=min_size, max_size=4, unique_by=lambda kv: kv[0]).map(
        M
    )


values = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), maps(children)), max_leaves=20
)
trees = maps(values, min_size=1)


@dataclass
class Case:
    kind: str
    text: str | bytes
    check: Callable[[str, str], None]  # (the stderr line, the file as shown) -> assertion
    name: str = "stack.yaml"
    notes: list[str] = field(default_factory=list)


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# ---- class 1: a repeated key at a random depth
@st.composite
def duplicate_cases(draw: st.DrawFn) -> Case:
    doc = document(draw(keys), draw(trees))
    mappings = [c for c, _ in containers(doc) if isinstance(c, M) and c]
    mapping = draw(st.sampled_from(mappings))
    original = _key_text(draw(st.sampled_from(mapping))[0])
    spelling = draw(st.sampled_from(["same", "single", "double"]))
    repeat = {
        "same": original,
        "single": Quoted(original),
        "double": Raw(json.dumps(original, ensure_ascii=False)),
    }
    mapping.insert(draw(st.integers(0, len(mapping))), (repeat[spelling], draw(values)))
    text = text_of(doc)

    def check(line: str, file: str) -> None:
        match = re.match(rf"gpu-deploy: {re.escape(file)}:(\d+):(\d+): duplicate key (.*)$", line)
        assert match, line
        assert match.group(3).startswith(_one_line(json.dumps(original, ensure_ascii=False))), line
        row, column = int(match.group(1)), int(match.group(2))
        at = text.splitlines()[row - 1][column - 1 :]
        spellings = (
            render_key(original),
            render_key(Quoted(original)),
            json.dumps(original, ensure_ascii=False),
        )
        assert at.startswith(spellings), (line, at)

    return Case("duplicate", text, check)


# ---- class 2: broken syntax
def _break(text: str, how: str, row: int, extra: str) -> str:
    lines = text.splitlines()
    row = row % len(lines)
    line = lines[row]
    head, sep, tail = line.partition(": ")
    if how == "unclosed-double":
        lines[row] = f'{head}: "{tail.replace(chr(34), "")}' if sep else f'{line} "{extra}'
    elif how == "unclosed-single":
        lines[row] = f"{head}: '{tail}" if sep else f"{line} '{extra}"
    elif how == "tab-indent":
        lines[row] = "\t" + line
    elif how == "open-flow":
        lines[row] = f"{head}: [{extra}, {tail}" if sep else f"{line} {{{extra}"
    elif how == "stray-close":
        lines.insert(row, "]")
    elif how == "indent":
        lines[row] = " " * (1 + len(extra) % 3) + line
    elif how == "mapping-value":
        lines[row] = f"{line}: {extra}: x"
    elif how == "bad-escape":
        lines[row] = f'{head}: "\\q{extra}"' if sep else f'{line} "\\q"'
    elif how == "control-char":
        lines[row] = f"{line}\x01"
    elif how == "truncate":
        return text[: len(text) * (1 + len(extra) % 9) // 10] + '"'
    elif how == "two-documents":
        lines.insert(row, "---")
    return "\n".join(lines) + "\n"


def _pyyaml_error_at(text: str) -> tuple[int, int] | None:
    """Where PyYAML itself finds the text broken (1-based), or None when it is YAML: its syntax (the
    whole stream of events) first, then its composition (a second document, an undefined alias)."""
    try:
        for _ in yaml.parse(text, Loader=yaml.SafeLoader):
            pass
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        assert mark is not None
        return mark.line + 1, mark.column + 1
    except yaml.reader.ReaderError as err:
        before = text[: err.position]
        return before.count("\n") + 1, err.position - (before.rfind("\n") + 1) + 1
    return None


BREAKS = [
    "unclosed-double",
    "unclosed-single",
    "tab-indent",
    "open-flow",
    "stray-close",
    "indent",
    "mapping-value",
    "bad-escape",
    "control-char",
    "truncate",
    "two-documents",
]


@st.composite
def syntax_cases(draw: st.DrawFn) -> Case:
    text = text_of(document(draw(keys), draw(trees)))
    how = draw(st.sampled_from(BREAKS))
    broken = _break(
        text, how, draw(st.integers(1, 10_000)), draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True))
    )
    where = _pyyaml_error_at(broken)
    assume(where is not None)
    assert where is not None

    def check(line: str, file: str) -> None:
        assert line.startswith(f"gpu-deploy: {file}:{where[0]}:{where[1]}: "), (how, line)

    return Case("syntax", broken, check, notes=[how])


# ---- class 3: values that are not strings or JSON
def _huge_int(draw: st.DrawFn) -> str:
    form = draw(st.sampled_from(["above", "below", "digits", "hex", "underscored"]))
    if form == "above":
        return str(draw(st.integers(2**64, 2**200)))
    if form == "below":
        return str(draw(st.integers(-(2**200), -(2**63) - 1)))
    if form == "hex":
        return hex(draw(st.integers(2**64, 2**300)))
    if form == "underscored":
        return f"{draw(st.integers(2**64, 2**100)):_}"
    return draw(st.from_regex(r"[1-9][0-9]{30,6000}", fullmatch=True))  # past Python's 4300-digit limit too


@st.composite
def bad_scalars(draw: st.DrawFn) -> tuple[str, str]:
    """(what, the scalar as written)."""
    what = draw(st.sampled_from(["date", "datetime", "binary", "huge-int", "not-finite", "set", "tag"]))
    if what == "date":
        return what, draw(st.dates()).isoformat()
    if what == "datetime":
        moment = draw(st.datetimes())
        return what, moment.isoformat(sep=draw(st.sampled_from(["T", " "]))) + draw(
            st.sampled_from(["", "Z", "+02:00"])
        )
    if what == "binary":
        import base64

        return what, "!!binary " + base64.b64encode(draw(st.binary(max_size=30))).decode()
    if what == "huge-int":
        return what, _huge_int(draw)
    if what == "not-finite":
        return what, draw(
            st.sampled_from([".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+999", "-2.5e+400"])
        )
    if what == "set":
        return what, "!!set {" + ", ".join(
            draw(st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=3))
        ) + "}"
    tags = [
        "!!str x",
        "!!int 3",
        "!!float 1",
        "!!timestamp 2020-01-01",
        "!!omap [a: 1]",
        "!!pairs [a: 1]",
        "!custom x",
    ]
    return what, draw(st.sampled_from([*tags, "!!python/object/apply:os.system [id]", "! 12"]))


@st.composite
def value_cases(draw: st.DrawFn) -> Case:
    top = draw(keys)
    tree = draw(trees)
    what, scalar = draw(bad_scalars())
    container, path = draw(st.sampled_from(list(containers(tree))))
    if isinstance(container, M):
        key = draw(keys.filter(lambda k: all(_key_text(x) != k for x, _ in container)))
        container.insert(draw(st.integers(0, len(container))), (key, Raw(scalar)))
        path = (*path, key)
    else:
        index = draw(st.integers(0, len(container)))
        container.insert(index, Raw(scalar))
        path = (*path, str(index))
    text = text_of(document(top, tree))
    key = _one_line(".".join([top, *path]))

    def check(line: str, file: str) -> None:
        assert line.startswith(f"gpu-deploy:{key}: "), (what, scalar, line)
        assert f"({_one_line(file)}:" in line, line

    return Case("value", text, check, notes=[what])


# ---- class 4: alias bombs
def bomb_lines(depth: int, width: int, style: str, indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, depth):
        aliases = [f"*l{level - 1}"] * width
        if style == "flow-list":
            lines.append(f"{pad}l{level}: &l{level} [{', '.join(aliases)}]")
        elif style == "flow-map":
            lines.append(
                f"{pad}l{level}: &l{level} {{{', '.join(f'k{i}: {a}' for i, a in enumerate(aliases))}}}"
            )
        else:  # block list
            lines.append(f"{pad}l{level}: &l{level}")
            lines += [f"{pad}  - {a}" for a in aliases]
    return lines


@st.composite
def bomb_cases(draw: st.DrawFn) -> Case:
    depth, width = draw(st.integers(2, 14)), draw(st.integers(2, 14))
    assume(width**depth > ALIAS_BUDGET)
    style = draw(st.sampled_from(["flow-list", "flow-map", "block-list"]))
    top = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))
    before = draw(trees)
    lines = ["config:", "  gpu-deploy:profile: p40", *emit(M([(f"gpu-deploy:{top}x", before)]), 2)]
    lines += [f"  gpu-deploy:{top}:", *bomb_lines(depth, width, style, 4)]
    text = "\n".join(lines) + "\n"

    def check(line: str, file: str) -> None:
        assert line.startswith(f"gpu-deploy: {file}:"), line
        assert "aliases expand to more than" in line, line

    return Case("bomb", text, check, notes=[f"{depth}x{width}"])


# ---------------------------------------------------------------- running the CLI
def _write(directory: Path, index: int, case: Case) -> Path:
    path = directory / f"{case.kind}-{index}.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    return path


def _assert_refused(case: Case, code: int, stderr: str, file: str) -> None:
    lines = stderr.splitlines()
    assert code == 2, (case.notes, code, stderr, case.text)
    assert len(lines) == 1, (case.notes, stderr)
    assert "Traceback" not in stderr
    case.check(lines[0], file)


def run_cli(cases: list[Case]) -> None:
    """Each case through its own `python -m stacks plan prod --config-file FILE`, all at once."""
    with tempfile.TemporaryDirectory() as directory:
        paths = [_write(Path(directory), i, case) for i, case in enumerate(cases)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "stacks", "plan", "prod", "--config-file", str(path)],
                cwd=PROJECT_DIR,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in paths
        ]
        for case, path, process in zip(cases, paths, processes, strict=True):
            stdout, stderr = process.communicate(timeout=120)
            _assert_refused(case, process.returncode, stderr, str(path))
            assert stdout == ""
            COUNTS[f"{case.kind} (CLI subprocess)"] += 1


def run_in_process(case: Case) -> None:
    """The same through `main()` in this process (no interpreter start: many more cases)."""
    with tempfile.TemporaryDirectory() as directory:
        path = _write(Path(directory), 0, case)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["plan", "prod", "--config-file", str(path)])
        _assert_refused(case, code, err.getvalue(), str(path))
        assert out.getvalue() == ""
        COUNTS[f"{case.kind} (in-process main)"] += 1


STRATEGIES = {
    "duplicate": duplicate_cases(),
    "syntax": syntax_cases(),
    "value": value_cases(),
    "bomb": bomb_cases(),
}


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_generated_bad_files_exit_2_with_one_line_from_the_cli(kind: str) -> None:
    @CLI_SETTINGS
    @given(st.lists(STRATEGIES[kind], min_size=CLI_BATCH, max_size=CLI_BATCH))
    def check(cases: list[Case]) -> None:
        run_cli(cases)

    check()


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_generated_bad_files_exit_2_with_one_line_in_process(kind: str) -> None:
    @FAST_SETTINGS
    @given(STRATEGIES[kind])
    def check(case: Case) -> None:
        run_in_process(case)

    check()


# ---- class 5 (control): what is valid YAML of JSON values reads exactly as PyYAML reads it
@FAST_SETTINGS
@given(top=keys, tree=trees)
def test_generated_good_files_read_as_pyyaml_reads_them(top: str, tree: M) -> None:
    text = text_of(document(top, tree))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "good.yaml"
        path.write_text(text, encoding="utf-8")
        assert read_stack(path) == yaml.safe_load(text)
    COUNTS["good (read_stack == yaml.safe_load)"] += 1


# ---------------------------------------------------------------- the bomb's cost
def _bomb(depth: int, width: int) -> str:
    return "\n".join(["config:", "  gpu-deploy:bomb:", *bomb_lines(depth, width, "flow-list", 4)]) + "\n"


@pytest.mark.parametrize(("depth", "width"), [(9, 9), (12, 10), (30, 30)])
def test_an_alias_bomb_is_refused_within_100_mb(tmp_path: Path, depth: int, width: int) -> None:
    """How long the refusal takes (under a second) is `make bench`'s to measure (tests/bench_plan.py)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(depth, width))
    assert width**depth >= 9**9  # 387 million strings, were it expanded
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="aliases expand to more than") as raised:
            read_stack(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20
    assert "\n" not in str(raised.value)


def test_an_alias_bomb_costs_the_cli_under_100_mb_of_memory(tmp_path: Path) -> None:
    """In a fresh interpreter: the growth of its peak resident memory (getrusage) while refusing (its
    time is measured by `make bench`)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9, 9))
    probe = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from stacks.config import ConfigError\n"
        "from stacks.stackfile import read_stack\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_stack(Path(sys.argv[1]))\n"
        "    refused = False\n"
        "except ConfigError:\n"
        "    refused = True\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'refused': refused, 'grew_kib': after - before}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    )
    measured = json.loads(result.stdout)
    assert measured["refused"]
    assert measured["grew_kib"] < 100 * 1024  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------- what still reads
def test_every_shipped_file_reads_as_pyyaml_reads_it() -> None:
    for path in [
        PROJECT_DIR / "Pulumi.yaml",
        *(PROJECT_DIR / f"Pulumi.{s}.yaml" for s in list_stacks(PROJECT_DIR)),
    ]:
        reader = read_project if path.name == "Pulumi.yaml" else read_stack
        assert reader(path) == yaml.safe_load(path.read_text()), path


def test_a_few_aliases_and_a_merge_key_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "config:\n"
        "  gpu-deploy:env: &env {A: '1', B: '2'}\n"
        "  gpu-deploy:more:\n"
        "    <<: *env\n"
        "    A: '3'\n"
        "    list: [*env, *env]\n"
        "    eq: =\n"
    )
    assert read_stack(path) == {
        "config": {
            "gpu-deploy:env": {"A": "1", "B": "2"},
            "gpu-deploy:more": {"A": "3", "B": "2", "list": [{"A": "1", "B": "2"}] * 2, "eq": "="},
        }
    }


def test_a_quoted_date_reaches_the_program_as_the_string(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("config:\n  gpu-deploy:services:\n    app:\n      env:\n        RELEASE: '2024-01-01'\n")
    _, config, _ = read_stack_config(PROJECT_DIR, "prod", path)
    assert json.loads(config["gpu-deploy:services"]) == {"app": {"env": {"RELEASE": "2024-01-01"}}}


def test_the_unquoted_date_names_the_key_and_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("config:\n  gpu-deploy:services:\n    app:\n      env:\n        RELEASE: 2024-01-01\n")
    with pytest.raises(ConfigError) as raised:
        read_stack(path)
    assert str(raised.value).startswith(
        'gpu-deploy:services.app.env.RELEASE: the value "2024-01-01" is a YAML date'
    )
    assert str(raised.value).endswith(f"quote it ({path}:5:18)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\na: 2\n", ':2:1: duplicate key "a" in (root) (first on line 1)'),
        ("config:\n  k: &a [*a]\n", ":2:10: alias *a inside its own anchor"),
        (
            "config:\n  k: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n",
            f"nested more than {MAX_DEPTH} levels deep",
        ),
        ("config:\n  k: *nope\n", ":2:6: found undefined alias 'nope'"),
        ("config:\n  aws:region: 2024-01-01\n", ': config.aws:region: the value "2024-01-01" is a YAML date'),
        ("config:\n  k: {true: 1, True: 2}\n", 'duplicate key "True" (the same key as "true")'),
        ("config:\n  ? [a]\n  : 1\n", "config: a mapping key must be a string"),
        ("config:\n  &k a: 1\n  *k : 2\n", ':3:3: duplicate key "a" in config'),
        ("config:\n  k: &l [1]\n  *l : 2\n", ":3:3: config: a mapping key must be a string"),
    ],
)
def test_structural_problems_name_the_file_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    with pytest.raises(StackFileError) as raised:
        read_stack(path)
    message = str(raised.value)
    assert message.startswith(f"gpu-deploy: {path}:")
    assert expected in message
    assert "\n" not in message


def test_bytes_that_are_not_utf8_are_refused_at_their_place(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_bytes(b"config:\n  gpu-deploy:x: caf\xe9\n")
    with pytest.raises(StackFileError, match=r":2:20: not UTF-8 text \(byte 0xe9\)"):
        read_stack(path)


def test_the_project_file_names_values_by_their_path(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.yaml"
    path.write_text("name: gpu-deploy\nconfig:\n  release:\n    default: 2024-01-01\n")
    with pytest.raises(StackFileError, match=r"Pulumi.yaml:4:14: config.release.default: the value"):
        read_project(path)


def test_a_file_under_the_working_directory_is_named_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.bad.yaml").write_text("a: 1\na: 2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from stacks.__main__ import main; sys.exit(main(sys.argv[1:]))",
            "plan",
            "prod",
            "--config-file",
            "Pulumi.bad.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == 'gpu-deploy: Pulumi.bad.yaml:2:1: duplicate key "a" in (root) (first on line 1); the Pulumi CLI refuses duplicate keys\n'
    )


def test_list_reads_the_stacks_through_the_reader() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stacks", "list"], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(list_stacks(PROJECT_DIR))
