"""The equation documents: derivations/docs.py -> docs/equations.tex and docs/equations.md."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sympy as sp

from symfield.action import SW2, G
from symfield.activations import BUILTIN, FAMILIES
from symfield.build import PROJECT_ROOT, load_derivation
from symfield.codegen.latex import (
    SymfieldLatexPrinter,
    document,
    tex_escape,
    visual_width,
)
from symfield.gaussian import KAA, KAB, KBB
from symfield.numerics import DELTA

DOCS = PROJECT_ROOT / "derivations" / "docs.py"
TEX, MD = "docs/equations.tex", "docs/equations.md"


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    return load_derivation(DOCS).outputs()


def _digests(files: dict[str, str]) -> dict[str, str]:
    return {path: hashlib.sha256(text.encode()).hexdigest() for path, text in files.items()}


# -- the printer --------------------------------------------------------------------------
def test_printer_notation():
    printer = SymfieldLatexPrinter()
    assert printer.doprint(KAA) == "K_{aa}"
    assert printer.doprint(DELTA) == r"\Delta"
    assert printer.doprint(SW2) == r"\sigma_w^2"
    assert printer.doprint(sp.atan2(KAB, sp.sqrt(DELTA))) == (
        r"\operatorname{atan2}\left(K_{ab}, \sqrt{\Delta}\right)")
    assert printer.doprint(G(KAA, KBB, KAB)) == r"G\left(K_{aa}, K_{bb}, K_{ab}\right)"
    assert printer.doprint(sp.Derivative(G(KAA, KBB, KAB), KAB)) == r"\,\partial_{K_{ab}} G"
    assert printer.doprint(SW2**2) == r"\left(\sigma_w^2\right)^{2}"


def test_long_sums_break_between_terms():
    printer = SymfieldLatexPrinter()
    expr = sum(sp.Symbol(f"y{k}") * sp.sqrt(KAA * KBB - KAB**2) / (k + 1) for k in range(12))
    whole = printer.doprint(expr)
    lines = printer.doprint_lines(expr, width=40)
    assert len(lines) > 1
    assert " ".join(lines) == whole
    assert all(visual_width(line) <= 40 for line in lines if " " in line.strip("+- "))
    assert printer.doprint_lines(KAA + KBB, width=40) == (printer.doprint(KAA + KBB),)


def test_tex_escape():
    assert tex_escape("leaky_relu |x| 50%") == r"leaky\_relu $|$x$|$ 50\%"


# -- the documents ------------------------------------------------------------------------
def test_every_builtin_family_appears(outputs):
    tex, md = outputs[TEX], outputs[MD]
    for name in BUILTIN:
        assert f"\\subsection{{Family {tex_escape(name)}}}" in tex
        assert f"\\label{{eq:{name}-phi}}" in tex
        assert f"### Family {name}" in md
        assert f"**({name}-phi)**" in md
        assert f"eq:{name}-G" in tex  # closed form (exact) or quadrature rule


def test_same_equations_in_both_formats(outputs):
    labels_tex = re.findall(r"\\label\{eq:([^}]*)\}", outputs[TEX])
    labels_md = re.findall(r"^\*\*\(([^)]*)\)\*\*", outputs[MD], flags=re.MULTILINE)
    assert labels_tex == labels_md
    assert len(labels_tex) == len(set(labels_tex)), "labels must be unique"
    for needed in ("action-layer", "action-resnet-2", "saddle-layer-ab", "layer-k-resnet",
                   "layer-k-ffnet", "readout-k", "chi-ab-log-resnet", "tensor", "chi-out-ab"):
        assert needed in labels_tex


def test_assumptions_are_printed(outputs):
    tex = outputs[TEX]
    for relation in (r"K_{aa} > 0", r"\Delta \geq 0", r"\left|{c}\right| \leq 1", r"\succeq 0"):
        assert relation in tex


def test_document_compiles(outputs, tmp_path: Path):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed (texlive-latex-base); cannot compile the docs")
    (tmp_path / "equations.tex").write_text(outputs[TEX])
    run = subprocess.run([pdflatex, "-halt-on-error", "-interaction=nonstopmode",
                          "equations.tex"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "equations.pdf").stat().st_size > 0
    log = (tmp_path / "equations.log").read_text(errors="replace")
    overfull = [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    assert max(overfull, default=0.0) < 30.0, f"lines overflow the page: {overfull}"


def test_equations_parse_back():
    """Single-line right-hand sides parse with parse_latex and agree numerically."""
    pytest.importorskip("antlr4", reason="sympy's parse_latex needs antlr4 (not installed)")
    from sympy.parsing.latex import LaTeXParsingError, parse_latex

    try:
        parse_latex("x")
    except ImportError as error:  # antlr4 present, but not the runtime version SymPy needs
        pytest.skip(f"parse_latex unavailable: {error}")

    values = {"K_{aa}": 0.7, "K_{bb}": 1.3, "K_{ab}": 0.4, r"\Delta": 0.7 * 1.3 - 0.16,
              "q": 0.9, r"\alpha": 0.2, "x": 0.3}
    # parse_latex reads K_{aa} as K_{a*a}, and pi, e as plain symbols
    parsed_values = {key.lstrip("\\"): value for key, value in values.items()}
    parsed_values.update({"K_{a*a}": values["K_{aa}"], "K_{b*b}": values["K_{bb}"],
                          "K_{a*b}": values["K_{ab}"], "pi": math.pi, "e": math.e})
    compared = 0
    for section in document([FAMILIES[name] for name in BUILTIN]).sections:
        for eq in section.equations:
            if len(eq.lines) != 1 or eq.relation != "=" or eq.rhs is None:
                continue
            try:
                parsed = parse_latex(eq.lines[0])
            except (LaTeXParsingError, TypeError, ValueError):
                continue
            names = {s.name for s in parsed.free_symbols}
            if not names <= set(parsed_values) or parsed.atoms(sp.core.function.AppliedUndef):
                continue
            printed = {s: SymfieldLatexPrinter().doprint(s) for s in eq.rhs.free_symbols}
            if not set(printed.values()) <= set(values):
                continue
            original = {s: values[tex] for s, tex in printed.items()}
            at = {s: parsed_values[s.name] for s in parsed.free_symbols}
            expected = complex(sp.N(eq.rhs.subs(original), 20))
            got = complex(sp.N(parsed.subs(at), 20))
            assert abs(got - expected) <= 1e-12 * max(1.0, abs(expected)), eq.label
            compared += 1
    assert compared >= 10


def test_render_is_deterministic(outputs):
    """Rendering twice in one process gives the same text, with no dates in it. (Across
    PYTHONHASHSEED values the whole build, docs included, is compared byte for byte
    with the repository in tests/test_build.py.)"""
    again = load_derivation(DOCS).outputs()
    assert again == outputs
    for text in outputs.values():
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "no dates in generated docs"
