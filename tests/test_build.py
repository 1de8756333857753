"""Build reproducibility: what is committed is what the derivations produce, byte for byte."""

import os
import subprocess
import sys
from pathlib import Path

from symfield import build

ROOT = Path(__file__).resolve().parent.parent


def test_build_is_byte_identical_across_hash_seeds(tmp_path):
    """Two builds under different PYTHONHASHSEED values write the same bytes as main."""
    procs = []
    for seed in ("0", "4242"):
        out = tmp_path / f"seed{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        code = ("from pathlib import Path; from symfield import build; "
                f"build.run(out=Path({str(out)!r}), progress=False)")
        procs.append((out, subprocess.Popen([sys.executable, "-c", code], env=env)))
    for _, proc in procs:
        assert proc.wait(timeout=600) == 0
    (first, _), (second, _) = procs
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files, "the build wrote nothing"
    for relative in files:
        data = (first / relative).read_bytes()
        assert data == (second / relative).read_bytes(), relative
        assert data == (ROOT / relative).read_bytes(), f"{relative} differs from the repository"


def test_check_reports_a_changed_file(tmp_path):
    """build --check semantics on a small derivation tree: a stale file is reported as
    differing, an absent one as missing, an equal one as unchanged; nothing is written.
    (The real derivations are compared with the repository by the hash-seed test above
    and by `symfield build --check` in CI.)"""
    (tmp_path / "derivations").mkdir()
    (tmp_path / "derivations" / "small.py").write_text(
        "def outputs():\n"
        "    return {'generated/a.py': 'A = 1\\n', 'generated/b.py': 'B = 2\\n',\n"
        "            'docs/c.md': 'c\\n'}\n")
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "a.py").write_text("# stale\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "c.md").write_text("c\n")
    results = build.run(root=tmp_path, check=True, progress=False)
    status = {r.path: r.status for r in results}
    assert status == {"generated/a.py": "differs", "generated/b.py": "missing",
                      "docs/c.md": "unchanged"}
    assert (tmp_path / "generated" / "a.py").read_text() == "# stale\n"
    assert not (tmp_path / "generated" / "b.py").exists()
    written = build.run(root=tmp_path, progress=False)
    assert {r.path: r.status for r in written}["generated/a.py"] == "written"
    assert (tmp_path / "generated" / "b.py").read_text() == "B = 2\n"


def test_generated_modules_import_only_numpy_and_scipy():
    for path in sorted((ROOT / "generated").glob("*.py")):
        imports = [line.split()[1] for line in path.read_text().splitlines()
                   if line.startswith(("import ", "from "))]
        assert set(imports) <= {"numpy", "scipy.special"}, (path.name, imports)
        assert "DO NOT EDIT" in path.read_text()
