"""High-precision reference path: the leading-order propagation in mpmath.

Two pieces:

* :func:`mp_expectations` gives the Gaussian moments of an activation as
  mpmath callables: lambdified closed forms for families SymPy could close
  (kind ``exact``), or Gauss-Legendre quadrature over the standard normal for
  the others (kind ``quadrature``), with the pair in Cholesky form
  ``u_a = sqrt(qa) z1``, ``u_b = sqrt(qb) (c z1 + sqrt(1-c^2) z2)``.
* :func:`propagate_mp` substitutes them into the derived layer map and its
  Jacobian (:mod:`symfield.saddle`, :mod:`symfield.response`) and loops over
  the layers, as the generated numpy code does, at ``dps`` digits.

Precision: everything runs inside ``mpmath.workprec`` at ``dps`` digits, or at
the ambient precision when that is higher (so ``mp.diff`` through these
functions works); the global precision is restored on exit.

Quadrature rule (why not nested adaptive ``mp.quad``): a nested tanh-sinh
``mp.quad`` needs about 10^6 integrand calls, ~50 s, per pair value at 30
digits. Here the line is truncated at ``|z| <= W`` (Gaussian tail below
10^-(dps+6)), cut at the breaks (0, and where ``u_b = 0`` if phi is kinked or
steep there), and covered by Gauss-Legendre panels graded by factors of two
away from each break; a panel gets 0.8 nodes per digit its values need and is
evaluated at that precision (fewer digits where the density has decayed). One
pass gives G, G_k, G_qa, G_qb together: about 2-5 s at 30 digits. Measured
against the closed forms (``tests/test_mp_reference.py``): relative errors
1e-22 to 1e-28 at 30 digits; the diagonal (1-D) takes milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import mpmath
import sympy as sp
from mpmath import mp

from . import quadrature_rules as rules
from .action import BETA, GAMMA, PROCESSES, RHO, SB2, SB2_OUT, SW2, SW2_OUT
from .activations import Activation, derive, resolve
from .gaussian import KAA, KAB, KBB, Q, X
from .ir import MOMENTS, check_moments_exist, layer_expressions
from .response import derive_response_map
from .saddle import derive_layer_map
from .spec import NetworkSpec, check_kernel

Mpf = mpmath.mpf
Matrix = list[list[Mpf]]
PairFn = Callable[[object, object, object], Mpf]
DiagFn = Callable[[object], Mpf]


# -- precision --------------------------------------------------------------------------
@contextlib.contextmanager
def working_precision(dps: int) -> Iterator[None]:
    """At least ``dps`` digits (keeps a higher ambient precision); restores it on exit."""
    with mp.workprec(max(mp.prec, mpmath.libmp.dps_to_prec(int(dps)))):
        yield


def to_mpf(value: object) -> Mpf:
    """A number as mpf; Python/numpy floats are read as their shortest decimal (0.1 -> 1/10)."""
    if isinstance(value, mpmath.mpf):
        return +value
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return mp.mpf(repr(float(value)))  # type: ignore[arg-type]
    if hasattr(value, "__index__"):  # Python and numpy integers
        return mp.mpf(int(value))  # type: ignore[call-overload]
    return mp.mpf(value)  # type: ignore[arg-type]


def exact_param(value: float) -> sp.Rational:
    """A family parameter as the decimal it is written as (leaky_relu:0.2 -> 1/5)."""
    return sp.Rational(repr(float(value)))


# -- quadrature rules --------------------------------------------------------------------
#: Gauss-Legendre nodes per panel per digit needed, the width of the panels next
#: to z = 0 (the density's centre), and the first panel width next to a steep or
#: kinked point in units of the integrand's scale there.
NODES_PER_DIGIT = 0.8
CENTRE_PANEL = 4
STEEP_PANEL = 1


@dataclass(frozen=True)
class Panel:
    """Gauss-Legendre nodes of one panel and the precision (bits) its values need."""

    prec: int
    nodes: tuple[Mpf, ...]
    weights: tuple[Mpf, ...]


@functools.lru_cache(maxsize=512)
def _legendre(n: int, prec: int) -> tuple[tuple[Mpf, ...], tuple[Mpf, ...]]:
    """Gauss-Legendre nodes and weights on [-1, 1] by Newton's method on P_n."""
    nodes: list[Mpf] = []
    weights: list[Mpf] = []
    with mp.workprec(prec + 20):
        tol = mp.ldexp(1, -prec - 10)
        for i in range(1, n // 2 + 1):
            x = mp.cos(mp.pi * (i - mp.mpf(0.25)) / (n + mp.mpf(0.5)))
            for _ in range(100):
                p0, p1 = mp.one, x  # P_{k-1}, P_k by the three-term recurrence
                for k in range(2, n + 1):
                    p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
                dp = n * (x * p1 - p0) / (x * x - 1)
                step = p1 / dp
                x -= step
                if abs(step) < tol:
                    break
            weight = 2 / ((1 - x * x) * dp * dp)
            nodes += [x, -x]
            weights += [weight, weight]
        if n % 2:
            p0, p1 = mp.one, mp.zero  # P_n'(0) for odd n via the recurrence at x = 0
            for k in range(2, n + 1):
                p0, p1 = p1, (-(k - 1) * p0) / k
            dp = n * p0
            nodes.append(mp.zero)
            weights.append(2 / (dp * dp))
    with mp.workprec(prec):
        return tuple(+x for x in nodes), tuple(+w for w in weights)


def half_width(dps: float) -> Mpf:
    """Truncation |z| <= W with exp(-W^2/2) < 10^-(dps+6)."""
    return mp.sqrt(2 * mp.log(10) * (dps + 6))


def digits_at(distance: Mpf, dps: float) -> float:
    """Digits integrand values need at |z| = distance (the density has decayed there)."""
    d = float(distance)
    return max(8.0, dps + 2 - d * d / (2 * math.log(10)) + 2 * math.log10(1 + d))


def _graded_edges(a: Mpf, b: Mpf, delta_a: Mpf | None, delta_b: Mpf | None) -> list[Mpf]:
    """Panel edges on [a, b], graded by factors of 2 away from an end with a delta."""
    if delta_a is not None and delta_b is not None:
        mid = (a + b) / 2
        return _graded_edges(a, mid, delta_a, None)[:-1] + _graded_edges(mid, b, None, delta_b)
    if delta_a is None and delta_b is None:
        return [a, b]
    if delta_a is None:
        return [a + b - e for e in reversed(_graded_edges(a, b, delta_b, None))]
    edges, step = [a], delta_a
    assert step > 0
    while a + step < b - step / 4:
        edges.append(a + step)
        step *= 2
    return edges + [b]


def gaussian_panels(breaks: Sequence[tuple[Mpf, Mpf]], density: bool = True) -> list[Panel]:
    """Panels covering |z| <= W for E[f(Z)], Z ~ N(0, 1), f smooth between the breaks.

    ``breaks`` are (point, delta) pairs: panels start at width ``delta`` next to
    the point and double away from it (0 is always a break). Each panel has
    ``NODES_PER_DIGIT`` nodes per digit its values need (:func:`digits_at`, from
    the current precision) and carries that precision. ``density=False`` leaves
    the N(0,1) density out of the weights (plain dz weights, for callers that
    write the density themselves).
    """
    dps = mp.dps
    width = half_width(dps)
    cuts = {p: d for p, d in breaks if -width < p < width}
    cuts.setdefault(mp.zero, mp.mpf(CENTRE_PANEL))
    points = [(-width, None), *sorted(cuts.items()), (width, None)]
    norm = 1 / mp.sqrt(2 * mp.pi)
    panels = []
    for (a, da), (b, db) in itertools.pairwise(points):
        for left, right in itertools.pairwise(_graded_edges(a, b, da, db)):
            distance = mp.zero if left < 0 < right else min(abs(left), abs(right))
            digits = digits_at(distance, dps)
            prec = min(mp.prec, mpmath.libmp.dps_to_prec(math.ceil(digits)))
            xs, ws = _legendre(max(6, math.ceil(NODES_PER_DIGIT * digits)), prec)
            half, centre = (right - left) / 2, (right + left) / 2
            nodes = tuple(centre + half * x for x in xs)
            weights = tuple(half * w for w in ws)
            if density:
                weights = tuple(w * norm * mp.exp(-z * z / 2)
                                for z, w in zip(nodes, weights, strict=True))
            panels.append(Panel(prec, nodes, weights))
    return panels


@functools.lru_cache(maxsize=64)
def _plain_panels(prec: int) -> list[Panel]:
    with mp.workprec(prec):
        return gaussian_panels([])


def steep_delta(scale: Mpf) -> Mpf:
    """First panel width next to a break where the integrand varies on ``scale`` (> 0)."""
    if not scale > 0:
        raise ValueError(f"panel scale must be positive, got {scale}")
    return min(mp.mpf(CENTRE_PANEL), STEEP_PANEL * scale)


# -- Gaussian moments -------------------------------------------------------------------
#: Functions whose presence makes phi piecewise (breaks needed at its kinks).
_PIECEWISE = (sp.Heaviside, sp.DiracDelta, sp.Abs, sp.sign, sp.Piecewise, sp.Max, sp.Min)


@dataclass(frozen=True)
class PhiFunctions:
    """phi and its derivatives: ``values(u) -> (phi, phi', phi'')`` as mpf.

    ``price`` is False for a kinked phi, whose phi'' is distributional (then the
    third value is 0 and callers use integration by parts); ``smooth`` is False for
    piecewise phi (then quadrature breaks sit at its kinks, u = 0). ``scale``
    sets the first panel width next to a break.
    """

    values: Callable[[Mpf], tuple[Mpf, Mpf, Mpf]]
    price: bool
    smooth: bool
    scale: Mpf = mpmath.mpf(1)  # u-scale of phi's variation; inf if piecewise polynomial
    parity: int = 0  # +1 (even phi), -1 (odd phi), 0 (neither): halves the pair work


def phi_functions(activation: Activation) -> PhiFunctions:
    """Lambdify phi, phi', phi'' with common subexpressions (parameters exact)."""
    values = _param_subs(activation)
    phis = [sp.sympify(p).subs(values) for p in derive(activation.family).phi_derivatives]
    if phis[1].has(sp.DiracDelta):
        raise ValueError(f"{activation.label}: phi' is distributional; "
                         "quadrature needs phi' to be a function")
    smooth = not any(p.has(*_PIECEWISE) for p in phis)
    # SymPy differentiates Piecewise/Max branch by branch (no delta at the kink), so
    # phi'' is trusted only for smooth phi; a kinked phi uses integration by parts
    price = smooth and not phis[2].has(sp.DiracDelta)
    if not all(_switches_at_zero(p) for p in phis):
        raise ValueError(f"{activation.label}: the quadrature puts its breaks at u = 0; "
                         "phi has a kink or jump elsewhere")
    if not smooth and sp.limit(phis[0], X, 0, "+") != sp.limit(phis[0], X, 0, "-"):
        raise ValueError(f"{activation.label}: phi jumps at 0; the quadrature needs a "
                         "continuous phi")
    exprs = phis if price else [phis[0], phis[1], sp.Integer(0)]
    fn = sp.lambdify(X, tuple(exprs), modules="mpmath", cse=True)
    return PhiFunctions(fn, price, smooth, mpmath.inf if _piecewise_polynomial(phis[0])
                        else mpmath.mpf(1), _parity(phis[0]))


def _parity(phi: sp.Expr) -> int:
    """+1 if phi is even, -1 if odd, else 0 (decided symbolically, with a numeric guard)."""
    mirrored = phi.subs(X, -X)
    for sign in (1, -1):
        try:
            same = sp.simplify(mirrored - sign * phi) == 0
        except Exception:  # noqa: BLE001 - simplify can fail on exotic expressions
            same = False
        if same and all(abs(complex(mirrored.subs(X, v)) - sign * complex(phi.subs(X, v)))
                        <= 1e-12 * (1 + abs(complex(phi.subs(X, v))))
                        for v in (sp.Rational(3, 7), sp.Rational(-13, 5))):
            return sign
    return 0


def _switches_at_zero(phi: sp.Expr) -> bool:
    """Every piecewise part of phi (Heaviside, |.|, max, Piecewise...) switches at x = 0."""
    def through_zero(arg: sp.Expr) -> bool:  # a * x with a != 0, or the constant 0
        arg = sp.expand(arg)
        return arg == 0 or (arg.is_polynomial(X) and sp.degree(arg, X) == 1
                            and arg.subs(X, 0) == 0)

    for part in phi.atoms(*_PIECEWISE):
        if isinstance(part, sp.Piecewise):
            conditions = [c for _, c in part.args if c not in (sp.true, sp.false)]
            if not all(isinstance(c, sp.core.relational.Relational)
                       and through_zero(c.lhs - c.rhs) for c in conditions):
                return False
        elif isinstance(part, (sp.Max, sp.Min)):
            if not all(through_zero(a) for a in part.args):
                return False
        elif not through_zero(part.args[0]):
            return False
    return True


def _piecewise_polynomial(phi: sp.Expr) -> bool:
    """phi is a polynomial on each side of 0 (ReLU family, the identity)."""
    y = sp.Symbol("y", positive=True)  # Heaviside, |.|, max, Piecewise evaluate on a side
    return all(phi.subs(X, side * y).is_polynomial(y) for side in (1, -1))


def _param_subs(activation: Activation) -> dict[sp.Symbol, sp.Expr]:
    named = activation.param_values
    return {p: exact_param(named[p.name]) for p in activation.family.params}


#: Gauss-Legendre nodes per digit on the panels of :func:`structure_panels` (their
#: widths are a fixed fraction of the distance to phi's structure, convergence factor
#: >= 5.8 per node pair: ~0.6 nodes per digit; with the density step below, measured
#: against the erf closed forms: 1e-27 and better at 30 digits, q = 1..1e4).
STRUCTURE_NODES_PER_DIGIT = 0.65
#: Spacing of the density breakpoints in the standard-normal variable (the density is
#: entire: wide panels with ~20 nodes resolve it; 1.5 costs a quarter more nodes).
DENSITY_STEP = 2.0
#: Structure rungs are kept up to this distance (in t) from phi's kink.
RUNG_REACH = 3


def structure_panels(mean: Mpf, sd: Mpf, phi: PhiFunctions) -> list[Panel]:
    """Panels for E[f(u)], u ~ N(mean, sd^2), at the current precision: the rule of
    :mod:`symfield.quadrature_rules` in mpmath.

    In t = (u - mean) / sd on |t| <= W (:func:`half_width`), cut at density points
    (0, +-1.5, ...) and at phi's structure points (its kink 0 and the ladder
    +-scale * LADDER; the kink alone for a piecewise polynomial phi) mapped into t.
    Panels are built only where they are not empty; each carries the digits its
    values need (:func:`digits_at`, fewer where the density has decayed) and
    STRUCTURE_NODES_PER_DIGIT nodes per digit. Weights include the density; nodes
    are in u. sd = 0 gives a point mass at the mean.
    """
    dps = mp.dps
    width = half_width(dps)
    step = mp.mpf(DENSITY_STEP)
    density = [k * step for k in range(-int(width / step), int(width / step) + 1)]
    rungs: list[Mpf] = []
    if sd > 0:
        centre = -mean / sd  # phi's kink (u = 0) in t
        points = [mp.zero]
        if phi.scale != mpmath.inf:
            points += [sign * phi.scale * mp.mpf(r) for r in _LADDER for sign in (1, -1)]
        # rungs farther than RUNG_REACH from the kink are redundant: the density points
        # already make panels narrower than their distance to it
        rungs = [t for t in ((p - mean) / sd for p in points)
                 if abs(t) < width and abs(t - centre) <= RUNG_REACH]
        # a density point next to a rung would only add a sliver of a panel
        density = [d for d in density if all(abs(d - r) > step / 4 for r in rungs)]
    edges = sorted({-width, width, *density, *rungs})
    fixed = set(density) | {-width, width}
    panels = []
    for left, right in itertools.pairwise(edges):
        distance = mp.zero if left < 0 < right else min(abs(left), abs(right))
        digits = digits_at(distance, dps)
        prec = min(mp.prec, mpmath.libmp.dps_to_prec(math.ceil(digits)))
        n = max(4, math.ceil(STRUCTURE_NODES_PER_DIGIT * digits))
        # panels between density points recur in every call: their rule is cached
        rule = _t_panel if left in fixed and right in fixed else _t_panel.__wrapped__
        ts, weights = rule(left, right, n, prec, mp.prec)
        panels.append(Panel(prec, tuple(mean + sd * t for t in ts), weights))
    return panels


@functools.lru_cache(maxsize=4096)
def _t_panel(left: Mpf, right: Mpf, n: int, prec: int, work: int
             ) -> tuple[tuple[Mpf, ...], tuple[Mpf, ...]]:
    """Gauss-Legendre nodes t on [left, right] and weights times the N(0,1) density."""
    xs, ws = _legendre(n, prec)
    half, centre = (right - left) / 2, (right + left) / 2
    norm = half / mp.sqrt(2 * mp.pi)
    ts = tuple(centre + half * x for x in xs)
    return ts, tuple(norm * w * mp.exp(-t * t / 2) for t, w in zip(ts, ws, strict=True))


#: The structure ladder of the mpmath rule: the float64 rule's rungs from 1 up (its rung at
#: 0.5 helps 8-node panels; panels with ~20 nodes resolve phi's own scale without it).
_LADDER = tuple(str(r) for r in rules.LADDER if r >= 1)


def diag_quadrature(phi: PhiFunctions, q: object) -> tuple[Mpf, Mpf]:
    """(G_d, G_d_q) at variance q: E[phi^2] and E[phi'^2 + phi phi''] at u ~ N(0, q).

    With a distributional phi'' the derivative is E[u phi phi'] / q (Stein).
    """
    q = to_mpf(q)
    value = slope = mp.zero
    for panel in structure_panels(mp.zero, mp.sqrt(q), phi):
        with mp.workprec(panel.prec):  # partial sums at the panel's precision
            part0 = part1 = mp.zero
            for u, w in zip(panel.nodes, panel.weights, strict=True):
                f0, f1, f2 = phi.values(u)
                part0 += w * f0 * f0
                part1 += w * (f1 * f1 + f0 * f2) if phi.price else w * u * f0 * f1
        value, slope = value + part0, slope + part1
    return value, (slope if phi.price else slope / q)


def pair_quadrature(phi: PhiFunctions, qa: object, qb: object, k: object
                    ) -> tuple[Mpf, Mpf, Mpf, Mpf]:
    """(G, G_k, G_qa, G_qb): outer over the input o of larger variance, inner over
    u_i | u_o ~ N(k / q_o u_o, Delta / q_o) (:func:`structure_panels` for both).

    G_k = E[phi'(u_a) phi'(u_b)], G_qa = E[phi''(u_a) phi(u_b)] / 2 (Price); with a
    distributional phi'' G_qa = (E[u_a phi'(u_a) phi(u_b)] - K_ab G_k) / (2 K_aa)
    (integration by parts). At |c| = 1 the inner law is a point mass.
    """
    qa, qb, k = to_mpf(qa), to_mpf(qb), to_mpf(k)
    swap = qb > qa
    qo, qi = (qb, qa) if swap else (qa, qb)
    bound = mp.sqrt(qo * qi)
    k = max(-bound, min(bound, k))
    slope = k / qo if qo > 0 else mp.zero
    delta = qo * qi - k * k
    sd = mp.sqrt(delta / qo) if qo > 0 and delta > 0 else mp.zero
    dps = mp.dps
    # sums: G, G_k, E[phi''(u_o) phi(u_i)], E[phi(u_o) phi''(u_i)] (Price), or with
    # u phi' in place of phi'' (integration by parts)
    sums = [mp.zero] * 4
    # with phi of parity p, E[phi^(j)(u) | -u_o] = p (-1)^j E[phi^(j)(u) | u_o] (and
    # E[u phi'(u)] like phi''): the mirrored outer nodes share one inner integral
    mirror: dict[Mpf, tuple[Mpf, Mpf, Mpf]] = {}
    p = phi.parity
    for panel in structure_panels(mp.zero, mp.sqrt(qo), phi):
        with mp.workprec(panel.prec):
            outer = [(u, w, phi.values(u)) for u, w in zip(panel.nodes, panel.weights,
                                                              strict=True)]
        for uo, wo, (a0, a1, a2) in outer:
            if p and -uo in mirror:
                c0, c1, c2 = mirror.pop(-uo)
                b0, b1, b2 = p * c0, -p * c1, p * c2
            else:
                # the inner integral needs as many digits as the outer weight leaves
                z = abs(uo) / mp.sqrt(qo) if qo > 0 else mp.zero
                with mp.workdps(round(digits_at(z, dps) - 2)):
                    inner = structure_panels(slope * uo, sd, phi)
                b0, b1, b2 = _inner_sums(phi, inner)
                if p and uo:
                    mirror[uo] = (b0, b1, b2)
            sums[0] += wo * a0 * b0
            sums[1] += wo * a1 * b1
            sums[2] += wo * (a2 if phi.price else uo * a1) * b0
            sums[3] += wo * a0 * b2
    g, g_k = sums[0], sums[1]
    s_a, s_b = (sums[3], sums[2]) if swap else (sums[2], sums[3])
    if phi.price:
        return g, g_k, s_a / 2, s_b / 2
    return g, g_k, (s_a - k * g_k) / (2 * qa), (s_b - k * g_k) / (2 * qb)


def _inner_sums(phi: PhiFunctions, panels: list[Panel]) -> tuple[Mpf, Mpf, Mpf]:
    """E[phi(u)], E[phi'(u)] and E[phi''(u)] (or E[u phi'(u)]) over the panels' nodes u."""
    sums = [mp.zero] * 3
    for panel in panels:
        with mp.workprec(panel.prec):  # partial sums at the panel's precision
            b0 = b1 = b2 = mp.zero
            for u, w in zip(panel.nodes, panel.weights, strict=True):
                f0, f1, f2 = phi.values(u)
                b0 += w * f0
                b1 += w * f1
                b2 += w * f2 if phi.price else w * u * f1
        sums = [sums[0] + b0, sums[1] + b1, sums[2] + b2]
    return sums[0], sums[1], sums[2]


@dataclass(frozen=True)
class MpExpectations:
    """Gaussian moments of one activation as mpmath callables.

    Pair functions take (K_aa, K_bb, K_ab), diagonal ones q; they accept
    numbers, strings or mpf and return mpf at ``dps`` digits (or the ambient
    precision if higher). ``kind`` is ``exact`` or ``quadrature``.
    """

    label: str
    dps: int
    kind: str
    G: PairFn
    G_k: PairFn
    G_qa: PairFn
    G_qb: PairFn
    G_d: DiagFn
    G_d_q: DiagFn

    def pair(self, kaa: object, kbb: object, kab: object) -> tuple[Mpf, Mpf, Mpf, Mpf]:
        """(G, G_k, G_qa, G_qb) at one point."""
        return tuple(f(kaa, kbb, kab) for f in (self.G, self.G_k, self.G_qa, self.G_qb))

    def diag(self, q: object) -> tuple[Mpf, Mpf]:
        """(G_d, G_d_q) at one variance."""
        return self.G_d(q), self.G_d_q(q)


def mp_expectations(activation: Activation | str, dps: int = 30,
                    kind: str | None = None) -> MpExpectations:
    """Moments of ``activation`` at ``dps`` digits (cached per label, dps and kind).

    ``kind="quadrature"`` forces quadrature for a family with closed forms
    (to check one path against the other).
    """
    act = resolve(activation) if isinstance(activation, str) else activation
    derived = derive(act.family).kind
    if kind not in (None, "exact", "quadrature") or (kind == "exact" and derived != "exact"):
        raise ValueError(f"kind={kind!r}: allowed None, 'quadrature'"
                         + (", 'exact'" if derived == "exact" else ""))
    return _expectations(act.label or repr(act), int(dps), kind or derived, act)


@functools.lru_cache(maxsize=64)
def _expectations(label: str, dps: int, kind: str, act: Activation) -> MpExpectations:
    del label  # part of the cache key
    if kind == "exact":
        return _exact(act, dps)
    return _quadrature(act, dps)


def _real(value: object) -> Mpf:
    """The real part of a closed form evaluated on |c| = 1 up to rounding.

    There asin(1 + eps) and sqrt(-eps) carry imaginary parts of order sqrt(eps);
    anything larger means the arguments were not a covariance.
    """
    if not isinstance(value, mpmath.mpc):
        return value  # type: ignore[return-value]
    if abs(value.imag) > mp.ldexp(max(1, abs(value.real)), 16 - mp.prec // 2):
        raise ValueError(f"closed form is complex ({value}): not a covariance")
    return value.real


def _exact(act: Activation, dps: int) -> MpExpectations:
    derived = derive(act.family)
    subs = _param_subs(act)
    assert derived.pair is not None and derived.diag is not None
    pair_exprs = {"G": derived.pair, **derived.pair_partials()}
    # factor: cancels removable 0/0 at |c| = 1 (ReLU: (K_aa K_bb - K_ab^2) / sqrt(...))
    pair_fns = {name: sp.lambdify((KAA, KBB, KAB), sp.factor(e.subs(subs)), modules="mpmath")
                for name, e in pair_exprs.items()}
    diag_fns = {name: sp.lambdify(Q, sp.factor(e.subs(subs)), modules="mpmath")
                for name, e in (("G_d", derived.diag), ("G_d_q", derived.diag_derivative()))}

    def pair_fn(fn: Callable[..., object]) -> PairFn:
        def call(kaa: object, kbb: object, kab: object) -> Mpf:
            with working_precision(dps):
                qa, qb, k = to_mpf(kaa), to_mpf(kbb), to_mpf(kab)
                bound = mp.sqrt(qa * qb)
                return _real(fn(qa, qb, max(-bound, min(bound, k))))
        return call

    def diag_fn(fn: Callable[..., object]) -> DiagFn:
        def call(q: object) -> Mpf:
            with working_precision(dps):
                return _real(fn(to_mpf(q)))
        return call

    return MpExpectations(act.label, dps, "exact", *(pair_fn(pair_fns[n]) for n in
                                                     ("G", "G_k", "G_qa", "G_qb")),
                          diag_fn(diag_fns["G_d"]), diag_fn(diag_fns["G_d_q"]))


def _quadrature(act: Activation, dps: int) -> MpExpectations:
    check_moments_exist(act.family)  # a pole or super-Gaussian growth: refused, as in float64
    phi = phi_functions(act)

    @functools.lru_cache(maxsize=256)
    def pair_at(prec: int, kaa: Mpf, kbb: Mpf, kab: Mpf) -> tuple[Mpf, Mpf, Mpf, Mpf]:
        return pair_quadrature(phi, kaa, kbb, kab)

    @functools.lru_cache(maxsize=256)
    def diag_at(prec: int, q: Mpf) -> tuple[Mpf, Mpf]:
        return diag_quadrature(phi, q)

    def pair_fn(index: int) -> PairFn:
        def call(kaa: object, kbb: object, kab: object) -> Mpf:
            with working_precision(dps):
                return pair_at(mp.prec, to_mpf(kaa), to_mpf(kbb), to_mpf(kab))[index]
        return call

    def diag_fn(index: int) -> DiagFn:
        def call(q: object) -> Mpf:
            with working_precision(dps):
                return diag_at(mp.prec, to_mpf(q))[index]
        return call

    return MpExpectations(act.label, dps, "quadrature", *(pair_fn(i) for i in range(4)),
                          diag_fn(0), diag_fn(1))


# -- propagation ------------------------------------------------------------------------
#: Parameter symbols of the layer maps (after gamma, beta -> the net's process).
_PARAMS = {"sw2": SW2, "sb2": SB2, "sw2_out": SW2_OUT, "sb2_out": SB2_OUT, "rho": RHO}


@dataclass(frozen=True)
class _Compiled:
    fn: Callable[..., Mpf]
    args: tuple[str, ...]

    def __call__(self, env: dict[str, Mpf]) -> Mpf:
        return self.fn(*(env[a] for a in self.args))


@functools.lru_cache(maxsize=4)
def compiled_maps(net: str) -> dict[str, _Compiled]:
    """The derived layer/readout maps and Jacobians of ``net``, lambdified for mpmath."""
    process = PROCESSES[net]
    raw = layer_expressions(derive_layer_map(), derive_response_map())
    named = {"K_aa": KAA, "K_bb": KBB, "K_ab": KAB, "q": Q,
             **{n: s for n, s in MOMENTS.items()}, **_PARAMS}
    by_symbol = {s: n for n, s in named.items()}
    out = {}
    for key, expr in raw.items():
        expr = expr.subs({GAMMA: process.gamma, BETA: process.beta})
        unknown = expr.free_symbols - set(by_symbol)
        if unknown or expr.has(sp.Derivative, sp.core.function.AppliedUndef):
            raise ValueError(f"{key}: cannot evaluate {expr} (free {sorted(map(str, unknown))})")
        symbols = sorted(expr.free_symbols, key=lambda s: by_symbol[s])
        out[key] = _Compiled(sp.lambdify(symbols, expr, modules="mpmath"),
                             tuple(by_symbol[s] for s in symbols))
    return out


def _kernel_entries(K0: object) -> Matrix:
    """K0 (numbers, strings, mpf; nested lists, numpy array or mpmath matrix) as mpf rows."""
    rows = K0.tolist() if hasattr(K0, "tolist") else K0  # type: ignore[union-attr]
    if not isinstance(rows, (list, tuple)):
        rows = [[rows]]
    rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in rows]
    try:
        as_float = [[float(to_mpf(v)) for v in row] for row in rows]
    except (TypeError, ValueError):
        as_float = rows  # let check_kernel name the problem
    check_kernel("K0", as_float)
    size = len(rows)
    return [[to_mpf(rows[min(a, b)][max(a, b)]) for b in range(size)] for a in range(size)]


@dataclass(frozen=True)
class _GramPath:
    """Closed-form pair moments in (K_aa, K_bb, K_ab, Delta) and the stable Gram map.

    The pair state carries Delta = K_aa K_bb - K_ab^2 with its own derived map
    (numerics.stable_gram), as the generated code does: at 30 digits the
    determinant recomputed from K' still leaves c = 1 - 1e-30 at duplicate inputs
    and ReLU's angle sqrt(2(1 - c)) = 1e-15 (chi_ab off by 1e-8 at L = 50).
    """

    pair: dict[str, Callable[..., object]]   # G, G_k, G_qa, G_qb (K_aa, K_bb, K_ab, Delta)
    step: Callable[..., object] | None       # Delta' (K_aa, K_bb, K_ab, Delta, sw2, sb2, rho)


@functools.lru_cache(maxsize=16)
def _gram_path(activation: Activation, net: str) -> _GramPath | None:
    from .numerics import DELTA, GAP, GAP_M, GRAM_HELPERS, gram_step, stable_form

    derived = derive(activation.family)
    if derived.kind != "exact":
        return None
    subs = _param_subs(activation)
    exprs = {"G": derived.pair, **derived.pair_partials()}
    args = (KAA, KBB, KAB, DELTA)
    pair = {name: sp.lambdify(args, stable_form(e).subs(subs), modules="mpmath")
            for name, e in exprs.items()}
    _, stable = gram_step(stable_form(derived.pair), derived.diag)
    if stable is None:
        return _GramPath(pair, None)
    process = PROCESSES[net]
    root = sp.sqrt(KAA) * sp.sqrt(KBB)
    # the gaps sqrt(K_aa K_bb) -+ K_ab as Delta / (sqrt(K_aa K_bb) +- K_ab) where that
    # sum is the larger (no cancellation, exactly 0 at Delta = 0), as generated
    helpers = {**GRAM_HELPERS,
               GAP: sp.Piecewise((DELTA / (root + KAB), KAB > 0), (root - KAB, True)),
               GAP_M: sp.Piecewise((DELTA / (root - KAB), KAB < 0), (root + KAB, True))}
    step = stable.subs({GAMMA: process.gamma, BETA: process.beta}).subs(subs)
    step = step.xreplace(helpers)
    return _GramPath(pair, sp.lambdify((*args, SW2, SB2, RHO), step, modules="mpmath"))


def propagate_mp(spec: NetworkSpec, K0: object, dps: int = 30, tensor: bool = False,
                 layers: bool = False, carry_delta: bool = True,
                 progress: Callable[[float], None] | None = None) -> dict[str, list]:
    """K^(L), K_out, chi, chi_out of ``spec`` from ``K0`` at ``dps`` digits.

    Returns nested lists of mpf: ``K``, ``K_out``, ``chi`` and ``chi_out`` are
    P x P (``chi`` holds dK^(L)_aa/dK^(0)_aa on the diagonal and dK^(L)_ab/dK^(0)_ab
    off it; ``chi_out`` the same for K_out). With ``tensor`` also
    ``response_tensor`` and ``response_tensor_out``, P x P x P x P,
    dK_ab/dK0_cd with (c,d) and (d,c) moved together; with ``layers``
    ``K_layers`` and ``chi_layers``, lists over l = 0..L. Floats in ``spec``
    and ``K0`` are read as their shortest decimal (0.1 means 1/10).

    ``carry_delta`` (closed-form families) carries the Gram determinant of each pair
    with its own stable map, so coinciding inputs stay exactly coinciding; False
    recomputes it from the rounded kernel every layer (a reference at high ``dps``).
    ``progress`` (optional) is called with the fraction of the layers done.
    """
    maps = compiled_maps(spec.net)
    activation = resolve(spec.activation)
    moments = mp_expectations(activation, dps)
    gram = _gram_path(activation, spec.net) if carry_delta else None
    with working_precision(dps):
        K = _kernel_entries(K0)
        size = len(K)
        pairs = [(a, b) for a in range(size) for b in range(a + 1, size)]
        env: dict[str, Mpf] = {name: to_mpf(getattr(spec, name) or 0) for name in _PARAMS}
        chi = [[mp.one] * size for _ in range(size)]
        mix = {(a, b): [mp.zero, mp.zero] for a, b in pairs}  # dK_ab/dK0_aa, dK_ab/dK0_bb
        history_K, history_chi = [_copy(K)], [_copy(chi)]
        delta = {(a, b): _gram_det(K, a, b) for a, b in pairs}
        for layer in range(spec.depth):
            if progress is not None:
                progress(layer / spec.depth)
            new = _copy(K)
            chi_diag = [chi[a][a] for a in range(size)]  # chi^(l-1)_aa
            for a in range(size):
                env["q"] = K[a][a]
                env["G_d"], env["G_d_q"] = moments.diag(K[a][a])
                new[a][a] = maps["q_new"](env)
                chi[a][a] *= maps["J_q"](env)
            new_delta = {}
            for a, b in pairs:
                _pair_env(env, moments, K, a, b, tensor, gram, delta)
                new[a][b] = new[b][a] = maps["k_new"](env)
                if gram is not None and gram.step is not None:
                    new_delta[(a, b)] = max(mp.zero, gram.step(
                        K[a][a], K[b][b], K[a][b], delta[(a, b)], env["sw2"], env["sb2"],
                        env["rho"]))
                j_k = maps["J_k"](env)
                chi[a][b] = chi[b][a] = chi[a][b] * j_k
                if tensor:  # X^(l) = J_k X^(l-1) + J_qa chi^(l-1)_aa
                    x = mix[(a, b)]
                    x[0] = j_k * x[0] + maps["J_qa"](env) * chi_diag[a]
                    x[1] = j_k * x[1] + maps["J_qb"](env) * chi_diag[b]
            K = new
            delta = {e: new_delta[e] if e in new_delta else _gram_det(K, *e) for e in pairs}
            if layers:
                history_K.append(_copy(K))
                history_chi.append(_copy(chi))
        result: dict[str, list] = {"K": K, "chi": chi}
        result.update(_readout(maps, moments, env, K, chi, mix, pairs, tensor, gram, delta))
        if tensor:
            result["response_tensor"] = _tensor(chi, mix, size)
        if layers:
            result["K_layers"], result["chi_layers"] = history_K, history_chi
    return result


def _copy(matrix: Matrix) -> Matrix:
    return [list(row) for row in matrix]


def _gram_det(K: Matrix, a: int, b: int) -> Mpf:
    return max(mp.zero, K[a][a] * K[b][b] - K[a][b] ** 2)


def _pair_env(env: dict[str, Mpf], moments: MpExpectations, K: Matrix, a: int, b: int,
              tensor: bool, gram: _GramPath | None = None,
              delta: dict[tuple[int, int], Mpf] | None = None) -> None:
    """Fill the pair moments of (a, b) into ``env`` (G_qa, G_qb only when needed)."""
    kaa, kbb, kab = K[a][a], K[b][b], K[a][b]
    env["K_aa"], env["K_bb"], env["K_ab"] = kaa, kbb, kab
    if gram is not None and delta is not None:  # closed forms at the carried Delta
        bound = mp.sqrt(kaa * kbb)
        point = (kaa, kbb, max(-bound, min(bound, kab)), delta[(a, b)])
        names = ("G", "G_k", "G_qa", "G_qb") if tensor else ("G", "G_k")
        for name in names:
            env[name] = _real(gram.pair[name](*point))
        return
    env["G"], env["G_k"] = moments.G(kaa, kbb, kab), moments.G_k(kaa, kbb, kab)
    if tensor:
        env["G_qa"], env["G_qb"] = moments.G_qa(kaa, kbb, kab), moments.G_qb(kaa, kbb, kab)


def _readout(maps: dict[str, _Compiled], moments: MpExpectations, env: dict[str, Mpf],
             K: Matrix, chi: Matrix, mix: dict[tuple[int, int], list[Mpf]],
             pairs: list[tuple[int, int]], tensor: bool, gram: _GramPath | None = None,
             delta: dict[tuple[int, int], Mpf] | None = None) -> dict[str, list]:
    size = len(K)
    out, chi_out = _copy(K), _copy(chi)
    mix_out = {}
    for a in range(size):
        env["q"] = K[a][a]
        env["G_d"], env["G_d_q"] = moments.diag(K[a][a])
        out[a][a] = maps["out_q"](env)
        chi_out[a][a] = maps["R_q"](env) * chi[a][a]
    for a, b in pairs:
        _pair_env(env, moments, K, a, b, tensor, gram, delta)
        out[a][b] = out[b][a] = maps["out_k"](env)
        r_k = maps["R_k"](env)
        chi_out[a][b] = chi_out[b][a] = r_k * chi[a][b]
        if tensor:
            x = mix[(a, b)]
            mix_out[(a, b)] = [r_k * x[0] + maps["R_qa"](env) * chi[a][a],
                               r_k * x[1] + maps["R_qb"](env) * chi[b][b]]
    result: dict[str, list] = {"K_out": out, "chi_out": chi_out}
    if tensor:
        result["response_tensor_out"] = _tensor(chi_out, mix_out, size)
    return result


def _tensor(chi: Matrix, mix: dict[tuple[int, int], list[Mpf]], size: int) -> list:
    """dK_ab/dK0_cd, (c,d) and (d,c) moved together, as nested lists [a][b][c][d]."""
    T = [[[[mp.zero] * size for _ in range(size)] for _ in range(size)] for _ in range(size)]
    for a in range(size):
        T[a][a][a][a] = chi[a][a]
    for (a, b), (xa, xb) in mix.items():
        for i, j in ((a, b), (b, a)):
            T[i][j][a][b] = T[i][j][b][a] = chi[a][b]
            T[i][j][a][a], T[i][j][b][b] = xa, xb
    return T
