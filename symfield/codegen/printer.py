"""Expression printers (right-hand sides only) and the per-input hoisting pass.

Statements, loops and signatures live in the jinja2 templates; this module
turns SymPy expressions into numpy expressions with SymPy's own printers
(``strict`` on, so an unmapped function fails at generation time).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ..gaussian import KAA, KBB, Q
from ..ir import GenerationError


class NumpyExpressionPrinter(NumPyPrinter):
    """NumPy printer (scipy.special for erf) with an explicit symbol -> name table.

    A symbol not in the table is an error: every name a printed expression
    uses must be an argument or an earlier statement of the generated code.
    """

    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({"strict": True, "fully_qualified_modules": True})
        self.names = dict(names)

    def _print_Symbol(self, symbol: sp.Symbol) -> str:  # noqa: N802 - SymPy API
        try:
            return self.names[symbol]
        except KeyError:
            raise GenerationError(f"symbol {symbol} has no name in the generated code") from None

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:  # noqa: N802 - SymPy API
        # H(0) = 1/2, the convention the Gaussian expectations use
        return f"{self._module_format('numpy.heaviside')}({self._print(expr.args[0])}, 0.5)"

    def _print_erf(self, expr: sp.erf) -> str:  # noqa: N802 - SymPy API
        return f"{self._module_format('scipy.special.erf')}({self._print(expr.args[0])})"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:  # noqa: N802
        if expr.exp == -1:
            return f"1/{self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE['Pow'])}"
        return super()._print_Pow(expr, rational=rational)


@dataclass
class Statements:
    """Straight-line code: (name, expression text) assignments and the output names."""

    lines: list[tuple[str, str]]
    outputs: list[str]


def print_block(exprs: dict[str, sp.Expr], printer: NumpyExpressionPrinter,
                prefix: str = "t") -> Statements:
    """cse + print: temporaries first, then one line per named output."""
    names = list(exprs)
    symbols = sp.numbered_symbols(prefix)
    replacements, reduced = sp.cse([exprs[n] for n in names], symbols=symbols,
                                   optimizations="basic", order="canonical")
    lines = []
    for symbol, expr in replacements:
        printer.names[symbol] = str(symbol)
        lines.append((str(symbol), printer.doprint(expr)))
    for name, expr in zip(names, reduced, strict=True):
        lines.append((name, printer.doprint(expr)))
    return Statements(lines, names)


@dataclass
class HoistedPair:
    """A pair block split into per-input definitions and per-pair expressions."""

    per_input: list[tuple[sp.Symbol, sp.Expr]]       # u_i = f(q), computed once per input
    gathered: list[tuple[sp.Symbol, str, str]]        # (symbol, source array, index: iu|ju)
    pair: dict[str, sp.Expr]


def hoist_per_input(exprs: dict[str, sp.Expr], params: tuple[sp.Symbol, ...]) -> HoistedPair:
    """Hoist subexpressions of K_aa alone (or K_bb alone) out of the pair loop.

    ``1/sqrt(1 + 2 K_aa)`` is computed P times instead of P^2/2 times. The same
    function of K_bb is recognised as the twin of the K_aa one and shares it.
    """
    params_set = set(params)
    table: dict[sp.Expr, sp.Symbol] = {}   # f(q) -> u_i
    per_input: list[tuple[sp.Symbol, sp.Expr]] = []
    used: set[tuple[sp.Symbol, str]] = set()

    def per_input_symbol(sub: sp.Expr, var: sp.Symbol) -> sp.Symbol:
        canonical = sub.subs(var, Q)
        if canonical not in table:
            symbol = sp.Symbol(f"u{len(table)}")
            table[canonical] = symbol
            per_input.append((symbol, canonical))
        base = table[canonical]
        side = "a" if var == KAA else "b"
        used.add((base, side))
        return sp.Symbol(f"{base.name}_{side}")

    def costly(expr: sp.Expr) -> bool:
        # worth a gather only if it needs a root, a division or a function call
        return bool(expr.atoms(sp.Function)) or any(
            not p.exp.is_Integer or p.exp < 0 for p in expr.atoms(sp.Pow))

    def fold_coefficient(expr: sp.Mul) -> sp.Expr:
        # 2 k f(K_aa) f(K_bb) -> k (sqrt(2) f)(K_aa) (sqrt(2) f)(K_bb): one pass fewer per pair
        coeff, rest = expr.as_coeff_Mul()
        if not (coeff.is_positive and coeff != 1):
            return expr
        factors = list(sp.Mul.make_args(rest))
        for i, fa in enumerate(factors):
            if fa.free_symbols <= {KAA} | params_set and KAA in fa.free_symbols and costly(fa):
                twin = fa.subs(KAA, KBB)
                if twin in factors:
                    j = factors.index(twin)
                    root = sp.sqrt(coeff)
                    # hoist right away: as symbols, SymPy cannot merge the roots back
                    factors[i] = per_input_symbol(root * fa, KAA)
                    factors[j] = per_input_symbol(root * twin, KBB)
                    return sp.Mul(*[visit(f) for f in factors])
        return expr

    def visit(expr: sp.Expr) -> sp.Expr:
        if expr.is_Mul:
            expr = fold_coefficient(expr)
        for var in (KAA, KBB):
            free = expr.free_symbols
            if var in free and free <= {var} | params_set and costly(expr):
                return per_input_symbol(expr, var)
        if not expr.args:
            return expr
        return expr.func(*[visit(arg) for arg in expr.args])

    pair = {name: visit(expr) for name, expr in exprs.items()}
    gathered = []
    for symbol, _ in per_input:
        for side, index in (("a", "iu"), ("b", "ju")):
            if (symbol, side) in used:
                gathered.append((sp.Symbol(f"{symbol.name}_{side}"), symbol.name, index))
    return HoistedPair(per_input, gathered, pair)
