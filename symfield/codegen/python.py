"""Render a :class:`~symfield.ir.KernelRoutine` into a plain numpy module (jinja2)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jinja2
import sympy as sp

from .. import __version__
from .. import quadrature_rules as rules
from ..action import BETA, GAMMA, RHO, SB2, SB2_OUT, SW2, SW2_OUT
from ..gaussian import KAA, KAB, KBB, Q, X
from ..ir import (
    DIAG_DERIVATIVES,
    DIAG_MOMENTS,
    MOMENTS,
    PAIR_MOMENTS,
    KernelRoutine,
    pair_price_orders,
)
from ..numerics import DELTA, EXCESS, EXCESS_M, GAP, GAP_M, SA, SB
from ..response import DK, DQ, DQA, DQB
from .printer import NumpyExpressionPrinter, hoist_per_input, print_block

#: Names of the layer-loop variables in the generated code.
LOOP_NAMES = {Q: "q", KAB: "k", GAMMA: "gamma", BETA: "beta", SW2: "sw2", SB2: "sb2",
              SW2_OUT: "sw2_out", SB2_OUT: "sb2_out", **{s: n for n, s in MOMENTS.items()}}
INVARIANTS = (GAMMA, BETA, SW2, SB2, SW2_OUT, SB2_OUT)
READOUT = ("out_q", "out_k", "R_q", "R_k", "R_qa", "R_qb")
PAIR_VARIANTS = {"value": ("G",), "grad": ("G", "G_k"), "full": ("G", "G_k", "G_qa", "G_qb"),
                 "second": PAIR_MOMENTS}
DIAG_VARIANTS = {"value": ("G_d",), "grad": ("G_d", "G_d_q"), "second": DIAG_MOMENTS}


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("symfield.codegen", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=False, lstrip_blocks=False)


@dataclass
class PairVariant:
    name: str
    per_input: list[tuple[str, str]]
    gathered: list[tuple[str, str, str]]
    uses_delta: bool
    lines: list[tuple[str, str]]
    outputs: list[str]


def _float_list(values) -> str:
    """A float array as a list literal, wrapped at 88 columns (repr: round-trips exactly)."""
    items = [repr(float(v)) for v in values]
    lines, line = [], "["
    for item in items:
        if len(line) + len(item) + 2 > 84:
            lines.append(line.rstrip())
            line = "    "
        line += item + ", "
    return "\n".join([*lines, line.rstrip(", ") + "]"])


def _param_names(routine: KernelRoutine) -> dict[sp.Symbol, str]:
    return {p: p.name for p in routine.params}


def _pair_variant(routine: KernelRoutine, name: str, outputs: tuple[str, ...],
                  printer_modules: set[str]) -> PairVariant:
    hoisted = hoist_per_input({o: routine.pair[o] for o in outputs}, routine.params)
    names = {**_param_names(routine), Q: "q", KAA: "qa", KBB: "qb", KAB: "k", DELTA: "Delta"}
    printer = NumpyExpressionPrinter(names)
    per_input = []
    for symbol, expr in hoisted.per_input:
        per_input.append((symbol.name, printer.doprint(expr)))
        printer.names[symbol] = symbol.name
    gathered = []
    for symbol, source, index in hoisted.gathered:
        printer.names[symbol] = symbol.name
        gathered.append((symbol.name, source, index))
    needs = set().union(*(e.free_symbols for e in hoisted.pair.values()))
    for var, label, index in ((KAA, "qa", "iu"), (KBB, "qb", "ju")):
        if var in needs:
            gathered.append((label, "q", index))
    block = print_block(hoisted.pair, printer, prefix="t")
    printer_modules.update(printer.module_imports)
    return PairVariant(name, per_input, gathered, DELTA in needs, block.lines, block.outputs)


def _hoist_invariants(exprs: dict[str, sp.Expr], invariant: set[sp.Symbol]
                      ) -> tuple[list[tuple[sp.Symbol, sp.Expr]], dict[str, sp.Expr]]:
    """Move subexpressions of loop-invariant parameters (e.g. beta**2*sw2) out of the loop."""
    table: dict[sp.Expr, sp.Symbol] = {}

    def visit(expr: sp.Expr) -> sp.Expr:
        if expr.free_symbols and expr.free_symbols <= invariant and not expr.is_Symbol:
            if expr not in table:
                table[expr] = sp.Symbol(f"c{len(table)}")
            return table[expr]
        if expr.is_Add or expr.is_Mul:
            # numbers and invariant parameters fold into one hoisted constant
            fixed = [a for a in expr.args if a.free_symbols <= invariant]
            rest = [a for a in expr.args if a not in fixed]
            if len(fixed) > 1 and rest and any(a.free_symbols for a in fixed):
                return expr.func(visit(expr.func(*fixed)), *[visit(a) for a in rest])
        if not expr.args:
            return expr
        return expr.func(*[visit(a) for a in expr.args])

    rewritten = {name: visit(expr) for name, expr in exprs.items()}
    return [(s, e) for e, s in table.items()], rewritten


def render_module(routine: KernelRoutine, *, source: str, spec_hash: str) -> str:
    """The generated numpy module for one activation family, as text."""
    modules: set[str] = set()
    params = [p.name for p in routine.params]
    context: dict[str, object] = {
        "title": f"symfield generated module: {routine.family.name}",
        "family": routine.family.name, "description": routine.family.description,
        "version": __version__, "sympy_version": sp.__version__, "source": source,
        "spec_hash": spec_hash, "kind": routine.kind, "params": params,
        "param_args": "".join(f", {p}" for p in params),
        "param_call": "".join(f", {p}" for p in params),
        "param_kwargs": "".join(f", {p}" for p in params),
        "accuracy": repr(routine.stated_accuracy),
        "nodes": routine.quadrature.nodes if routine.quadrature else None,
        "q_max": repr(routine.quadrature.q_max) if routine.quadrature else None,
        "q_min": repr(routine.quadrature.q_min) if routine.quadrature else None,
        "accuracy_second": (repr(routine.quadrature.stated_accuracy_second)
                            if routine.quadrature else repr(routine.stated_accuracy)),
    }
    context["pair_moment_names"] = repr(PAIR_VARIANTS["second"])
    context["diag_moment_names"] = repr(DIAG_VARIANTS["second"])
    if routine.kind == "exact":
        diag_printer = NumpyExpressionPrinter({**_param_names(routine), Q: "q"})
        context["diag_variants"] = []
        for name, outputs in DIAG_VARIANTS.items():
            block = print_block({o: routine.diag[o] for o in outputs}, diag_printer)
            context["diag_variants"].append({"name": name, "lines": block.lines,
                                             "outputs": block.outputs})
        modules.update(diag_printer.module_imports)
        context["pair_variants"] = [_pair_variant(routine, name, outputs, modules)
                                    for name, outputs in PAIR_VARIANTS.items()]
    else:
        assert routine.quadrature is not None
        phi_printer = NumpyExpressionPrinter({**_param_names(routine), X: "x"})
        plan = routine.quadrature
        context["t_max"] = repr(rules.T_MAX)
        context["zero_nonfinite"] = plan.zero_nonfinite
        context["density"] = _float_list(rules.density_points())
        context["structure"] = _float_list(plan.structure)
        context["phi_text"] = [phi_printer.doprint(e) for e in plan.phis]
        # phi and its derivatives up to each order, with common subexpressions shared
        context["phi_upto"] = [
            print_block({f"d{i}": e for i, e in enumerate(plan.phis[:top + 1])},
                        NumpyExpressionPrinter({**_param_names(routine), X: "x"}), prefix="w")
            for top in range(1, len(plan.phis))]
        context["square_text"] = [(order, phi_printer.doprint(plan.squares[order]))
                                  for order in range(0, len(plan.squares), 2)]
        modules.update(phi_printer.module_imports)
        context["diag_variants"] = [
            {"name": name, "outputs": outputs,
             "orders": repr(tuple(len(DIAG_DERIVATIVES[o]) for o in outputs))}
            for name, outputs in DIAG_VARIANTS.items()]
        context["pair_variants"] = [
            {"name": name, "outputs": outputs,
             "orders": repr(tuple(pair_price_orders(o) for o in outputs))}
            for name, outputs in PAIR_VARIANTS.items()]

    readout_printer = NumpyExpressionPrinter({**LOOP_NAMES, **_param_names(routine)})
    context["readout"] = {name: readout_printer.doprint(expr)
                          for name, expr in routine.layer.items() if name in READOUT}
    context["nets"] = [_net_context(routine, net, gamma, beta)
                       for net, (gamma, beta) in sorted(routine.processes.items())]
    context["layer_text"] = {name: sp.sstr(routine.layer[name]) for name in ("q_new", "k_new")}
    context["uses_scipy"] = any(m.startswith("scipy") for m in modules)
    return environment().get_template("kernel_module.py.j2").render(**context)


def _net_context(routine: KernelRoutine, net: str, gamma: sp.Expr, beta: sp.Expr) -> dict:
    """Layer expressions specialised to one net (gamma, beta substituted), invariants hoisted.

    For closed-form families the kernel-only step is also fused: the moments are
    substituted into the layer map so constants fold and no moment arrays are
    materialised (``fused``).
    """
    process_inputs = sorted(s.name for s in (gamma.free_symbols | beta.free_symbols))
    params = [p.name for p in routine.params]
    specialised = {name: sp.expand(expr.subs({GAMMA: gamma, BETA: beta}))
                   for name, expr in routine.layer.items() if name not in READOUT}
    tangent = routine.tangents.get(net, {})
    specialised.update({f"tangent_{name}": expr for name, expr in tangent.items()})
    if routine.gram is not None:
        specialised["Delta_new"] = routine.gram.subs({GAMMA: gamma, BETA: beta})
    if routine.kind == "exact":
        specialised["fused_q"] = specialised["q_new"].subs(MOMENTS["G_d"], routine.diag["G_d"])
        specialised["fused_k"] = specialised["k_new"].subs(MOMENTS["G"], routine.pair["G"])
    invariant = set(INVARIANTS) | set(routine.params) | {RHO}
    hoisted, layer = _hoist_invariants(specialised, invariant)
    names = {**LOOP_NAMES, RHO: "rho", DQ: "dq", DQA: "dq_a", DQB: "dq_b", DK: "dk",
             KAA: "qa", KBB: "qb", SA: "sa", SB: "sb", DELTA: "Delta", EXCESS: "W", GAP: "D",
             EXCESS_M: "W_m", GAP_M: "D_m",
             **_param_names(routine)}
    printer = NumpyExpressionPrinter(names)
    invariants = []
    for symbol, expr in hoisted:
        invariants.append((symbol.name, printer.doprint(expr)))
        printer.names[symbol] = symbol.name
    constants = {symbol for symbol, _ in hoisted}
    fused = None
    if routine.kind == "exact":
        fused = _fused_step(layer.pop("fused_q"), layer.pop("fused_k"),
                            tuple(routine.params) + tuple(sorted(constants, key=str)),
                            dict(printer.names))
    gram = _gram_lines(layer.pop("Delta_new", None), printer)
    log_abs = {}
    for name in ("J_q", "J_k"):
        constant, rest = layer[name].as_coeff_Add()
        # log|1 + x| by log1p keeps products of many near-1 factors accurate (ResNet)
        log_abs[name] = (f"_log_abs_1p({printer.doprint(rest)})" if constant == 1
                         else f"_log_abs({name})")
    return {
        "name": net, "gamma": str(gamma), "beta": str(beta), "log_abs": log_abs,
        "process_inputs": process_inputs,
        "inputs": process_inputs + ["sw2", "sb2"] + params,
        "invariants": invariants, "fused": fused, "gram": gram,
        "delta_init": ("Delta = _gram_det(numpy.repeat(q, counts, axis=-1), "
                       "numpy.take(q, ju, axis=-1), k)" if gram else
                       "Delta = None  # no stable Gram map: the moments recompute it"),
        "state_update": ("q, k, Delta = q_new, k_new, Delta_new" if gram
                         else "q, k = q_new, k_new"),
        "tangent": {name[len("tangent_"):]: printer.doprint(expr)
                    for name, expr in layer.items() if name.startswith("tangent_")},
        "layer": {name: printer.doprint(expr) for name, expr in layer.items()
                  if not name.startswith("tangent_")},
    }


def _fused_step(q_new: sp.Expr, k_new: sp.Expr, constants: tuple[sp.Symbol, ...],
                names: dict[sp.Symbol, str]) -> list[tuple[str, str]]:
    """Straight-line code for one kernel-only layer: per-input work, gathers, pair work."""
    hoisted = hoist_per_input({"k_new": k_new}, constants)
    printer = NumpyExpressionPrinter({**names, KAA: "qa", KBB: "qb", DELTA: "Delta"})
    per_input = {symbol.name: expr for symbol, expr in hoisted.per_input}
    per_input["q_new"] = q_new
    lines = print_block(per_input, printer, prefix="s").lines
    for symbol, _ in hoisted.per_input:
        printer.names[symbol] = symbol.name
    needs = hoisted.pair["k_new"].free_symbols
    gathered = list(hoisted.gathered)
    for var, label, index in ((KAA, "qa", "iu"), (KBB, "qb", "ju")):
        if var in needs:
            gathered.append((sp.Symbol(label), "q", index))
    for symbol, source, index in gathered:
        printer.names[symbol] = symbol.name
        call = (f"numpy.repeat({source}, counts, axis=-1)" if index == "iu"
                else f"numpy.take({source}, ju, axis=-1)")
        lines.append((symbol.name, call))
    lines += print_block(hoisted.pair, printer, prefix="p").lines
    return lines


def _gram_lines(step: sp.Expr | None, printer: NumpyExpressionPrinter) -> list[str]:
    """Statements for Delta' (the Gram determinant carried through the loop).

    With a stable map (numerics.stable_gram) Delta' is computed from the old state
    (q, k, Delta) and its helpers, the c -> -1 branch only when some K_ab < 0; without
    one nothing is carried (the pair moments recompute Delta, smooth families do not
    need more).
    """
    if step is None:
        return []
    if isinstance(step, sp.Piecewise):
        (plus, _), (minus, _) = step.args
    else:
        plus, minus = step, None
    needs = step.free_symbols
    lines = []
    if KAA in needs:
        lines.append("qa = numpy.repeat(q, counts, axis=-1)")
    if KBB in needs:
        lines.append("qb = numpy.take(q, ju, axis=-1)")
    if needs & {SA, SB, GAP, GAP_M}:
        lines.append("sq = numpy.sqrt(q)")
        lines.append("sa, sb = numpy.repeat(sq, counts, axis=-1), numpy.take(sq, ju, axis=-1)")
    for symbol, name, text in ((EXCESS, "W", "_excess(Delta, k)"),
                               (GAP, "D", "_gap(sa * sb, k, Delta)")):
        if symbol in plus.free_symbols:
            lines.append(f"{name} = {text}")
    lines.append(f"Delta_new = numpy.maximum({printer.doprint(plus)}, 0.0)")
    if minus is not None:
        lines.append("if numpy.any(k < 0):  # the branch at c -> -1")
        for symbol, name, text in ((EXCESS_M, "W_m", "_excess(Delta, -k)"),
                                   (GAP_M, "D_m", "_gap(sa * sb, -k, Delta)")):
            if symbol in minus.free_symbols:
                lines.append(f"    {name} = {text}")
        lines.append(f"    Delta_new = numpy.where(k >= 0, Delta_new, "
                     f"numpy.maximum({printer.doprint(minus)}, 0.0))")
    return lines
