"""An independent referee: the leading-order network computed from its definition.

Nothing here uses a derived expression of symfield (no closed form, no layer
map, no Jacobian, no tangent, no Price weight). The only inputs are

* the activation's definition ``phi(x; params)`` (``Family.phi`` with the
  parameter values substituted), lambdified for mpmath;
* Gaussian expectations ``E[phi(u_a) phi(u_b)]`` by direct integration
  against the bivariate normal density, written out here, never through an
  identity; ``E[phi(u)^2]`` in one dimension on the diagonal. Three rules, chosen
  by the shape of phi (:class:`GaussianMoments`):

  - phi piecewise polynomial (ReLU family, the identity): polar coordinates of
    the whitened plane, ``z = r (cos t, sin t)``, the angle split on the rays
    where ``u_a`` or ``u_b`` changes sign; Gauss-Legendre in ``t`` and ``r``,
    the density ``exp(-r^2/2) r / (2 pi)`` at every node (any correlation);
  - phi smooth and the variances small (``Var <= HERMITE_RANGE``): Gauss-Hermite
    in the conditional form ``u_a = sqrt(K_aa) z``,
    ``u_b | u_a ~ N((K_ab / K_aa) u_a, det K / K_aa)`` (one-dimensional at
    ``|c| = 1``);
  - otherwise (steep phi at large variance): the same conditional form with
    Gauss-Legendre panels graded towards ``u_a = 0`` and ``u_b = 0`` and
    ``exp(-t^2/2)`` applied at every node.
* the network recursion of docs/equations.md, typed from the network's
  definition: FFNet ``K^(l) = sb2 + sw2 G(K^(l-1))``, ResNet
  ``K^(l) = K^(l-1) + rho^2 (sb2 + sw2 G(K^(l-1)))``, readout
  ``K_out = sb2_out + sw2_out G(K^(L))``;
* responses by numerical differentiation of that whole recursion: central
  differences in each independent input-kernel entry (``cd`` and ``dc`` moved
  together, all other entries fixed), and the mixed second difference in
  ``(K^(0)_cd, rho)`` for ``d chi_out / d rho``, each at two step sizes
  (Richardson-combined; their difference is the truncation estimate).

Precision: the arithmetic runs at ``DPS`` = 30 digits, plus the digits the input
kernel loses to near-singularity (a correlation of 1 - 1e-12 adds 12); the rules
aim at about 1e-16 relative (``RULE_DIGITS``; measured against the derived closed
forms in tests/test_referee.py: 1e-16 to 1e-20). Every rule is a smooth function
of the kernel entries (fixed nodes, or nodes that move with them), so finite
differences with steps 1e-9 (first derivatives) and 1e-7 (mixed), relative to
the smallest eigenvalue of K0 and to rho, differentiate the discretised
recursion with a truncation error far below the tolerances (1e-9 and above).
Each result carries ``error``, the larger of the estimates: the rule's (the
forward pass, and the derivatives in the off-diagonal entries and in a lone
diagonal, repeated with a refined rule, 1.5 x the nodes reaching 1.5 x as many
digits into the tails: a value error can be amplified by a later ill-conditioned
step; at ``c = 1 - 1e-12`` a ReLU kernel error of 1e-17 from truncating the
Gaussian too early once became 4e-12 in ``chi_out``, unseen by a refined rule
with the same truncation) and the truncation (step h against h/2).

Cost: about 0.03 s per pair moment (polar rule), 0.1-0.3 s (Gauss-Hermite),
1-10 s (panels); moments are cached per kernel entry.

Limits: ``phi`` must be smooth except at ``x = 0`` (true of every built-in
family); a user's activation with a kink elsewhere is refused.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mpmath
import numpy as np
import sympy as sp
from mpmath import mp

from ..activations import resolve
from ..gaussian import X
from ..spec import NetworkSpec

Mpf = mpmath.mpf

DPS = 30
#: Gauss-Legendre nodes per panel near the Gaussian's centre (fewer in the tails, where
#: the density leaves fewer digits to resolve); the refined rule has 1.5 x. Panels are
#: at most WIDTH standard deviations wide, and graded towards kinks and steep points.
NODES = 12
WIDTH = 2.0
#: Gauss-Hermite nodes per dimension where phi is smooth on the Gaussian's scale
#: (see HERMITE_RANGE): one rule, no panels.
HERMITE_NODES = 96
#: phi(u) is integrated by Gauss-Hermite while Var(u) <= HERMITE_RANGE x scale^2 (an
#: odd number, so that round inputs are not differenced across the switch of rules; a
#: difference that straddles it shows up in the step-halving estimate).
HERMITE_RANGE = mpmath.mpf("0.4871")
#: Gauss-Legendre nodes per angular sector and per radial panel (polar rule, kinked phi).
POLAR_NODES = 14
#: Digits the quadrature rule aims at (sets the truncation |z| <= W of the Gaussian).
RULE_DIGITS = 15
#: Relative finite-difference steps: first derivatives, mixed second derivatives.
STEP_FIRST = mpmath.mpf("1e-9")
STEP_MIXED = mpmath.mpf("1e-7")
#: Responses are compared entrywise relative to max(|entry|, RESPONSE_FLOOR x the
#: largest entry of the same matrix); the truncation estimates use the same scale.
RESPONSE_FLOOR = 1e-6


# -- phi from its definition -------------------------------------------------------------
_PIECEWISE = (sp.Heaviside, sp.Abs, sp.sign, sp.Piecewise, sp.Max, sp.Min)


@dataclass(frozen=True)
class Phi:
    """phi(x) as an mpmath callable; ``scale`` is the x-range over which it bends near 0."""

    label: str
    fn: Callable[[Mpf], Mpf]
    scale: Mpf  # inf: piecewise polynomial (a break at 0 is all it needs)


@functools.lru_cache(maxsize=32)
def phi_of(name: str) -> Phi:
    """The activation's own SymPy expression with its parameters, lambdified for mpmath."""
    activation = resolve(name)
    values = activation.param_values
    expr = activation.family.phi.subs(
        {p: sp.Rational(repr(float(values[p.name]))) for p in activation.family.params})
    for part in expr.atoms(*_PIECEWISE):
        if isinstance(part, sp.Piecewise):
            args = [c.lhs - c.rhs for _, c in part.args
                    if isinstance(c, sp.core.relational.Relational)]
        elif isinstance(part, (sp.Max, sp.Min)):
            args = list(part.args)
        else:
            args = [part.args[0]]
        for arg in args:
            if sp.simplify(arg.subs(X, 0)) != 0:
                raise ValueError(f"{name}: the referee puts the kink of phi at x = 0; "
                                 f"{part} switches elsewhere")
    y = sp.Symbol("y", positive=True)
    piecewise_polynomial = all(sp.simplify(expr.subs(X, s * y)).is_polynomial(y)
                               for s in (1, -1))
    # Heaviside(0) = 1/2 by SymPy's convention; the kink itself has measure zero
    return Phi(name, _mp_function(expr), mpmath.inf if piecewise_polynomial else mpmath.mpf(1))


def _mp_function(expr: sp.Expr) -> Callable[[Mpf], Mpf]:
    """lambdify for mpmath with the numeric constants (sqrt(2), 1/5, ...) evaluated once,
    at 80 digits, instead of on every call (the value is the same expression)."""
    constants: dict[sp.Expr, sp.Symbol] = {}

    def hoist(e: sp.Expr) -> sp.Expr:
        if isinstance(e, _PIECEWISE):
            return e
        if e.is_number and not e.is_Integer:
            if e not in constants:
                constants[e] = sp.Symbol(f"_c{len(constants)}")
            return constants[e]
        return e.func(*[hoist(a) for a in e.args]) if e.args else e

    body = hoist(expr)
    raw = sp.lambdify((X, *constants.values()), body, modules="mpmath")
    with mp.workdps(80):
        values = tuple(sp.lambdify((), c, modules="mpmath")() for c in constants)
    return lambda u: raw(u, *values)


# -- quadrature ------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _legendre(n: int, prec: int) -> tuple[tuple[Mpf, ...], tuple[Mpf, ...]]:
    """Gauss-Legendre nodes and weights on [-1, 1] (Newton on the three-term recurrence)."""
    xs: list[Mpf] = []
    ws: list[Mpf] = []
    with mp.workprec(prec + 30):
        for i in range(1, n + 1):
            x = mp.cos(mp.pi * (i - mp.mpf(1) / 4) / (n + mp.mpf(1) / 2))
            for _ in range(100):
                p0, p1 = mp.one, x
                for k in range(2, n + 1):
                    p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
                dp = n * (p0 - x * p1) / (1 - x * x)
                dx = p1 / dp
                x -= dx
                if abs(dx) < mp.ldexp(1, -prec - 20):
                    break
            p0, p1 = mp.one, x
            for k in range(2, n + 1):
                p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
            dp = n * (p0 - x * p1) / (1 - x * x)
            xs.append(x)
            ws.append(2 / ((1 - x * x) * dp * dp))
    with mp.workprec(prec):
        return tuple(+x for x in xs), tuple(+w for w in ws)


@functools.lru_cache(maxsize=16)
def _hermite(n: int, prec: int) -> tuple[tuple[Mpf, Mpf], ...]:
    """Gauss-Hermite rule for the N(0, 1) density: (node, weight), weights summing to 1.

    Newton on He_n (He_{k+1} = x He_k - k He_{k-1}, He_n' = n He_{n-1}) from
    float64 starting values; w_i = n! / (n He_{n-1}(x_i))^2.
    """
    starts, _ = np.polynomial.hermite_e.hermegauss(n)
    rule = []
    with mp.workprec(prec + 30):
        for start in starts:
            x = mp.mpf(float(start))
            for _ in range(100):
                p0, p1 = mp.one, x
                for k in range(1, n):
                    p0, p1 = p1, x * p1 - k * p0
                dx = p1 / (n * p0)
                x -= dx
                if abs(dx) < mp.ldexp(1, -prec - 20):
                    break
            p0, p1 = mp.one, x
            for k in range(1, n):
                p0, p1 = p1, x * p1 - k * p0
            rule.append((x, mp.factorial(n) / (n * p0) ** 2))
    with mp.workprec(prec):
        return tuple((+x, +w) for x, w in rule)


def _half_width(digits: float) -> Mpf:
    """|t| <= W keeps all but exp(-W^2/2) ~ 10^-(digits + 6) of the Gaussian (the
    margin covers the polynomial growth of phi^2, e.g. r^3 exp(-r^2/2) in the plane)."""
    return mp.sqrt(2 * mp.log(10) * (digits + 6))


def _panels(breaks: Sequence[tuple[Mpf, Mpf | None]], width: Mpf, refine: float
            ) -> list[tuple[Mpf, Mpf, int]]:
    """(lo, hi, nodes) covering [-width, width] for a Gaussian weight (unit variance).

    ``breaks`` are (point, bend): the integrand has a kink or bends over the
    length ``bend`` there (None: a kink, nothing steeper). Next to a break with a
    bend below 1 the panels start at that width and double until they reach 1;
    the rest of each segment is cut into panels at most ``WIDTH`` wide. A panel
    gets ``NODES`` Gauss-Legendre nodes times the fraction of RULE_DIGITS the
    density leaves at its distance from 0, times ``refine``.
    """
    inside = sorted((p, d) for p, d in breaks if -width < p < width)
    points: list[tuple[Mpf, Mpf | None]] = [(-width, None), *inside, (width, None)]
    panels = []

    def graded(start: Mpf, towards: Mpf, bend: Mpf | None) -> list[Mpf]:
        edges, step = [start], bend
        direction = 1 if towards > start else -1
        while step is not None and step < 1 and abs(towards - edges[-1]) > 2 * step:
            edges.append(edges[-1] + direction * step)
            step *= 2
        return edges

    for (a, da), (b, db) in zip(points, points[1:], strict=False):
        mid = (a + b) / 2
        left, right = graded(a, mid, da), graded(b, mid, db)
        edges = left + right[::-1]
        lo, hi = left[-1], right[-1]
        count = math.ceil(float(hi - lo) / WIDTH)
        stretch = [lo + (hi - lo) * i / count for i in range(1, count)] if count > 1 else []
        edges = left + stretch + right[::-1]
        for lo, hi in zip(edges, edges[1:], strict=False):
            if hi > lo:
                distance = 0.0 if lo < 0 < hi else float(min(abs(lo), abs(hi)))
                need = max(RULE_DIGITS + 2 - distance * distance / (2 * math.log(10)), 6.0)
                panels.append((lo, hi, math.ceil(refine * NODES * need / RULE_DIGITS)))
    return panels


@functools.lru_cache(maxsize=256)
def _fixed_rule(digits: int, refine: float, prec: int) -> tuple[tuple[Mpf, Mpf], ...]:
    """(t, weight x N(0,1) density) of the rule with no break (a smooth integrand)."""
    with mp.workprec(prec):
        nodes = []
        for lo, hi, n in _panels([], _half_width(digits), refine):
            xs, ws = _legendre(n, prec)
            half, centre = (hi - lo) / 2, (hi + lo) / 2
            for x, w in zip(xs, ws, strict=True):
                t = centre + half * x
                nodes.append((t, half * w * mp.exp(-t * t / 2) / mp.sqrt(2 * mp.pi)))
        return tuple(nodes)


def gauss_1d(f: Callable[[Mpf], Mpf], mean: Mpf, sd: Mpf, scale: Mpf,
             refine: float = 1.0, digits: float = RULE_DIGITS) -> Mpf:
    """E[f(mean + sd t)], t ~ N(0, 1); f has a kink (scale inf) or bends over
    ``scale`` at argument 0, i.e. at t* = -mean/sd.

    The density exp(-t^2/2)/sqrt(2 pi) is applied at every node.
    """
    if sd == 0:
        return f(mean)
    bend = None if scale == mpmath.inf else scale / sd
    if bend is not None and bend >= 1:  # smooth on the Gaussian's scale: a fixed rule
        total = mp.zero
        for t, w in _fixed_rule(math.ceil(digits), refine, mp.prec):
            total += w * f(mean + sd * t)
        return total
    total = mp.zero
    for lo, hi, n in _panels([(-mean / sd, bend)], _half_width(digits), refine):
        xs, ws = _legendre(n, mp.prec)
        half, centre = (hi - lo) / 2, (hi + lo) / 2
        part = mp.zero
        for x, w in zip(xs, ws, strict=True):
            t = centre + half * x
            part += w * mp.exp(-t * t / 2) * f(mean + sd * t)
        total += half * part
    return total / mp.sqrt(2 * mp.pi)


class GaussianMoments:
    """E[phi(u_a) phi(u_b)] (2-D) and E[phi(u)^2] (1-D) by direct quadrature, cached."""

    def __init__(self, name: str, refine: float = 1.0):
        self.phi = phi_of(name)
        self.refine = refine
        # the refined rule also reaches further into the tails (truncation is an error
        # both rules would otherwise share)
        self.digits = RULE_DIGITS * refine
        self._pair: dict[tuple, Mpf] = {}
        self._diag: dict[tuple, Mpf] = {}

    def diag(self, q: Mpf) -> Mpf:
        key = (mp.prec, q)
        if key not in self._diag:
            fn = self.phi.fn
            root = mp.sqrt(q)
            if self.smooth_at(q):
                self._diag[key] = mp.fsum(w * fn(root * x) ** 2 for x, w in self._hermite())
                return self._diag[key]
            # one dimension is cheap: twice the nodes of the pair rule
            self._diag[key] = gauss_1d(lambda u: fn(u) ** 2, mp.zero, root,
                                       self.phi.scale, 2 * self.refine, self.digits)
        return self._diag[key]

    def smooth_at(self, q: Mpf) -> bool:
        """phi(u), u ~ N(0, q), is smooth on the Gaussian's scale: Gauss-Hermite.

        (tanh has poles at u = +-i pi/2: at q = 1/2 the 96-node rule is good to 8e-16,
        at q = 0.6 to 2e-14; erf, GELU, SiLU to 1e-18 there. The refined rule, 144
        nodes, measures it.)
        """
        return self.phi.scale != mpmath.inf and q <= HERMITE_RANGE * self.phi.scale ** 2

    def _hermite(self) -> tuple[tuple[Mpf, Mpf], ...]:
        cut = mp.mpf(10) ** -(self.digits + 4)
        return tuple((x, w) for x, w in _hermite(math.ceil(HERMITE_NODES * self.refine),
                                                  mp.prec) if w > cut)

    def pair(self, kaa: Mpf, kbb: Mpf, kab: Mpf) -> Mpf:
        key = (mp.prec, kaa, kbb, kab)
        if key not in self._pair:
            self._pair[key] = self._pair_integral(kaa, kbb, kab)
        return self._pair[key]

    def _pair_integral(self, kaa: Mpf, kbb: Mpf, kab: Mpf) -> Mpf:
        """Outer z (u_a = sqrt(K_aa) z), inner u_b | u_a ~ N(slope z, det K / K_aa)."""
        fn, scale = self.phi.fn, self.phi.scale
        kinked = scale == mpmath.inf
        ra = mp.sqrt(kaa)
        slope = kab / ra
        sd = mp.sqrt(max(mp.zero, kbb - kab * kab / kaa))
        if kinked:
            return self._polar(kaa, kbb, kab)
        if self.smooth_at(kaa) and self.smooth_at(kbb):
            # nodes whose product weight is below 10^-(digits + 4) are left out
            rule = self._hermite()
            cut = mp.mpf(10) ** -(self.digits + 4)
            total = mp.zero
            for z, w in rule:
                mean = slope * z
                total += w * fn(ra * z) * mp.fsum(v * fn(mean + sd * t) for t, v in rule
                                                  if v * w > cut)
            return total
        # phi(u_a) bends over scale/ra at z = 0; the inner mean E[u_b|z] = slope z
        # crosses 0 there too, and the inner integral bends over max(sd, scale)/|slope|
        bend = mpmath.inf if kinked else scale / ra
        if slope != 0:
            bend = min(bend, max(sd, mp.zero if kinked else scale) / abs(slope))
        breaks = []
        if kinked or bend < 1:
            breaks = [(mp.zero, bend if 0 < bend < 1 else None)]
        total = mp.zero
        for lo, hi, n in _panels(breaks, _half_width(self.digits), self.refine):
            xs, ws = _legendre(n, mp.prec)
            half, centre = (hi - lo) / 2, (hi + lo) / 2
            part = mp.zero
            for x, w in zip(xs, ws, strict=True):
                z = centre + half * x
                # the inner integral needs only the digits the outer density leaves
                digits = max(self.digits - float(z * z) / (2 * math.log(10)), 4.0)
                inner = gauss_1d(fn, slope * z, sd, scale, self.refine, digits)
                part += w * mp.exp(-z * z / 2) * fn(ra * z) * inner
            total += half * part
        return total / mp.sqrt(2 * mp.pi)

    def _polar(self, kaa: Mpf, kbb: Mpf, kab: Mpf) -> Mpf:
        """Piecewise-polynomial phi: polar coordinates of the whitened plane.

        z = r (cos t, sin t) ~ N(0, I): u_a = sqrt(K_aa) r cos t, u_b = sqrt(K_bb) r
        cos(t - beta) with cos beta = c. phi(u_a) and phi(u_b) switch on rays
        (t = +-pi/2, beta +- pi/2), so the angle is split there and every sector
        is smooth in t and in r: Gauss-Legendre in both, the density
        exp(-r^2/2) r dr dt / (2 pi) applied at every node.
        """
        fn = self.phi.fn
        ra, rb = mp.sqrt(kaa), mp.sqrt(kbb)
        c = max(-mp.one, min(mp.one, kab / (ra * rb)))
        beta = mp.acos(c)
        cuts = sorted({(v % (2 * mp.pi)) for v in (mp.pi / 2, 3 * mp.pi / 2,
                                                    beta + mp.pi / 2, beta + 3 * mp.pi / 2)})
        cuts = [*cuts, cuts[0] + 2 * mp.pi]
        n = math.ceil(POLAR_NODES * self.refine)
        xs, ws = _legendre(n, mp.prec)
        radial = []
        width = _half_width(self.digits)
        pieces = math.ceil(float(width) / 2)
        for i in range(pieces):
            lo, hi = width * i / pieces, width * (i + 1) / pieces
            half, centre = (hi - lo) / 2, (hi + lo) / 2
            for x, w in zip(xs, ws, strict=True):
                r = centre + half * x
                radial.append((r, half * w * r * mp.exp(-r * r / 2)))
        total = mp.zero
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            if hi <= lo:
                continue
            half, centre = (hi - lo) / 2, (hi + lo) / 2
            for x, w in zip(xs, ws, strict=True):
                t = centre + half * x
                ca, cb = ra * mp.cos(t), rb * mp.cos(t - beta)
                part = mp.fsum(v * fn(ca * r) * fn(cb * r) for r, v in radial)
                total += half * w * part
        return total / (2 * mp.pi)

    def kernel(self, K: list[list[Mpf]], pairs: bool = True) -> list[list[Mpf]]:
        """G(K)_ab = E[phi(u_a) phi(u_b)], u ~ N(0, K) (diagonal only unless ``pairs``)."""
        size = len(K)
        G = [[mp.zero] * size for _ in range(size)]
        for a in range(size):
            G[a][a] = self.diag(K[a][a])
            for b in range(a + 1, size if pairs else 0):
                G[a][b] = G[b][a] = self.pair(K[a][a], K[b][b], K[a][b])
        return G


# -- the network, from its definition ------------------------------------------------------
@dataclass(frozen=True)
class Net:
    """The numbers of a NetworkSpec, read as the exact binary values float64 sees."""

    net: str
    activation: str
    sw2: Mpf
    sb2: Mpf
    depth: int
    rho: Mpf
    sw2_out: Mpf
    sb2_out: Mpf

    @classmethod
    def of(cls, spec: NetworkSpec) -> Net:
        return cls(spec.net, spec.activation, mp.mpf(spec.sw2), mp.mpf(spec.sb2), spec.depth,
                   mp.mpf(spec.rho or 0), mp.mpf(spec.sw2_out), mp.mpf(spec.sb2_out))


def forward(moments: GaussianMoments, net: Net, K0: list[list[Mpf]], rho: Mpf,
            pairs: bool = True) -> tuple[list[list[Mpf]], list[list[Mpf]]]:
    """(K^(L), K_out): FFNet K = sb2 + sw2 G(K); ResNet K += rho^2 (sb2 + sw2 G(K)).

    ``pairs=False`` propagates the diagonal only (it never depends on the off-diagonal
    entries); the off-diagonal results are then 0.
    """
    K = [list(row) for row in K0]
    size = len(K)
    for _ in range(net.depth):
        G = moments.kernel(K, pairs)
        if net.net == "ffnet":
            K = [[net.sb2 + net.sw2 * G[a][b] for b in range(size)] for a in range(size)]
        else:
            K = [[K[a][b] + rho * rho * (net.sb2 + net.sw2 * G[a][b]) for b in range(size)]
                 for a in range(size)]
    G = moments.kernel(K, pairs)
    out = [[net.sb2_out + net.sw2_out * G[a][b] for b in range(size)] for a in range(size)]
    return K, out


@dataclass
class NetworkReference:
    """Reference values (nested lists of mpf) and their relative error estimates.

    ``response_tensor[a][b][c][d]`` = dK^(L)_ab / dK^(0)_cd (cd and dc moved
    together); ``chi`` its elementwise part (a, b, a, b); ``*_out`` the same for
    K_out; ``dK_drho`` and ``dchi_out_drho`` (ResNet, with ``drho``). ``error``
    maps each key to the estimated relative error of the reference itself: the
    larger of the rule's (standard against refined rule, forward pass) and the
    differencing truncation (step h against h/2).
    """

    values: dict[str, list] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)
    dps: int = DPS
    seconds: float = 0.0


class Referee:
    """Reference values for networks of one activation (Gaussian moments cached)."""

    def __init__(self, activation: str, dps: int = DPS):
        self.activation = activation
        self.dps = dps
        self.moments = GaussianMoments(activation)
        self.refined = GaussianMoments(activation, refine=1.5)

    def network(self, spec: NetworkSpec, K0: Sequence[Sequence[float]], *,
                derivatives: bool = True, tensor: bool = True, drho: bool = False
                ) -> NetworkReference:
        """K, K_out; with ``derivatives`` chi, chi_out and (``tensor``) the response
        tensors; with ``drho`` dK/d rho and d chi_out/d rho.

        Inputs are read as the exact binary values float64 holds. The working
        precision is ``dps`` plus the digits K0 loses to near-singularity (the
        steps are relative to K0's smallest eigenvalue, so a correlation of
        1 - 1e-12 needs about 12 more digits).
        """
        start = time.perf_counter()
        result = NetworkReference()
        with mp.workdps(self.dps):
            base = [[mp.mpf(float(v)) for v in row] for row in K0]
            gap = _smallest_eigenvalue(base)
            # outputs are O(1) or larger (biases, readout): steps far below 1 cost digits
            scale = max([mp.one] + [abs(base[a][a]) for a in range(len(base))])
            extra = max(0, math.ceil(-math.log10(float(gap / scale))))
        result.dps = self.dps + extra
        with mp.workdps(result.dps):
            net = Net.of(spec)
            base = [[mp.mpf(float(v)) for v in row] for row in K0]
            gap = _smallest_eigenvalue(base)
            K, out = forward(self.moments, net, base, net.rho)
            K2, out2 = forward(self.refined, net, base, net.rho)
            result.values["K"], result.values["K_out"] = K, out
            rule = max(_normwise(K, K2), _normwise(out, out2))
            result.error["K"] = result.error["K_out"] = rule
            if derivatives:
                self._tensor(result, net, base, gap, rule, tensor)
            if drho:
                self._drho(result, net, base, gap, rule)
        result.seconds = time.perf_counter() - start
        return result

    def _tensor(self, result: NetworkReference, net: Net, base: list[list[Mpf]], gap: Mpf,
                rule: float, full: bool) -> None:
        """dK/dK0_cd for every independent entry; without ``full`` only chi (a diagonal
        entry then moves the diagonal alone, one-dimensional integrals)."""
        size = len(base)
        T, T_out = _zeros4(size), _zeros4(size)
        err = err_out = 0.0
        for c in range(size):
            for d in range(c, size):
                def along(t: Mpf, c=c, d=d) -> tuple:
                    return forward(self.moments, net, _moved(base, c, d, t), net.rho,
                                   pairs=size > 1 and (full or c != d))
                h = STEP_FIRST * gap
                slopes, errors = _first_difference(along, base[c][d], h)
                pairs = size > 1 and (full or c != d)
                if c != d or not pairs:
                    # the rule's error in the derivative itself (a value error can be
                    # amplified downstream, e.g. near |c| = 1): refined rule, one step
                    def refined(t: Mpf, c=c, d=d, pairs=pairs) -> tuple:
                        return forward(self.refined, net, _moved(base, c, d, t), net.rho,
                                       pairs=pairs)
                    errors = tuple(max(e, r) for e, r in zip(
                        errors, _rule_difference(along, refined, base[c][d], h), strict=True))
                for a in range(size):
                    for b in range(size):
                        T[a][b][c][d] = T[a][b][d][c] = slopes[0][a][b]
                        T_out[a][b][c][d] = T_out[a][b][d][c] = slopes[1][a][b]
                err, err_out = max(err, errors[0]), max(err_out, errors[1])
        chi = [[T[a][b][a][b] for b in range(size)] for a in range(size)]
        chi_out = [[T_out[a][b][a][b] for b in range(size)] for a in range(size)]
        result.values.update(chi=chi, chi_out=chi_out)
        if full:
            result.values.update(response_tensor=T, response_tensor_out=T_out)
        for key, e in (("response_tensor", err), ("chi", err),
                       ("response_tensor_out", err_out), ("chi_out", err_out)):
            if key in result.values:
                result.error[key] = max(e, rule)

    def _drho(self, result: NetworkReference, net: Net, base: list[list[Mpf]], gap: Mpf,
              rule: float) -> None:
        if net.net != "resnet" or net.rho <= 0:
            raise ValueError("d/d rho needs a ResNet with rho > 0")
        size = len(base)

        def in_rho(r: Mpf) -> tuple:
            return forward(self.moments, net, base, r)
        slopes, errors = _first_difference(in_rho, net.rho, STEP_FIRST * net.rho)
        result.values["dK_drho"] = slopes[0]
        result.error["dK_drho"] = max(errors[0], rule)
        dchi = [[mp.zero] * size for _ in range(size)]
        worst = 0.0
        for c in range(size):
            for d in range(c, size):
                def both(t: Mpf, r: Mpf, c=c, d=d) -> Mpf:
                    moved = _moved(base, c, d, t)
                    return forward(self.moments, net, moved, r, pairs=c != d)[1][c][d]
                value, e = _mixed_difference(both, base[c][d], net.rho,
                                             STEP_MIXED * gap, STEP_MIXED * net.rho)
                dchi[c][d] = dchi[d][c] = value
                worst = max(worst, e)
        result.values["dchi_out_drho"] = dchi
        result.error["dchi_out_drho"] = max(worst, rule)


def _smallest_eigenvalue(K: list[list[Mpf]]) -> Mpf:
    if len(K) == 1:
        return K[0][0]
    values = mp.eigsy(mp.matrix(K), eigvals_only=True)
    return max(min(values), mp.mpf(10) ** (-mp.dps))


def _zeros4(size: int) -> list:
    return [[[[mp.zero] * size for _ in range(size)] for _ in range(size)] for _ in range(size)]


def _moved(K: list[list[Mpf]], c: int, d: int, value: Mpf) -> list[list[Mpf]]:
    moved = [list(row) for row in K]
    moved[c][d] = moved[d][c] = value
    return moved


def _normwise(A: list[list[Mpf]], B: list[list[Mpf]]) -> float:
    """max |A - B| / sqrt(|A_aa A_bb|): the kernel-scale relative difference."""
    size = len(A)
    worst = 0.0
    for a in range(size):
        for b in range(size):
            scale = mp.sqrt(abs(A[a][a] * A[b][b])) or mp.one
            worst = max(worst, float(abs(A[a][b] - B[a][b]) / scale))
    return worst


def _first_difference(f: Callable[[Mpf], tuple], x: Mpf, h: Mpf
                      ) -> tuple[tuple, tuple[float, ...]]:
    """Central differences of every matrix f returns, at steps h and h/2, Richardson-combined.

    Per matrix the error estimate is max |D(h) - D(h/2)| / 3 (the truncation error
    of D(h/2), larger than that of the combination) relative to the largest
    |derivative| of that matrix.
    """
    plus, minus = f(x + h), f(x - h)
    plus2, minus2 = f(x + h / 2), f(x - h / 2)
    derivatives, errors = [], []
    for p, m, p2, m2 in zip(plus, minus, plus2, minus2, strict=True):
        size = len(p)
        D = [[(p[a][b] - m[a][b]) / (2 * h) for b in range(size)] for a in range(size)]
        D2 = [[(p2[a][b] - m2[a][b]) / h for b in range(size)] for a in range(size)]
        R = [[(4 * D2[a][b] - D[a][b]) / 3 for b in range(size)] for a in range(size)]
        # per entry, relative to max(|entry|, RESPONSE_FLOOR x the largest entry): the
        # scale the comparisons use
        floor = RESPONSE_FLOOR * max(max(abs(v) for row in R for v in row),
                                     mp.mpf(10) ** (-mp.dps // 2))
        errors.append(max(float(abs(D[a][b] - D2[a][b]) / 3 / max(abs(R[a][b]), floor))
                          for a in range(size) for b in range(size)))
        derivatives.append(R)
    return tuple(derivatives), tuple(errors)


def _rule_difference(f: Callable[[Mpf], tuple], g: Callable[[Mpf], tuple], x: Mpf, h: Mpf
                     ) -> tuple[float, ...]:
    """Per matrix: the largest entrywise relative difference (with the response floor)
    between the central differences of f and g at step h (f's points are cached)."""
    fp, fm, gp, gm = f(x + h), f(x - h), g(x + h), g(x - h)
    out = []
    for a1, a2, b1, b2 in zip(fp, fm, gp, gm, strict=True):
        size = len(a1)
        D = [[(a1[i][j] - a2[i][j]) / (2 * h) for j in range(size)] for i in range(size)]
        E = [[(b1[i][j] - b2[i][j]) / (2 * h) for j in range(size)] for i in range(size)]
        floor = RESPONSE_FLOOR * max(max(abs(v) for row in D for v in row),
                                     mp.mpf(10) ** (-mp.dps // 2))
        out.append(max(float(abs(D[i][j] - E[i][j]) / max(abs(D[i][j]), floor))
                       for i in range(size) for j in range(size)))
    return tuple(out)


def _mixed_difference(f: Callable[[Mpf, Mpf], Mpf], x: Mpf, y: Mpf, h: Mpf, e: Mpf
                      ) -> tuple[Mpf, float]:
    """d^2 f / dx dy by the four-point stencil at (h, e) and (h/2, e/2), Richardson."""
    def stencil(h: Mpf, e: Mpf) -> Mpf:
        return (f(x + h, y + e) - f(x + h, y - e) - f(x - h, y + e)
                + f(x - h, y - e)) / (4 * h * e)

    D, D2 = stencil(h, e), stencil(h / 2, e / 2)
    value = (4 * D2 - D) / 3
    return value, float(abs(D - D2) / 3 / max(abs(value), mp.mpf(10) ** (-mp.dps // 2)))


def to_float(values: list) -> list:
    """Nested lists of mpf as nested lists of float."""
    if isinstance(values, list):
        return [to_float(v) for v in values]
    return float(values)
