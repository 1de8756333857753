"""LaTeX (and Markdown) documents of every derived equation.

:class:`SymfieldLatexPrinter` prints right-hand sides only (SymPy's
``LatexPrinter`` with the project's notation); the functions below name the
derived objects as :class:`Equation` s grouped in :class:`Section` s, and the
jinja2 templates ``equations.tex.j2`` / ``equations.md.j2`` write the
documents. Nothing here derives: the expressions come from
:func:`symfield.ir.kernel_routine` and :class:`symfield.action.Action`; this
module only names, specialises (gamma, beta) and layer-indexes them for display.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jinja2
import sympy as sp
from sympy.printing.latex import LatexPrinter

from .. import __version__
from ..action import BETA, G_D, GAMMA, PROCESSES, RESNET, RHO, SB2, SB2_OUT, SW2, SW2_OUT, Action, G
from ..activations import ALPHA, Family
from ..gaussian import KAA, KAB, KBB, Q, X
from ..ir import MOMENTS, KernelRoutine, kernel_routine
from ..numerics import DELTA

#: Rough width of a display line, in the units of :func:`visual_width`.
LINE_WIDTH = 72.0

#: Symbol name -> LaTeX (keyed by name: moment symbols and functions share letters).
SYMBOL_TEX: dict[str, str] = {
    KAA.name: "K_{aa}", KBB.name: "K_{bb}", KAB.name: "K_{ab}", Q.name: "q", X.name: "x",
    DELTA.name: r"\Delta", ALPHA.name: r"\alpha", RHO.name: r"\rho",
    GAMMA.name: r"\gamma", BETA.name: r"\beta",
    SW2.name: r"\sigma_w^2", SB2.name: r"\sigma_b^2",
    SW2_OUT.name: r"\sigma_{w,\mathrm{out}}^2", SB2_OUT.name: r"\sigma_{b,\mathrm{out}}^2",
    MOMENTS["G"].name: "G", MOMENTS["G_d"].name: "G_d",
    MOMENTS["G_k"].name: r"\,\partial_{K_{ab}} G", MOMENTS["G_qa"].name: r"\,\partial_{K_{aa}} G",
    MOMENTS["G_qb"].name: r"\,\partial_{K_{bb}} G", MOMENTS["G_d_q"].name: r"\,\partial_q G_d",
    "c": "c", "chi_out_ab": r"\chi^{\mathrm{out}}_{ab}", "chi_out_aa": r"\chi^{\mathrm{out}}_{aa}",
    "chi_out_ab_aa": r"\chi^{\mathrm{out}}_{ab,aa}",
}

#: Undefined function name -> LaTeX.
FUNCTION_TEX: dict[str, str] = {
    G.__name__: "G", G_D.__name__: "G_d", "G_4": "G_4",
    "phi": r"\phi", "dphi": r"\phi'", "d2phi": r"\phi''",
}

#: Indexed base name -> LaTeX with ``%s`` for the (joined) indices: layer-indexed
#: quantities print the layer as a superscript, quadrature nodes as subscripts.
INDEXED_TEX: dict[str, str] = {
    "G": r"G\big(K^{(%s)}\big)", "G_d": r"G_d\big(q^{(%s)}\big)",
    "G_k": r"\,\partial_{K_{ab}} G\big(K^{(%s)}\big)",
    "G_qa": r"\,\partial_{K_{aa}} G\big(K^{(%s)}\big)",
    "G_qb": r"\,\partial_{K_{bb}} G\big(K^{(%s)}\big)",
    "G_d_q": r"\,\partial_q G_d\big(q^{(%s)}\big)",
    "J_k": r"J^{(%s)}_{k}", "J_qa": r"J^{(%s)}_{q_a}", "J_qb": r"J^{(%s)}_{q_b}",
    "J_q": r"J^{(%s)}_{q}",
    "chi_aa": r"\chi^{(%s)}_{aa}", "chi_bb": r"\chi^{(%s)}_{bb}", "chi_ab": r"\chi^{(%s)}_{ab}",
    "X_a": r"X^{(%s)}_{a}", "X_b": r"X^{(%s)}_{b}",
    "w": "w_{%s}", "z": "z_{%s}", "u_a": "u_{a,%s}", "u_b": "u_{b,%s}",
}

#: Action field symbols: C1_12 (field), Ct1_12 (conjugate), K0_12 (input kernel).
FIELD_SYMBOL = re.compile(r"^(Ct|C|K)(\d+)_(\d)(\d)$")
FIELD_STEM = {"C": "C", "Ct": r"\tilde{C}", "K": "K"}


class SymfieldLatexPrinter(LatexPrinter):
    """LatexPrinter with symfield's notation; prints expressions, never documents.

    ``names`` overrides the LaTeX of symbols by name (e.g. ``K_aa -> K^{(l-1)}_{aa}``);
    ``layers`` / ``indices`` rename the layer and input labels of action fields
    (``{"1": "l"}``, ``{"1": "a", "2": "b"}``).
    """

    def __init__(self, names: Mapping[str, str] | None = None,
                 layers: Mapping[str, str] | None = None,
                 indices: Mapping[str, str] | None = None):
        super().__init__({"inv_trig_style": "full", "ln_notation": True, "long_frac_ratio": 2})
        self.names = {**SYMBOL_TEX, **(names or {})}
        self.layers = dict(layers or {})
        self.indices = dict(indices or {})

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:  # noqa: N802
        if expr.name in self.names:
            return self.names[expr.name]
        match = FIELD_SYMBOL.match(expr.name)
        if match:
            stem, layer, a, b = match.groups()
            layer = self.layers.get(layer, layer)
            sub = self.indices.get(a, a) + self.indices.get(b, b)
            return f"{FIELD_STEM[stem]}^{{({layer})}}_{{{sub}}}"
        return super()._print_Symbol(expr, style=style)

    def _print_AppliedUndef(self, expr: sp.Function, exp: str | None = None) -> str:  # noqa: N802
        name = FUNCTION_TEX.get(expr.func.__name__, expr.func.__name__)
        args = ", ".join(self._print(arg) for arg in expr.args)
        tex = rf"{name}\left({args}\right)"
        return tex if exp is None else rf"{tex}^{{{exp}}}"

    def _print_Derivative(self, expr: sp.Derivative) -> str:  # noqa: N802
        inner = expr.expr
        if isinstance(inner, sp.core.function.AppliedUndef) and len(expr.variables) == 1:
            name = FUNCTION_TEX.get(inner.func.__name__, inner.func.__name__)
            # a thin space: \partial is an ordinary symbol and would touch the factor before it
            return rf"\,\partial_{{{self._print(expr.variables[0])}}} {name}"
        return super()._print_Derivative(expr)

    def _print_atan2(self, expr: sp.atan2, exp: str | None = None) -> str:  # noqa: N802
        y, x = (self._print(arg) for arg in expr.args)
        tex = rf"\operatorname{{atan2}}\left({y}, {x}\right)"
        return tex if exp is None else rf"{tex}^{{{exp}}}"

    def _print_Heaviside(self, expr: sp.Heaviside, exp: str | None = None) -> str:  # noqa: N802
        tex = rf"\Theta\left({self._print(expr.args[0])}\right)"
        return tex if exp is None else rf"\left({tex}\right)^{{{exp}}}"

    def _print_Indexed(self, expr: sp.Indexed) -> str:  # noqa: N802
        template = INDEXED_TEX.get(expr.base.label.name)
        if template is None:
            return super()._print_Indexed(expr)
        return template % "".join(self._print(i) for i in expr.indices)

    def _print_Sum(self, expr: sp.Sum) -> str:  # noqa: N802
        bounds = {tuple(limit[1:]) for limit in expr.limits}
        if len(expr.limits) == 1 or len(bounds) != 1:
            return super()._print_Sum(expr)
        lower, upper = (self._print(b) for b in expr.limits[0][1:])
        names = ",".join(self._print(limit[0]) for limit in expr.limits)
        body = self._print(expr.function)
        if isinstance(expr.function, sp.Add):
            body = rf"\left({body}\right)"
        return rf"\sum_{{{names}={lower}}}^{{{upper}}} {body}"

    def parenthesize_super(self, s: str) -> str:
        """Also bracket symbols printed as operators (``\\partial_q G_d``) under a power."""
        if r"\partial" in s:
            return rf"\left({s}\right)"
        return super().parenthesize_super(s)

    def doprint_lines(self, expr: sp.Expr, width: float = LINE_WIDTH) -> tuple[str, ...]:
        """Print ``expr``; a sum wider than ``width`` is split between its terms."""
        whole = self.doprint(expr)
        if not isinstance(expr, sp.Add) or visual_width(whole) <= width:
            return (whole,)
        pieces = []
        for i, term in enumerate(self._as_ordered_terms(expr)):
            sign = ""
            if i and term.could_extract_minus_sign():
                sign, term = "- ", -term
            elif i:
                sign = "+ "
            tex = self._print(term)
            if self._needs_add_brackets(term):
                tex = rf"\left({tex}\right)"
            pieces.append(sign + tex)
        lines: list[str] = []
        current = ""
        for piece in pieces:
            candidate = f"{current} {piece}" if current else piece
            if current and visual_width(candidate) > width:
                lines.append(current)
                current = piece
            else:
                current = candidate
        lines.append(current)
        return tuple(lines)


# -- a rough rendered width, to decide where to break lines ----------------------------
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")
_TEXT_COMMANDS = ("operatorname", "mathrm", "text", "mathbb", "mathcal")
_SPACES = {",": 0.2, ";": 0.3, ":": 0.25, "!": 0.0, " ": 0.3, "quad": 1.0, "qquad": 2.0}
_SCRIPT = 0.7


def visual_width(tex: str) -> float:
    """Approximate rendered width of a LaTeX math string (about one unit per letter)."""
    return _group_width(tex, 0)[0]


def _group_width(tex: str, i: int) -> tuple[float, int]:
    total = 0.0
    while i < len(tex):
        ch = tex[i]
        if ch == "}":
            return total, i + 1
        if ch in "^_":
            width, i = _atom_width(tex, i + 1)
            total += _SCRIPT * width
            continue
        width, i = _atom_width(tex, i)
        total += width
    return total, i


def _atom_width(tex: str, i: int) -> tuple[float, int]:
    """Width of one atom at ``tex[i]``: a group, a command with its arguments, a character."""
    if i >= len(tex):
        return 0.0, i
    ch = tex[i]
    if ch == "{":
        return _group_width(tex, i + 1)
    if ch == "\\":
        match = _COMMAND.match(tex, i)
        assert match is not None
        name, i = match.group(1), match.end()
        if name == "frac":
            num, i = _atom_width(tex, i)
            den, i = _atom_width(tex, i)
            return max(num, den) + 0.4, i
        if name == "sqrt":
            inner, i = _atom_width(tex, i)
            return inner + 1.0, i
        if name in _TEXT_COMMANDS:
            end = tex.index("}", i)
            return 0.8 * len(tex[i + 1:end]), end + 1
        if name in ("left", "right", "big", "Big", "bigg", "Bigg"):
            delimiter = _COMMAND.match(tex, i) if tex[i] == "\\" else None
            end = delimiter.end() if delimiter else i + 1
            return (0.0 if tex[i:end] == "." else 0.5), end
        if name in _SPACES:
            return _SPACES[name], i
        if name in ("cdot", "leq", "geq", "approx", "equiv", "in"):
            return 2.0, i
        return 1.0, i
    if ch == " ":
        return 0.0, i + 1
    if ch in "+-=<>":
        return 2.0, i + 1
    if ch in "(),.|[]'":
        return 0.5, i + 1
    return 1.0, i + 1


# -- named equations -------------------------------------------------------------------
@dataclass(frozen=True)
class Equation:
    """One displayed equation: ``lhs relation lines... tail``.

    ``description`` is prose with inline ``$...$`` maths (valid in LaTeX and
    Markdown); ``rhs`` keeps the SymPy right-hand side for checks.
    """

    label: str
    lhs: str
    lines: tuple[str, ...]
    description: str
    relation: str = "="
    tail: str = ""
    rhs: sp.Basic | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Section:
    """A titled group of equations; ``level`` 1 is a section, 2 a subsection."""

    title: str
    intro: str
    equations: tuple[Equation, ...]
    level: int = 1


@dataclass(frozen=True)
class Assumption:
    """A stated assumption: a relation in LaTeX and where it is declared or enforced."""

    tex: str
    text: str


def equation(printer: SymfieldLatexPrinter, label: str, lhs: sp.Basic | str, rhs: sp.Basic,
             description: str, relation: str = "=", tail: str = "") -> Equation:
    """Print ``lhs relation rhs`` with line breaks that keep it on the page."""
    lhs_tex = lhs if isinstance(lhs, str) else printer.doprint(lhs)
    room = LINE_WIDTH - visual_width(lhs_tex) - 3.0 - visual_width(tail)
    lines = printer.doprint_lines(rhs, max(room, 30.0))
    return Equation(label, lhs_tex, lines, description, relation, tail, rhs)


def _layer_names(layer: str) -> dict[str, str]:
    """Print the pair symbols as the kernel of layer ``layer`` (e.g. ``l-1``)."""
    return {KAA.name: f"K^{{({layer})}}_{{aa}}", KBB.name: f"K^{{({layer})}}_{{bb}}",
            KAB.name: f"K^{{({layer})}}_{{ab}}", Q.name: f"q^{{({layer})}}"}


PAIR_ARGS = (KAA, KBB, KAB)
INDEX_AB = {"1": "a", "2": "b"}


def notation_section() -> tuple[Section, tuple[Assumption, ...]]:
    """Delta, c and the stated assumptions (from the symbols' declared assumptions)."""
    printer = SymfieldLatexPrinter()
    c = sp.Symbol("c")
    eqs = (
        equation(printer, "gram", DELTA, KAA * KBB - KAB**2,
                 "Gram determinant of a pair; the stable forms use it as a symbol "
                 "(computed with an error-free product and clamped at $0$)."),
        equation(printer, "correlation", c, KAB / sp.sqrt(KAA * KBB),
                 "Correlation of a pair (computed once, never as a ratio inside acos)."),
    )
    declared: dict[str, list[str]] = {}
    for symbol in (KAA, KBB, Q, SW2, SB2, SW2_OUT, SB2_OUT, RHO, KAB, ALPHA, X):
        if symbol.is_positive:
            relation, text = sp.Gt(symbol, 0, evaluate=False), "declared positive"
        elif symbol.is_nonnegative:
            relation, text = sp.Ge(symbol, 0, evaluate=False), "declared non-negative"
        elif symbol.is_real:
            relation, text = sp.Contains(symbol, sp.Reals, evaluate=False), "declared real"
        else:
            continue
        declared.setdefault(text, []).append(printer.doprint(relation))
    stated = tuple(Assumption(r", \quad ".join(relations), text + " (SymPy assumptions)")
                   for text, relations in declared.items())
    pair = (
        Assumption(printer.doprint(sp.Ge(DELTA, 0, evaluate=False)),
                   "each pair of a positive semi-definite kernel (PSD, checked on input)"),
        Assumption(printer.doprint(sp.Le(sp.Abs(c), 1, evaluate=False)),
                   "equivalent to $\\Delta \\geq 0$ for positive variances"),
        Assumption(r"K^{(0)} = K^{(0)\top} \succeq 0",
                   "the input kernel: symmetric PSD, positive diagonal (checked by "
                   "check\\_kernel in symfield.spec)"),
    )
    intro = ("A pair of inputs $a \\neq b$ has variances $K_{aa}, K_{bb}$ and covariance "
             "$K_{ab}$; a single variance is written $q$. Throughout "
             "$G(K_{aa}, K_{bb}, K_{ab}) = \\mathbb{E}[\\phi(u_a) \\phi(u_b)]$ with "
             "$u \\sim \\mathcal{N}(0, K)$ and $G_d(q) = \\mathbb{E}[\\phi(u)^2]$, "
             "$u \\sim \\mathcal{N}(0, q)$.")
    return Section("Notation and assumptions", intro, eqs), stated + pair


def action_section(routine: KernelRoutine) -> Section:
    """The one-layer action of the generic process and the explicit 2-layer ResNet action."""
    layer = SymfieldLatexPrinter(_layer_names("l-1"), {"1": "l"}, INDEX_AB)
    explicit = Action(RESNET, n_inputs=1, depth=2)
    two = SymfieldLatexPrinter(layers={"3": r"\mathrm{out}"}, indices={"1": "a"})
    eqs = (
        equation(layer, "action-layer", r"S\big[C^{(l)}, \tilde{C}^{(l)}\big]",
                 routine.layer_map.action,
                 "One layer of the generic process $h^{(l)} = \\gamma h^{(l-1)} + \\beta "
                 "\\xi^{(l)}$ for a pair of inputs, $W$ to first order in $\\tilde{C}$ "
                 "(its first cumulant); the process is Markov in $l$, so this is the whole "
                 "recursion."),
        equation(two, "action-resnet-2", r"S\big[C, \tilde{C}\big]", explicit.S,
                 "Explicit action of a ResNet with $L = 2$ hidden layers and a readout, one "
                 "input ($P = 1$), $W$ to first order: the variances are "
                 "$\\Sigma^{(l)} = K^{(0)} + \\rho^2 \\sum_{k \\leq l} C^{(k)}$."),
    )
    intro = ("Auxiliary fields $C^{(l)}_{ab} = \\sigma_b^2 + (\\sigma_w^2/N) \\sum_i "
             "\\phi(h^{(l-1)}_{ia}) \\phi(h^{(l-1)}_{ib})$ with conjugates "
             "$\\tilde{C}^{(l)}$ give $p(C) = \\int D\\tilde{C} \\, e^{N S[C, \\tilde{C}]}$ "
             "with $S = -\\sum_l \\operatorname{tr} \\tilde{C}^{(l)} C^{(l)} + "
             "W(\\tilde{C}; C)$ and $W = \\ln \\mathbb{E}_{h|C} \\exp \\sum_l "
             "\\operatorname{tr} \\tilde{C}^{(l)} f^{(l)}$, "
             "$f^{(l)}_{ab} = \\sigma_b^2 + \\sigma_w^2 \\phi(h^{(l-1)}_a) "
             "\\phi(h^{(l-1)}_b)$.")
    return Section("The action", intro, eqs)


def saddle_section(routine: KernelRoutine) -> Section:
    """dS/dCt = 0 at Ct = 0 for a hidden layer and for the readout."""
    lm = routine.layer_map
    eqs = []
    for tag, equations, layer, kernel in (("layer", lm.saddle_equations, "l", "l-1"),
                                          ("readout", lm.readout_equations, r"\mathrm{out}",
                                           "L")):
        printer = SymfieldLatexPrinter(_layer_names(kernel), {"1": layer}, INDEX_AB)
        for eq, ab in zip(equations, ("aa", "ab", "bb"), strict=True):
            lhs = (rf"\left.\frac{{\partial S}}{{\partial \tilde{{C}}^{{({layer})}}_{{{ab}}}}}"
                   r"\right|_{\tilde{C} = 0}")
            eqs.append(equation(printer, f"saddle-{tag}-{ab}", lhs, eq.lhs,
                                f"Stationarity in $\\tilde{{C}}^{{({layer})}}_{{{ab}}}$ "
                                f"({tag}).", tail="= 0"))
    return Section("Saddle point", "Leading order in $1/N$: $\\tilde{C}^* = 0$ solves "
                   "$\\partial S / \\partial C = 0$ (as $W(0; C) = 0$), and "
                   "$\\partial S/\\partial \\tilde{C} = 0$ at $\\tilde{C} = 0$ fixes $C^*$, "
                   "layer by layer.", tuple(eqs))


def layer_section(routine: KernelRoutine) -> Section:
    """The kernel map for the generic process, per network, and the readout."""
    lm = routine.layer_map
    printer = SymfieldLatexPrinter(_layer_names("l-1"))
    eqs = [equation(printer, "layer-q", "q^{(l)}", lm.diag,
                    "Diagonal of the layer map ($q = K_{aa}$), generic process."),
           equation(printer, "layer-k", "K^{(l)}_{ab}", lm.pair,
                    "Off-diagonal entry of the layer map, generic process."),
           equation(printer, "layer-gram", r"\Delta^{(l)}", lm.gram,
                    "Gram determinant $\\Delta = K_{aa} K_{bb} - K_{ab}^2$ of a pair, derived "
                    "from the layer map as $q_a^{(l)} q_b^{(l)} - (K^{(l)}_{ab})^2$: the generated "
                    "loop carries it as a state with this map (in a stable form per family), "
                    "so coinciding inputs ($\\Delta = 0$) stay coinciding.")]
    for net, (gamma, beta) in sorted(routine.processes.items()):
        values = {GAMMA: gamma, BETA: beta}
        process = PROCESSES[net]
        note = (f"{net}: $(\\gamma, \\beta) = ({printer.doprint(gamma)}, "
                f"{printer.doprint(beta)})$")
        eqs.append(equation(printer, f"layer-q-{net}", "q^{(l)}", lm.diag.subs(values),
                            note + f", {process.name} diagonal."))
        eqs.append(equation(printer, f"layer-k-{net}", "K^{(l)}_{ab}", lm.pair.subs(values),
                            note + f", {process.name} off-diagonal."))
    out = SymfieldLatexPrinter(_layer_names("L"))
    eqs.append(equation(out, "readout-q", r"q^{\mathrm{out}}", lm.readout_diag,
                        "Readout map, diagonal."))
    eqs.append(equation(out, "readout-k", r"K^{\mathrm{out}}_{ab}", lm.readout_pair,
                        "Readout map, off-diagonal."))
    return Section("Layer map (NNGP kernel recursion)",
                   "The solution of the saddle-point equations: $K^{(l)} = C^{(l)*}$ as a "
                   "function of $K^{(l-1)}$, for $l = 1, \\dots, L$, and the output kernel.",
                   tuple(eqs))


def _scientific(value: float) -> str:
    """A stated accuracy such as 1e-10 as LaTeX ``10^{-10}``."""
    exponent = math.floor(math.log10(value))
    mantissa = value / 10.0**exponent
    if math.isclose(mantissa, 1.0):
        return f"10^{{{exponent}}}"
    return f"{mantissa:.1f} \\times 10^{{{exponent}}}"


def family_section(routine: KernelRoutine) -> Section:
    """phi and its Gaussian moments (closed forms, or the quadrature rule)."""
    family = routine.family
    printer = SymfieldLatexPrinter()
    name = family.name
    phi = sp.Function("phi")
    pair = G(*PAIR_ARGS)
    eqs = [equation(printer, f"{name}-phi", phi(X), family.phi, "The activation.")]
    if routine.kind == "exact":
        partials = {"G": pair, "G_k": sp.Derivative(pair, KAB),
                    "G_qa": sp.Derivative(pair, KAA), "G_qb": sp.Derivative(pair, KBB)}
        for key, lhs in partials.items():
            raw, stable = routine.pair_raw[key], routine.pair[key]
            what = "Pair expectation" if key == "G" else "Partial derivative"
            same = sp.srepr(raw) == sp.srepr(stable)
            eqs.append(equation(printer, f"{name}-{key}", lhs, raw,
                                f"{what} as derived (Price's theorem)"
                                + ("; already numerically stable." if same else ".")))
            if not same:
                how = "in $\\Delta$, with atan2" if stable.has(sp.atan2) else "in $\\Delta$"
                eqs.append(equation(printer, f"{name}-{key}-stable", lhs, stable,
                                    f"Numerically stable form ({how}), as generated."))
        eqs.append(equation(printer, f"{name}-G_d", G_D(Q), routine.diag["G_d"],
                            "Diagonal expectation $G(q, q, q)$."))
        eqs.append(equation(printer, f"{name}-G_d_q", sp.Derivative(G_D(Q), Q),
                            routine.diag["G_d_q"], "Its derivative in $q$."))
        if routine.gram is not None:
            branches = (routine.gram.args if isinstance(routine.gram, sp.Piecewise)
                        else ((routine.gram, True),))
            notes = (
                "$K_{ab} \\geq 0$: every term carries $\\Delta$, $(s_a - s_b)^2$ "
                "($s = \\sqrt{q}$), $D = \\sqrt{K_{aa} K_{bb}} - K_{ab}$ (computed as "
                "$\\Delta / (s_a s_b + K_{ab})$) or $W = \\sqrt{\\Delta} - K_{ab}"
                " \\operatorname{atan2}(\\sqrt{\\Delta}, K_{ab}) \\geq 0$",
                "$K_{ab} < 0$: the same at $c \\to -1$ with $D_m = \\sqrt{K_{aa} K_{bb}} + "
                "K_{ab}$ and $W_m = \\sqrt{\\Delta} + K_{ab} \\operatorname{atan2}"
                "(\\sqrt{\\Delta}, -K_{ab})$; the boundary value is a sum of powers of "
                "$(s_a - s_b)^2$ with factored coefficients")
            for (expr, _), note, tag in zip(branches, notes, ("", "-minus"), strict=False):
                eqs.append(equation(
                    printer, f"{name}-gram-stable{tag}", r"\Delta^{(l)}", expr,
                    "The Gram map with these moments, as generated, for " + note
                    + ": no cancellation as $|c| \\to 1$ (right-hand side at layer $l - 1$)."))
        intro = "Closed forms derived by Price's theorem from the identity table."
    else:
        plan = routine.quadrature
        assert plan is not None
        eqs += _quadrature_equations(printer, name, plan.dphi, plan.d2phi)
        intro = (f"No closed form in the identity table: composite Gauss-Legendre "
                 f"quadrature in the standard-normal variable, {plan.nodes} nodes per panel, "
                 f"panels cut at density points and at $\\phi$'s structure points "
                 f"(0 and a ladder of scale {sp.nsimplify(plan.scale)}) mapped into it; "
                 f"nodes $z_i$ and weights $w_i$ (density included) depend on the mean and "
                 f"variance, their number does not. Measured relative accuracy "
                 f"${_scientific(plan.stated_accuracy)}$ (second derivatives "
                 f"${_scientific(plan.stated_accuracy_second)}$; the worst error against "
                 f"adaptive QUADPACK, rounded up) for "
                 f"${sp.nsimplify(plan.q_min)} \\leq q \\leq {sp.nsimplify(plan.q_max)}$; "
                 f"other variances are refused.")
    return Section(f"Family {name}", f"{family.description}. {intro}", tuple(eqs), level=2)


def _quadrature_equations(printer: SymfieldLatexPrinter, name: str, dphi: sp.Expr,
                          d2phi: sp.Expr) -> list[Equation]:
    """phi', phi'' and the Gauss-Hermite rules (with a symbolic node count n)."""
    phi, d1, d2 = sp.Function("phi"), sp.Function("dphi"), sp.Function("d2phi")
    i, j, n = sp.symbols("i j n", integer=True, positive=True)
    w, z = sp.IndexedBase("w"), sp.IndexedBase("z")
    ua, ub = sp.IndexedBase("u_a")[i], sp.IndexedBase("u_b")[i, j]
    c, s = sp.Symbol("c"), sp.Symbol("s")
    pair = G(*PAIR_ARGS)
    u = sp.sqrt(Q) * z[i]

    def double(summand: sp.Expr) -> sp.Expr:
        return sp.Sum(w[i] * w[j] * summand, (i, 1, n), (j, 1, n))

    rules = [
        ("G_d", G_D(Q), sp.Sum(w[i] * phi(u) ** 2, (i, 1, n)), "Diagonal expectation."),
        ("G_d_q", sp.Derivative(G_D(Q), Q),
         sp.Sum(w[i] * (d1(u) ** 2 + phi(u) * d2(u)), (i, 1, n)),
         "$\\partial_q \\mathbb{E}[\\phi^2] = \\mathbb{E}[\\phi'^2 + \\phi \\phi'']$ "
         "(Price's theorem)."),
        ("G", pair, double(phi(ua) * phi(ub)), "Pair expectation, on the nodes below."),
        ("G_k", sp.Derivative(pair, KAB), double(d1(ua) * d1(ub)),
         "$\\partial_{K_{ab}} G = \\mathbb{E}[\\phi'(u_a) \\phi'(u_b)]$ (Price)."),
        ("G_qa", sp.Derivative(pair, KAA), double(d2(ua) * phi(ub)) / 2,
         "$\\partial_{K_{aa}} G = \\frac{1}{2} \\mathbb{E}[\\phi''(u_a) \\phi(u_b)]$; "
         "$\\partial_{K_{bb}} G$ likewise."),
    ]
    eqs = [equation(printer, f"{name}-dphi", d1(X), dphi, "First derivative of $\\phi$."),
           equation(printer, f"{name}-d2phi", d2(X), d2phi, "Second derivative of $\\phi$.")]
    eqs += [equation(printer, f"{name}-{key}-rule", lhs, rhs, text, relation=r"\approx")
            for key, lhs, rhs, text in rules]
    eqs.append(equation(printer, f"{name}-nodes-a", ua, sp.sqrt(KAA) * z[i],
                        "Outer nodes of the pair rule (the input of larger variance is "
                        "called $a$), with $c$ the correlation and "
                        "$s = \\sqrt{\\Delta / (K_{aa} K_{bb})}$."))
    eqs.append(equation(printer, f"{name}-nodes-b", ub, sp.sqrt(KBB) * (c * z[i] + s * z[j]),
                        "Inner nodes: $u_b \\mid u_a \\sim N(K_{ab} u_a / K_{aa}, "
                        "\\Delta / K_{aa})$, with a rule $(z_j, w_j)$ adapted to that "
                        "conditional law (a point mass at $s = 0$)."))
    return eqs


def _layered(expr: sp.Expr, layer: sp.Expr) -> sp.Expr:
    """Moment symbols evaluated at the kernel of ``layer`` (display only)."""
    return expr.subs({symbol: sp.IndexedBase(name)[layer] for name, symbol in MOMENTS.items()})


def response_section(routine: KernelRoutine) -> Section:
    """Jacobian entries, the product (log) form of chi, the tensor recursion and chi_out."""
    rm = routine.response_map
    printer = SymfieldLatexPrinter()
    l, m, L = sp.symbols("l m L", integer=True, positive=True)
    jk, jq, jqa = (sp.IndexedBase(n) for n in ("J_k", "J_q", "J_qa"))
    chi_ab, chi_aa, xa = (sp.IndexedBase(n) for n in ("chi_ab", "chi_aa", "X_a"))
    dk = r"\partial K^{(l)}_{ab}"
    eqs = [
        equation(printer, "jacobian-k", rf"J_k \equiv \frac{{{dk}}}{{\partial K^{{(l-1)}}_{{ab}}}}",
                 rm.pair_k, "Off-diagonal Jacobian entry, at $K^{(l-1)}$."),
        equation(printer, "jacobian-qa",
                 rf"J_{{q_a}} \equiv \frac{{{dk}}}{{\partial K^{{(l-1)}}_{{aa}}}}", rm.pair_qa,
                 "Mixing of the diagonal into $K_{ab}$ ($J_{q_b}$ likewise)."),
        equation(printer, "jacobian-q",
                 r"J_q \equiv \frac{\partial q^{(l)}}{\partial q^{(l-1)}}", rm.diag_q,
                 "Diagonal Jacobian entry. $J^{(m)}$ below is $J$ at $K^{(m-1)}$."),
    ]
    eqs += [
        equation(printer, "chi-ab", chi_ab[l], sp.Product(jk[m], (m, 1, l)),
                 "Off-diagonal response $\\partial K^{(l)}_{ab} / \\partial K^{(0)}_{ab}$ at "
                 "fixed diagonal ($\\chi^{(0)} = 1$)."),
        equation(printer, "chi-aa", chi_aa[l], sp.Product(jq[m], (m, 1, l)),
                 "Diagonal response $\\partial K^{(l)}_{aa} / \\partial K^{(0)}_{aa}$."),
    ]
    for net, (gamma, beta) in sorted(routine.processes.items()):
        values = {GAMMA: gamma, BETA: beta}
        for key, moment in (("ab", "J_k"), ("aa", "J_q")):
            factor = _layered(routine.layer[moment].subs(values), m - 1)
            eqs.append(equation(printer, f"chi-{key}-log-{net}",
                                rf"\ln\left|\chi^{{(l)}}_{{{key}}}\right|",
                                sp.Sum(sp.log(sp.Abs(factor)), (m, 1, l)),
                                f"{net}: the product in log space, as the generated code "
                                "sums it (the sign is tracked separately)."))
    eqs.append(equation(printer, "tensor", xa[l], jk[l] * xa[l - 1] + jqa[l] * chi_aa[l - 1],
                        "Mixed entry $X^{(l)}_a = \\partial K^{(l)}_{ab} / "
                        "\\partial K^{(0)}_{aa}$ of the response tensor, $X^{(0)}_a = 0$ "
                        "($X_b$ likewise); all other entries of $\\chi^{(l)}_{ab,cd}$ "
                        "vanish."))
    readout = {name: _layered(routine.layer[name], L) for name in ("R_k", "R_q", "R_qa")}
    eqs += [
        equation(printer, "chi-out-ab", sp.Symbol("chi_out_ab"), readout["R_k"] * chi_ab[L],
                 "Output response $\\partial K^{\\mathrm{out}}_{ab} / \\partial K^{(0)}_{ab}$."),
        equation(printer, "chi-out-ab-log", r"\ln\left|\chi^{\mathrm{out}}_{ab}\right|",
                 sp.log(sp.Abs(readout["R_k"])) + sp.log(sp.Abs(chi_ab[L])),
                 "The same in log form."),
        equation(printer, "chi-out-aa", sp.Symbol("chi_out_aa"), readout["R_q"] * chi_aa[L],
                 "Output diagonal response."),
        equation(printer, "chi-out-mixed", sp.Symbol("chi_out_ab_aa"),
                 readout["R_k"] * xa[L] + readout["R_qa"] * chi_aa[L],
                 "Output mixed entry $\\partial K^{\\mathrm{out}}_{ab} / "
                 "\\partial K^{(0)}_{aa}$."),
    ]
    return Section("Response functions",
                   "The response tensor $\\chi^{(l)}_{ab,cd} = \\partial K^{(l)}_{ab} / "
                   "\\partial K^{(0)}_{cd}$ is propagated with the Jacobian of the layer map, "
                   "one layer at a time.", tuple(eqs))


def _loop_names(n: int) -> dict[str, str]:
    """LaTeX for the Taylor coefficients of the general causal action (expansion.py)."""
    names: dict[str, str] = {"kappa3": r"\kappa_3"}
    for l in range(1, n + 1):
        for m in range(1, n + 1):
            names[f"R_{l}{m}"] = f"R_{{{l}{m}}}"
            names[f"Q_{l}{m}"] = f"Q_{{{l}{m}}}"
            for k in range(1, n + 1):
                names[f"H_{l}_{m}{k}"] = f"H^{{({l})}}_{{{m}{k}}}"
                names[f"dQ_{l}{m}_{k}"] = rf"\partial_{{{k}}} Q_{{{l}{m}}}"
    return names


def one_loop_section() -> Section:
    """The one-loop terms of the general causal action, as the engine derives them."""
    from ..activations import FAMILIES
    from ..expansion import COV, V_A, V_B, derive_one_loop_structure, pair_plan

    n = 3
    printer = SymfieldLatexPrinter(_loop_names(n))
    res, ff = derive_one_loop_structure(n, "resnet"), derive_one_loop_structure(n, "ffnet")
    eqs = [
        equation(printer, "loop-response", r"N \langle \delta C_3 \, \delta\tilde{C}_1 \rangle",
                 res.expansion.mixed[2, 0],
                 "Mixed propagator (minus the inverse Hessian of $S$ at the saddle): the "
                 "response $A = (I - R)^{-1}$, with $R_{lk} = \\partial \\mu_l / \\partial C_k$."),
        equation(printer, "loop-cov", r"N \operatorname{Cov}(\delta C_2, \delta C_2)",
                 res.expansion.cov[1, 1], "Field fluctuations, $V = A Q A^\\top$ "
                 "($Q$ the per-neuron noise covariance of $f$)."),
        equation(printer, "loop-mean-2", r"N \langle \delta C_2 \rangle", res.expansion.mean[1],
                 "Mean shift of the second field from the cubic vertices (ResNet pattern: every "
                 "field depends on all earlier ones; $\\partial_k Q_{lm}$ is the noise "
                 "covariance's dependence on $C_k$, the vertex "
                 "$\\tilde{C} \\tilde{C} \\delta C$)."),
        equation(printer, "loop-T-3", "T_3", res.T[2],
                 "The noise-covariance diagram $T_l = \\sum_{m,k} \\partial_k Q_{lm} A_{km}$ "
                 "for the third field (ResNet); the engine checks "
                 "$N\\langle \\delta C \\rangle = A[\\tfrac12 H : V + T]$ entry by entry."),
        equation(printer, "loop-mean-3-ffnet", r"N \langle \delta C_3 \rangle_{\mathrm{FFNet}}",
                 ff.expansion.mean[2],
                 "FFNet pattern (each field depends on the previous one, noise diagonal): "
                 "$T = 0$, only the tadpole $\\tfrac12 H : V$ remains."),
    ]
    m_printer = SymfieldLatexPrinter({V_A.name: "v_a", V_B.name: "v_b", COV.name: "c"})
    plan = pair_plan(FAMILIES["erf"], "phi2", "x2")
    series = plan.exprs["M"].replace(
        lambda e: isinstance(e, sp.core.function.AppliedUndef)
        and e.func.__name__.startswith("m_phi2_"),
        lambda e: sp.Function(f"m_{e.func.__name__.rsplit('_', 1)[1]}")(*e.args))
    eqs.append(equation(m_printer, "loop-price-series",
                        r"\mathbb{E}\big[\phi(x)^2 y^2\big]", series,
                        "A four-point moment of the one-loop terms by Price's series in the "
                        "covariance $c$ (the partner $y^2$ is a polynomial); "
                        "$m_{k}(v) = \\partial_v^k \\, \\mathbb{E}\\, \\phi(u)^2$, "
                        "$u \\sim \\mathcal{N}(0, v)$."))
    intro = ("Expanding $N S$ around $(C^*, \\tilde{C}^* = 0)$ with $z = \\sqrt{N} (\\delta C, "
             "\\delta \\tilde{C})$: the propagator is $-(S'')^{-1}$ and "
             "$N \\langle \\delta z_a \\rangle = \\langle z_a \\, S^{(3)}[z,z,z]/6 \\rangle_0$ "
             "(Isserlis). Shown for the general causal action of three fields with means "
             "$\\mu_l(C)$ and noise covariances $Q_{lm}(C)$; the full action of nets with "
             "$L \\le 3$ is checked against the same engine in the tests.")
    return Section("One loop: finite-width corrections", intro, tuple(eqs))


def criticality_section() -> Section:
    """The FFNet order-to-chaos maps and slopes (:func:`symfield.criticality.derive_maps`)."""
    from ..criticality import CORR, QSTAR, derive_maps

    maps = derive_maps()
    line = r"\big(q^*, q^*, c\,q^*\big)"
    names = {QSTAR.name: "q^*", CORR.name: "c", MOMENTS["G"].name: "G" + line,
             MOMENTS["G_k"].name: r"\,\partial_{K_{ab}} G" + line,
             MOMENTS["G_d"].name: r"G_d(q)", MOMENTS["G_d_q"].name: r"\,\partial_q G_d(q)"}
    printer = SymfieldLatexPrinter(names)
    at_one = SymfieldLatexPrinter({**names, MOMENTS["G_k"].name:
                                   r"\,\partial_{K_{ab}} G\big(q^*, q^*, q^*\big)"})
    eqs = (
        equation(printer, "crit-variance", "V(q)", maps.variance,
                 "Variance map: the FFNet diagonal of the layer map ($\\gamma = 0$, "
                 "$\\beta = 1$); $q^* = V(q^*)$ is its attracting fixed point."),
        equation(printer, "crit-chi-q", r"\chi_q", maps.chi_q,
                 "Its slope, $\\partial V / \\partial q$, at $q = q^*$; "
                 "$\\xi_q = -1/\\ln \\chi_q$."),
        equation(printer, "crit-correlation", "M(c)", maps.correlation,
                 "Correlation map: the off-diagonal of the layer map on the line "
                 "$K_{aa} = K_{bb} = q^*$, $K_{ab} = c\\,q^*$, over $q^* = V(q^*)$; "
                 "$c^* = M(c^*)$."),
        equation(printer, "crit-chi-c", r"\chi_c", maps.chi_c,
                 "Its slope $\\mathrm{d}M/\\mathrm{d}c$ (chain rule along the line), "
                 "at $c = c^*$; $\\xi_c = -1/\\ln \\chi_c$."),
        equation(at_one, "crit-chi-1", r"\chi_1", maps.chi_1,
                 "The slope at $c = 1$: $\\chi_1 < 1$ ordered ($c^* = 1$ attracts), "
                 "$\\chi_1 > 1$ chaotic ($c^* < 1$), $\\chi_1 = 1$ critical."),
    )
    return Section("Criticality of FFNets (order to chaos)",
                   "Fixed points of the FFNet layer map and their stability, differentiated "
                   "from the derived map; the moments are evaluated at the arguments shown.",
                   eqs)


# -- documents ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    """Everything the templates print."""

    sections: tuple[Section, ...]
    assumptions: tuple[Assumption, ...]


def document(families: Sequence[Family]) -> Document:
    """Name every derived equation for ``families`` (kernel routines are cached)."""
    if not families:
        raise ValueError("document() needs at least one activation family")
    routines = [kernel_routine(family) for family in families]
    notation, assumptions = notation_section()
    first = routines[0]  # the action, layer and response maps are activation-agnostic
    sections = [notation, action_section(first), saddle_section(first), layer_section(first),
                Section("Activation families",
                        "Gaussian expectations of each family.", ())]
    sections += [family_section(routine) for routine in routines]
    sections.append(response_section(first))
    sections.append(criticality_section())
    sections.append(one_loop_section())
    return Document(tuple(sections), assumptions)


#: Text-mode escapes; the symbols OT1 fonts lack go through maths (no TS1 fonts needed).
_TEX_SPECIAL = {"\\": r"$\backslash$", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}",
                "|": r"$|$", "<": r"$<$", ">": r"$>$"}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def tex_prose(text: str) -> str:
    """Prose with ``$...$`` maths -> LaTeX: text outside the maths is escaped.

    Backslash escapes already in the text (``check\\_kernel``) are kept.
    """
    parts = text.split("$")
    for k in range(0, len(parts), 2):
        parts[k] = re.sub(r"\\_|([&%#_~^|<>])",
                          lambda m: m.group(0) if m.group(1) is None else _TEX_SPECIAL[m.group(1)],
                          parts[k])
    return "$".join(parts)


def md_prose(text: str) -> str:
    """Prose for Markdown: undo TeX text escapes outside the maths."""
    parts = text.split("$")
    for k in range(0, len(parts), 2):
        parts[k] = parts[k].replace("\\_", "_")
    return "$".join(parts)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("symfield.codegen", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(tex=tex_escape, tex_prose=tex_prose, md_prose=md_prose)
    return env


def render_documents(families: Sequence[Family], *, source: str,
                     spec_hash: str) -> dict[str, str]:
    """``{"tex": ..., "md": ...}``: the equation documents, byte-deterministic."""
    doc = document(families)
    context = {"doc": doc, "version": __version__, "sympy_version": sp.__version__,
               "source": source, "spec_hash": spec_hash,
               "families": [family.name for family in families]}
    env = environment()
    return {fmt: env.get_template(f"equations.{fmt}.j2").render(**context)
            for fmt in ("tex", "md")}
