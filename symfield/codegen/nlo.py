"""Render the one-loop moment module ``generated/nlo_<family>.py`` (jinja2).

The expressions come from :mod:`symfield.expansion` (closed forms by Price's
series or the polar integral; Price orders for quadrature); this module only
prints them and fills the template. Quadrature families get the rules of
:mod:`symfield.codegen.nlo_rules` copied in.
"""

from __future__ import annotations

import functools
import inspect

import sympy as sp

from .. import __version__
from ..activations import Family
from ..expansion import (
    COV,
    KINDS,
    PAIR_OUTPUTS,
    SA,
    SB,
    THETA,
    V_A,
    V_B,
    kind_function,
    one_dim_moments,
    pair_plan,
)
from ..gaussian import Q, X, derivative
from ..ir import GenerationError
from . import nlo_rules
from .printer import NumpyExpressionPrinter, print_block
from .python import environment


def _derivatives(g: sp.Expr, order: int) -> list[sp.Expr]:
    out = [g]
    for _ in range(order):
        out.append(derivative(out[-1]))
    return out


def _rules_source() -> str:
    """The quadrature rules of :mod:`symfield.codegen.nlo_rules`, verbatim, minus the import."""
    source = inspect.getsource(nlo_rules)
    body = source.split("import numpy\n", 1)[1]
    return body.strip("\n")


def _price_terms() -> list[tuple[int, int, sp.Rational]]:
    from ..expansion import PRICE_ORDERS

    return [PRICE_ORDERS[name] for name in PAIR_OUTPUTS]


def _moment_symbols(expr: sp.Expr) -> tuple[sp.Expr, str | None, str | None]:
    """m_<kind>_k(v_a) -> m<k>_a (and _b); returns the kinds read on each side."""
    sides: dict[str, str] = {}

    def rename(f: sp.Expr) -> sp.Expr:
        kind, order = f.func.__name__[2:].rsplit("_", 1)
        side = "a" if f.args[0] == V_A else "b"
        sides[side] = kind
        return sp.Symbol(f"m{order}_{side}")

    out = expr.replace(lambda e: isinstance(e, sp.Function) and
                       e.func.__name__.startswith("m_") and len(e.args) == 1, rename)
    return out, sides.get("a"), sides.get("b")


@functools.lru_cache(maxsize=16)
def render_nlo_module(family: Family, *, source: str, spec_hash: str) -> str:
    params = {p: p.name for p in family.params}
    modules: set[str] = set()
    gfuncs: dict[tuple[str, int], dict[str, str]] = {}

    def gfunc(kind: str, order: int) -> str:
        key = (kind, order)
        if key not in gfuncs:
            expr = _derivatives(kind_function(family, kind), order)[order]
            printer = NumpyExpressionPrinter({**params, X: "x"})
            text = printer.doprint(expr)
            modules.update(printer.module_imports)
            gfuncs[key] = {"name": f"_g_{kind}_{order}", "text": text,
                           "doc": f"d^{order}/dx^{order} of g = {kind}: {sp.sstr(expr)}"}
        return gfuncs[key]["name"]

    one_dims = []
    quadrature = False
    for kind in KINDS:
        closed = one_dim_moments(family, kind)
        g_text = sp.sstr(kind_function(family, kind))
        if closed is not None:
            printer = NumpyExpressionPrinter({**params, Q: "v"})
            block = print_block(dict(zip(("m", "m_v", "m_vv"), closed, strict=True)), printer)
            modules.update(printer.module_imports)
            one_dims.append({"kind": kind, "g": g_text, "closed": True, "lines": block.lines,
                             "outputs": block.outputs, "how": "closed form"})
        else:
            quadrature = True
            # heat equation / Price: d^n m / dv^n = 2^-n E[g^(2n)(u)]
            terms = [(gfunc(kind, 2 * n), repr(0.5**n)) for n in range(3)]
            one_dims.append({"kind": kind, "g": g_text, "closed": False, "terms": terms,
                             "how": "quadrature (nlo_rules), Price's theorem for the derivatives"})
    pairs = []
    quadrature_pairs = []
    for ki in KINDS:
        for kj in KINDS:
            plan = pair_plan(family, ki, kj)
            entry: dict[str, object] = {"ki": ki, "kj": kj}
            if plan.method == "closed":
                renamed, m_a, m_b = {}, None, None
                for name in PAIR_OUTPUTS:
                    expr, a, b = _moment_symbols(plan.exprs[name])
                    renamed[name] = expr
                    m_a, m_b = m_a or a, m_b or b
                polar = any(e.has(THETA) or e.has(SA) or e.has(SB) for e in renamed.values())
                names = {**params, V_A: "va", V_B: "vb", COV: "c", SA: "s_a", SB: "s_b",
                         THETA: "theta"}
                for side in "ab":
                    for order in range(3):
                        sym = sp.Symbol(f"m{order}_{side}")
                        names[sym] = sym.name
                printer = NumpyExpressionPrinter(names)
                block = print_block(renamed, printer)
                modules.update(printer.module_imports)
                how = ("polar integral (piecewise homogeneous g), Price's theorem for the "
                       "partials" if polar else "Price's series in c (polynomial partner)")
                entry.update(closed=True, polar=polar, m_a=m_a, m_b=m_b, lines=block.lines,
                             outputs=block.outputs, how=how)
            else:
                quadrature = True
                terms = [(gfunc(ki, di), gfunc(kj, dj), repr(float(f)))
                         for di, dj, f in _price_terms()]
                quadrature_pairs.append((ki, kj))
                entry.update(closed=False, terms=terms,
                             how="2-D quadrature by conditioning (nlo_rules), Price's theorem "
                                 "for the partials")
            pairs.append(entry)
    if quadrature and family.params:
        raise GenerationError(f"{family.name}: quadrature with family parameters")
    text = environment().get_template("nlo_module.py.j2").render(
        title=f"symfield generated module: nlo_{family.name}", family=family.name,
        description=family.description, version=__version__, sympy_version=sp.__version__,
        source=source, spec_hash=spec_hash, params=[p.name for p in family.params],
        param_args="".join(f", {p.name}" for p in family.params),
        param_call="".join(f", {p.name}" for p in family.params),
        quadrature=quadrature, rules=_rules_source() if quadrature else "",
        uses_scipy=any(m.startswith("scipy") for m in modules),
        gfuncs=[gfuncs[k] for k in sorted(gfuncs)], one_dims=one_dims, pairs=pairs)
    return text
