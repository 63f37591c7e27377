"""Real text that needs no download: built from what the Python installation ships.

Why this text. The language-modelling task must run on a fresh machine with no network,
give the same bytes everywhere for a given Python version, and still be real text with
long-range structure. Two corpora come with every CPython:

* ``stdlib_docs`` (default) — English prose: the Python Language Reference topics that
  ship as ``pydoc_data/topics.py`` (the text behind ``help("if")``), followed by every
  docstring (module, class, function; extracted with ``ast``, never imported) of the
  pure-Python standard library, files in sorted order. About 2 MB on CPython 3.11; built
  in a few seconds (parsing), once per process.
* ``stdlib_source`` — the same standard-library files verbatim: Python code with
  comments, about 8 MB, read in milliseconds. Code has long-range dependencies
  (names defined far above their uses), a useful contrast to prose.

Both skip test suites, vendored or deprecated packages and code tables (see
``_EXCLUDED_DIRS``) — those are large, little prose, and differ between versions.
``path=`` instead reads a user's file or folder of ``.txt`` files (sorted, recursive).

Every corpus carries a fingerprint — Python version, file count, sha256 of the file list
and of the built bytes — for result rows, so a number is always tied to the exact text.
Corpora are cached in memory (``functools.lru_cache``); nothing is written to disk.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CORPORA = ("stdlib_docs", "stdlib_source")
_EXCLUDED_DIRS = frozenset(
    {
        "test", "tests", "idle_test",  # test suites: code, fixtures, odd encodings
        "site-packages", "dist-packages", "ensurepip",  # not the stdlib itself
        "encodings",  # codec tables
        "lib2to3", "distutils",  # deprecated, removed in later Pythons
        "idlelib", "turtledemo",  # applications, not library prose
        "pydoc_data",  # read separately (its topics are the reference prose)
        "__pycache__",
    }
)
_DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """The text as bytes, and the sorted relative paths it was built from."""

    name: str
    data: bytes
    files: tuple[str, ...]

    def fingerprint(self) -> dict[str, str | int]:
        files_hash = hashlib.sha256("\n".join(self.files).encode()).hexdigest()
        return {
            "corpus": self.name,
            "python": platform.python_version(),
            "n_files": len(self.files),
            "files_sha256": files_hash,
            "n_bytes": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def _stdlib_files() -> tuple[str, ...]:
    root = stdlib_root()
    rel = (p.relative_to(root) for p in root.rglob("*.py"))
    return tuple(sorted(r.as_posix() for r in rel if not _EXCLUDED_DIRS.intersection(r.parts)))


def stdlib_files() -> list[str]:
    """Relative POSIX paths of the stdlib .py files used, sorted."""
    return list(_stdlib_files())


def docstrings(source: bytes) -> list[str]:
    """Docstrings of a module and of its classes and functions, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        # A file this Python cannot parse has no usable prose; skipping is deterministic.
        return []
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc:
            found.append(doc)
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(tree)
    return found


def reference_topics() -> tuple[str, str] | None:
    """(relative path, prose) of the Language Reference topics, if this Python ships them."""
    try:
        module = importlib.import_module("pydoc_data.topics")
    except ImportError:
        return None
    rel = Path(module.__file__).resolve().relative_to(stdlib_root().resolve()).as_posix()
    topics: dict[str, str] = module.topics
    return rel, _DOC_SEPARATOR.join(topics[k].strip() for k in sorted(topics))


def build_stdlib_docs(files: list[str] | None = None) -> Corpus:
    """The prose corpus (uncached; `files` restricts it, for tests)."""
    root = stdlib_root()
    parts: list[str] = []
    used: list[str] = []
    topics = reference_topics() if files is None else None
    if topics is not None:
        used.append(topics[0])
        parts.append(topics[1])
    for rel in stdlib_files() if files is None else files:
        docs = docstrings((root / rel).read_bytes())
        if docs:
            used.append(rel)
            parts.append(_DOC_SEPARATOR.join(docs))
    return Corpus("stdlib_docs", _DOC_SEPARATOR.join(parts).encode("utf-8"), tuple(used))


def build_stdlib_source(files: list[str] | None = None) -> Corpus:
    """The source-code corpus (uncached)."""
    root = stdlib_root()
    used = stdlib_files() if files is None else files
    data = b"\n".join((root / rel).read_bytes() for rel in used)
    return Corpus("stdlib_source", data, tuple(used))


def read_text_path(path: str | Path) -> Corpus:
    """A user's corpus: one text file, or every .txt file under a folder (sorted)."""
    p = Path(path).expanduser()
    if p.is_file():
        return Corpus(f"path:{p.name}", p.read_bytes(), (p.name,))
    if not p.is_dir():
        raise ValueError(f"text path {str(p)!r} does not exist; give a text file or a folder of .txt files")
    rel = sorted(f.relative_to(p).as_posix() for f in p.rglob("*.txt") if f.is_file())
    if not rel:
        raise ValueError(f"folder {str(p)!r} holds no .txt files; add some or point path= at a text file")
    data = b"\n\n".join((p / r).read_bytes() for r in rel)
    return Corpus(f"path:{p.name}", data, tuple(rel))


@lru_cache(maxsize=None)
def _cached_builtin(name: str) -> Corpus:
    return build_stdlib_docs() if name == "stdlib_docs" else build_stdlib_source()


@lru_cache(maxsize=8)
def _cached_path(resolved: str, signature: tuple[tuple[str, int, int], ...]) -> Corpus:
    # The files' mtimes and sizes are in the key, so edited text is read again.
    return read_text_path(resolved)


def _signature(p: Path) -> tuple[tuple[str, int, int], ...]:
    files = [p] if p.is_file() else sorted(p.rglob("*.txt"))
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def load_corpus(name: str = "stdlib_docs", path: str | Path | None = None) -> Corpus:
    """The corpus named `name`, or the text at `path` when given; cached in memory."""
    if path is not None:
        p = Path(path).expanduser().resolve()
        if not p.exists():
            return read_text_path(p)  # raises the clear error
        return _cached_path(str(p), _signature(p))
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; built-in corpora: {', '.join(CORPORA)} (or give path=)")
    return _cached_builtin(name)
