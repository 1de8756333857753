"""`symfield build`: run every derivation, write (or check) generated/ and docs/."""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BuiltFile:
    path: str
    derivation: str
    status: str  # written | unchanged | differs | missing
    seconds: float


def load_derivation(path: Path) -> ModuleType:
    """Import a derivations/*.py file by path (derivations are not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"symfield_derivation_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load derivation {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def derivation_files(root: Path = PROJECT_ROOT) -> list[Path]:
    return sorted((root / "derivations").glob("*.py"))


def run(root: Path = PROJECT_ROOT, *, check: bool = False, out: Path | None = None,
        progress: bool = True) -> list[BuiltFile]:
    """Derive everything; write files under ``out`` (default: root) or compare them."""
    target = root if out is None else out
    results: list[BuiltFile] = []
    for path in derivation_files(root):
        start = time.perf_counter()
        if progress:
            print(f"deriving {path.relative_to(root)} ...", file=sys.stderr, flush=True)
        files = load_derivation(path).outputs()
        elapsed = time.perf_counter() - start
        for relative, text in sorted(files.items()):
            destination = target / relative
            current = destination.read_text() if destination.exists() else None
            if current == text:
                status = "unchanged"
            elif check:
                status = "missing" if current is None else "differs"
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(text)
                status = "written"
            results.append(BuiltFile(relative, path.name, status, elapsed))
    return results
