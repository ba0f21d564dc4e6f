"""The release tag hashes exactly what a build sends, with Docker's own .dockerignore rules.

The cases are Docker's documented ones (docs.docker.com "Build context: .dockerignore files", moby's
patternmatcher): `*` never crosses `/`, `**` does, `!` re-includes, a leading `/` is the context root, and
the Dockerfile and .dockerignore are always sent. The real engine check (the same context built by the
Docker CLI, its files listed from the image) is in tests/real/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.docker.image import BuildRecipe, context_digest, context_files, release_tag


def make_context(root: Path, files: list[str], ignore: str | None) -> Path:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    return root


def sent_files(root: Path) -> set[str]:
    return {p for p in context_files(root) if (root / p).is_file()}


FILES = [
    "README.md",
    "sub/README.md",
    "sub/deep/notes.md",
    "temp",
    "tempfile",
    "a/temporary.txt",
    "a/b/temp.txt",
    "src/main.go",
    "src/pkg/util.go",
    "foo",
    "sub/foo",
    "keep/x.txt",
    "keep/y.txt",
    ".git/HEAD",  # sent like any other directory unless ignored
]


# Docker's cases: the .dockerignore text and the files it keeps out (tests/real/ builds each for real)
CASES: list[tuple[str, set[str]]] = [
    ("*.md\n", {"README.md"}),  # `*` stops at `/`: sub/README.md is still sent
    ("**/*.md\n", {"README.md", "sub/README.md", "sub/deep/notes.md"}),
    ("**/*.md\n!sub/README.md\n", {"README.md", "sub/deep/notes.md"}),
    ("*/temp*\n", {"a/temporary.txt"}),
    ("*/*/temp*\n", {"a/b/temp.txt"}),
    ("temp?\n", set()),  # `temp?` needs one more character: neither temp nor tempfile
    ("temp*\n", {"temp", "tempfile"}),
    ("/foo\n", {"foo"}),  # a leading / is the context root: sub/foo stays
    ("foo\n", {"foo"}),
    ("**/foo\n", {"foo", "sub/foo"}),
    ("keep\n!keep/y.txt\n", {"keep/x.txt"}),  # an exception reaches into an excluded directory
    ("# a comment\n\n  src/*.go  \n", {"src/main.go"}),
    ("src\n", {"src/main.go", "src/pkg/util.go"}),
    ("*\n!src/**\n", set(FILES) - {"src/main.go", "src/pkg/util.go"}),
    ("Dockerfile\n.dockerignore\n", set()),  # always sent, as the Docker CLI does
    (".git\n", {".git/HEAD"}),
]


@pytest.mark.parametrize(("ignore", "excluded"), CASES)
def test_dockerignore_matches_as_docker_does(tmp_path: Path, ignore: str, excluded: set[str]) -> None:
    root = make_context(tmp_path, FILES, ignore)
    assert sent_files(root) == {*FILES, "Dockerfile", ".dockerignore"} - excluded


def tag_of(root: Path) -> str:
    return release_tag(profile="p40", recipes=[BuildRecipe(str(root), "Dockerfile", None)], build_args={})


def test_an_edit_in_a_file_docker_sends_changes_the_tag(tmp_path: Path) -> None:
    """`*.md` hides only the top-level README: sub/README.md is sent, so editing it is a new release."""
    root = make_context(tmp_path, FILES, "*.md\n")
    before = tag_of(root)
    (root / "README.md").write_text("edited, but ignored\n")
    assert tag_of(root) == before, "an ignored file does not change the release"
    (root / "sub/README.md").write_text("edited\n")
    assert tag_of(root) != before, "a file Docker sends changes the release"


def test_same_source_same_tag_and_what_else_counts(tmp_path: Path) -> None:
    one = make_context(tmp_path / "one", FILES, "*.md\n")
    two = make_context(tmp_path / "two", FILES, "*.md\n")
    assert context_digest(one) == context_digest(two), "the digest does not depend on where the context is"
    digest = context_digest(one)
    (one / "src/main.go").chmod(0o755)
    assert context_digest(one) != digest, "the executable bit is part of the image"
    (one / "src/main.go").chmod(0o644)
    assert context_digest(one) == digest
    (one / "empty").mkdir()
    assert context_digest(one) != digest, "an empty directory is sent too"
    os.rmdir(one / "empty")
    (one / "link").symlink_to("/etc/passwd")
    with_link = context_digest(one)
    (one / "link").unlink()
    (one / "link").symlink_to("/etc/hostname")
    assert context_digest(one) != with_link, "a link is sent as its target path, not followed"


def test_a_large_file_is_streamed(tmp_path: Path) -> None:
    root = make_context(tmp_path, [], None)
    with (root / "weights.bin").open("wb") as out:
        out.truncate(64 << 20)  # sparse: 64 MiB of zeros, cheap on disk
    assert context_digest(root) is not None


def test_a_context_too_large_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.docker import image as cuda_image

    root = make_context(tmp_path, ["a", "b", "c"], None)
    monkeypatch.setattr(cuda_image, "MAX_CONTEXT_FILES", 3)
    with pytest.raises(ValueError, match="sends 4 paths \\(at most 3\\)"):
        context_digest(root)
    monkeypatch.setattr(cuda_image, "MAX_CONTEXT_FILES", 100)
    with (root / "big.bin").open("wb") as out:
        out.truncate(2 << 30)  # sparse
    monkeypatch.setattr(cuda_image, "MAX_CONTEXT_BYTES", 1 << 30)
    with pytest.raises(ValueError, match="holds more than 1 GiB"):
        context_digest(root)
