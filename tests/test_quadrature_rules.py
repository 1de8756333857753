"""The generated quadrature moments against independent references, at any variance.

References are computed here, independently of the composite Gauss-Legendre
rule: adaptive QUADPACK (``scipy.integrate.quad``, nested for the pair) and the
mpmath path (``symfield.precision``, slow tests). Every moment the generated
code evaluates is checked: diagonal G_d, G_d_q, G_d_qq; pair G, G_k, G_qa, G_qb,
G_kk, G_kqa, G_kqb (Price: 2^-h E[phi^(i)(u_a) phi^(j)(u_b)]). Errors are relative
to E|integrand| (a moment that happens to vanish has no relative error), against
the module's stated accuracy.
"""

from __future__ import annotations

import importlib
import math
import warnings

import mpmath
import numpy as np
import pytest
import scipy.integrate
import sympy as sp

from symfield import quadrature_rules as rules
from symfield.activations import FAMILIES, resolve
from symfield.gaussian import X, derivative
from symfield.ir import DIAG_DERIVATIVES, PAIR_DERIVATIVES, pair_price_orders

FAMILY_NAMES = ("tanh", "gelu", "silu")
SECOND = ("G_kk", "G_kqa", "G_kqb", "G_d_qq")


def module(name: str):
    return importlib.import_module(f"generated.{name}")


def derivatives(name: str, n: int = 4) -> list:
    """phi, phi', ... and phi^2, (phi^2)', ... as numpy callables (SymPy derivatives)."""
    phis, squares = [FAMILIES[name].phi], [FAMILIES[name].phi ** 2]
    for _ in range(n):
        phis.append(derivative(phis[-1]))
        squares.append(derivative(squares[-1]))

    def fn(e):
        vector = sp.lambdify(X, e, modules=["numpy", "scipy"])
        scalar = sp.lambdify(X, e, modules="math")

        def call(u):
            if isinstance(u, float):  # scalar math is ~20x faster inside QUADPACK
                try:
                    return float(scalar(u))
                except (OverflowError, ValueError, ZeroDivisionError):
                    pass
            with np.errstate(all="ignore"):
                v = np.broadcast_to(vector(np.asarray(u, dtype=float)), np.shape(u)).astype(float)
            return np.where(np.isfinite(v), v, 0.0)  # SiLU's e^-x overflow where it decayed
        return call
    return [fn(e) for e in phis], [fn(e) for e in squares]


def quad_normal(f, sd: float, mean: float = 0.0, epsrel: float = 1e-13,
                scale_epsrel: float | None = 1e-6) -> tuple[float, float]:
    """(E f(u), E |f(u)|), u ~ N(mean, sd^2), adaptive QUADPACK in t, cut near u = 0.

    E|f| only scales errors (a loose tolerance); ``scale_epsrel=None`` skips it.
    """
    if sd == 0:
        v = float(f(mean))
        return v, abs(v)
    cuts = {-12.0, 12.0, 0.0}
    for p in (0.0, 0.3, 1.0, 3.0, 10.0, 30.0):
        for s in (1, -1):
            t = (s * p - mean) / sd
            if -12 < t < 12:
                cuts.add(t)
    cuts = sorted(cuts)
    value = scale = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            def g(t):
                return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * float(f(mean + sd * t))
            value += scipy.integrate.quad(g, a, b, epsabs=0, epsrel=epsrel, limit=200)[0]
            if scale_epsrel is not None:
                scale += scipy.integrate.quad(lambda t: abs(g(t)), a, b, epsabs=0,
                                              epsrel=scale_epsrel, limit=200)[0]
    return value, scale


def tolerance(mod, name: str) -> float:
    return mod.STATED_ACCURACY_SECOND if name in SECOND else mod.STATED_ACCURACY


# -- 1-D -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_diag_moments_match_quadpack(name):
    mod = module(name)
    _, squares = derivatives(name)
    qs = np.array([1e-3, 0.1, 1.0, 30.0, 1e3, 1e4])
    got = mod.diag_expectations(qs)
    for moment, variables in DIAG_DERIVATIVES.items():
        order = len(variables)
        for q, value in zip(qs, got[moment], strict=True):
            ref, scale = quad_normal(squares[2 * order], math.sqrt(q))
            error = abs(value - ref * 0.5**order) / (scale * 0.5**order)
            assert error <= tolerance(mod, moment), (name, moment, q, value, ref, error)


# -- 2-D: exact reductions at c = 0 and c = +-1 ------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pair_moments_at_c_zero_and_pm_one(name):
    """c = 0: E[f(u_a)] E[g(u_b)]; c = +-1: E[f(u) g(+-u sqrt(qb/qa))]; unequal variances."""
    mod = module(name)
    phis, _ = derivatives(name)
    points = [(1e-3, 4e-3), (1.0, 1.0), (30.0, 7.0), (1e4, 1e4), (2.0, 5e3)]
    for qa, qb in points:
        for c in (0.0, 1.0, -1.0):
            k = c * math.sqrt(qa * qb)
            got = mod.pair_expectations(qa, qb, k)
            for moment in PAIR_DERIVATIVES:
                i, j, h = pair_price_orders(moment)
                if c == 0:
                    (ea, sa), (eb, sb) = (quad_normal(phis[i], math.sqrt(qa)),
                                          quad_normal(phis[j], math.sqrt(qb)))
                    ref, scale = ea * eb, sa * sb
                else:
                    ratio = c * math.sqrt(qb / qa)
                    ref, scale = quad_normal(
                        lambda u, i=i, j=j, r=ratio: phis[i](u) * phis[j](r * u), math.sqrt(qa))
                error = abs(got[moment] * 2.0**h - ref) / max(scale, 1e-300)
                assert error <= tolerance(mod, moment), (name, moment, qa, qb, c, error)


# -- 2-D: general correlations against nested QUADPACK -----------------------------------------
def nested_reference(fa, fb, qa, qb, k) -> tuple[float, float]:
    """E[fa(u_a) fb(u_b)] and E|fa fb| by QUADPACK over u_a of fa(u_a) E[fb(u_b) | u_a]."""
    sd = math.sqrt(max(qa * qb - k * k, 0.0) / qa)

    def inner(ua):
        return quad_normal(fb, sd, k / qa * ua, scale_epsrel=None)[0]

    def inner_abs(ua):
        return quad_normal(lambda u: abs(fb(u)), sd, k / qa * ua, epsrel=1e-5,
                           scale_epsrel=None)[0]

    value = quad_normal(lambda ua: float(fa(ua)) * inner(ua), math.sqrt(qa),
                        scale_epsrel=None)[0]
    scale = quad_normal(lambda ua: abs(float(fa(ua))) * inner_abs(ua), math.sqrt(qa),
                        epsrel=1e-5, scale_epsrel=None)[0]
    return value, scale


def check_general(name, points, moments):
    """Every pair moment against nested QUADPACK (scipy's vector-valued quad_vec inside
    quad_vec, all derivative orders at once: symfield.quadrature_rules.reference_pair)."""
    mod = module(name)
    phis, _ = derivatives(name)
    exprs = [FAMILIES[name].phi]
    for _ in range(3):
        exprs.append(derivative(exprs[-1]))
    vector = sp.lambdify(X, exprs, modules=["numpy", "scipy"])

    def values(u):
        with np.errstate(all="ignore"):
            v = np.array([float(x) for x in vector(np.float64(u))])
        return np.where(np.isfinite(v), v, 0.0)

    for qa, qb, k in points:
        got = mod.pair_expectations(qa, qb, k)
        table = rules.reference_pair(qa, qb, k, values, values)
        for moment in moments:
            i, j, h = pair_price_orders(moment)
            # E|integrand| <= sqrt(E f_i^2 E f_j^2) (Cauchy-Schwarz): a conservative scale
            scale = math.sqrt(quad_normal(lambda u, i=i: phis[i](u) ** 2, math.sqrt(qa))[0]
                              * quad_normal(lambda u, j=j: phis[j](u) ** 2, math.sqrt(qb))[0])
            error = abs(got[moment] * 2.0**h - table[i, j]) / scale
            assert error <= tolerance(mod, moment), (name, moment, (qa, qb, k), error)


def mpmath_check(name, points, dps):
    """G, G_k, G_qa, G_qb against the mpmath path (its own panels and code)."""
    from symfield.precision import pair_quadrature, phi_functions

    mod = module(name)
    phi = phi_functions(resolve(name))
    phis, _ = derivatives(name)
    for qa, qb, k in points:
        got = mod.pair_expectations(qa, qb, k)
        with mpmath.workdps(dps):
            ref = pair_quadrature(phi, qa, qb, k)
        for moment, value in zip(("G", "G_k", "G_qa", "G_qb"), ref, strict=True):
            i, j, h = pair_price_orders(moment)
            # E|integrand| <= sqrt(E f_i^2 E f_j^2) (Cauchy-Schwarz): a conservative scale
            scale = math.sqrt(quad_normal(lambda u, i=i: phis[i](u) ** 2, math.sqrt(qa))[0]
                              * quad_normal(lambda u, j=j: phis[j](u) ** 2, math.sqrt(qb))[0])
            error = abs(got[moment] - float(value)) / (scale * 0.5**h)
            assert error <= mod.STATED_ACCURACY, (name, moment, (qa, qb, k), error)


def test_pair_moments_general_point_quick():
    # unequal variances, strongly correlated, where Gauss-Hermite failed
    mpmath_check("tanh", [(40.0, 30.0, 0.95 * math.sqrt(1200.0))], 17)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pair_moments_general_grid(name):
    points = [(q * f, q, c * q * math.sqrt(f)) for q, f, c in
              ((1e-3, 1.0, 0.5), (3.0, 0.3, -0.9), (100.0, 1.0, 0.999999), (100.0, 0.3, 0.5),
               (1e4, 1.0, -0.9), (1e4, 0.01, 0.999999))]
    check_general(name, points, tuple(PAIR_DERIVATIVES))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pair_moments_against_mpmath(name):
    mpmath_check(name, [(1e-3, 2e-3, -1.4e-3), (87.0, 87.0, 25.0), (1e4, 30.0, -547.0),
                        (1e4, 1e4, 9999.999)], 20)


# -- the build-time twin is the generated rule -------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_build_time_rule_is_the_generated_rule(name):
    """The accuracy measured at build time (quadrature_rules) applies to the generated code."""
    mod = module(name)
    phis, squares = derivatives(name)
    structure = np.array(mod._STRUCTURE)
    gl = rules.gauss_legendre(mod.QUADRATURE_NODES)
    for q in (1e-4, 2.0, 5e3):
        twin = rules.diag_moment(q, squares[2], structure, gl) / 2
        assert mod.diag_expectations(q)["G_d_q"] == pytest.approx(twin, rel=1e-13, abs=1e-300)
    for qa, qb, k in [(2.0, 3.0, 2.4), (1e3, 10.0, -50.0)]:
        twin = rules.pair_moment(qa, qb, k, phis[3], phis[1], structure, gl) / 2  # Price 1/2
        got = mod.pair_expectations(qa, qb, k)["G_kqa"]
        assert got == pytest.approx(twin, rel=1e-12, abs=1e-15)


# -- range, delta, refusal --------------------------------------------------------------------
def test_variances_outside_the_trusted_range_are_refused():
    from symfield.kernel import NumericalError, compute
    from symfield.spec import NetworkSpec

    mod = module("tanh")
    assert mod.QUADRATURE_Q_MIN <= 1e-4 and mod.QUADRATURE_Q_MAX >= 1e4
    # the module itself returns NaN there (never a silent guess), elementwise
    diag = mod.diag_expectations([1.0, 2 * mod.QUADRATURE_Q_MAX])["G_d_q"]
    assert np.isfinite(diag[0]) and np.isnan(diag[1])
    pair = mod.pair_expectations([1.0, 2 * mod.QUADRATURE_Q_MAX], [1.0, 1.0], [0.5, 0.5])["G_k"]
    assert np.isfinite(pair[0]) and np.isnan(pair[1])
    # a kernel that grows past the range inside the layer loop
    spec = NetworkSpec(net="resnet", activation="tanh", sw2=100.0, sb2=0.05, rho=1.0,
                       depth=5)
    with pytest.raises(NumericalError, match=r"outside the trusted quadrature range \[0"):
        compute(spec, np.array([[0.9999e5, 0.5], [0.5, 1.0]]))


def test_pair_functions_take_the_gram_determinant():
    mod = module("tanh")
    q = np.array([[2.0, 3.0, 0.5]])
    k = np.array([[2.4, -0.9, 1.2]])
    iu, ju = np.triu_indices(3, 1)
    tri = (iu, ju, np.arange(2, -1, -1))
    delta = q[:, iu] * q[:, ju] - k * k
    for with_delta, without in zip(mod._pair_second(q, k, tri, delta),
                                   mod._pair_second(q, k, tri), strict=True):
        np.testing.assert_allclose(with_delta, without, rtol=1e-13, atol=1e-16)


# -- activations without finite moments are refused (exit 2, one line) -------------------------
@pytest.mark.parametrize("source, reason", [("1/x", "poles"), ("1/(x - 0.3)", "poles"),
                                            ("exp(x**2)", "grows faster")])
def test_activations_without_finite_moments_are_refused(source, reason, capsys):
    from symfield.cli import main

    argv = ["kernel", "--net", "resnet", "--activation", f"expr:{source}", "--sw2", "1",
            "--sb2", "0.05", "--rho", "0.3", "--depth", "2", "--K0", "1,0.5;0.5,1", "--json"]
    for extra in ([], ["--dps", "20"]):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert reason in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_float64_agrees_with_mpmath_on_a_growing_resnet():
    """The issue's network (tanh, rho = 1, sw2 = 2: the variance grows past 4, where the
    old rule failed), shortened to 8 layers: float64 against the mpmath path at 20 digits."""
    from symfield.precision import propagate_mp
    from symfield.spec import NetworkSpec

    spec = NetworkSpec(net="resnet", activation="tanh", sw2=2.0, sb2=0.05, rho=1.0, depth=8)
    K0 = [[1.0, 0.5], [0.5, 1.0]]
    ours = module("tanh").resnet(np.array(K0), rho=1.0, sw2=2.0, sb2=0.05, depth=8)
    ref = propagate_mp(spec, K0, dps=20)
    for key in ("K", "chi", "chi_out"):
        expected = np.array([[float(v) for v in row] for row in ref[key]])
        np.testing.assert_allclose(ours[key], expected, rtol=1e-9, err_msg=key)
