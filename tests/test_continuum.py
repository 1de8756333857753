"""Continuum limit of the ResNet and the optimal residual scaling (THEORY.md section 5)."""

import mpmath
import pytest
import sympy as sp

from symfield.action import G_D, SB2, SW2, G
from symfield.continuum import (
    _Flow,
    _problem,
    continuum_equations,
    continuum_ln_chi_out,
    continuum_optimum,
    specialize,
    stationarity_value,
)
from symfield.gaussian import KAA, KAB, KBB, Q
from symfield.spec import SpecError

SW2_, SB2_, Q0 = 1.25, 0.05, 0.05  # floats are read as their shortest decimal
K0_PAIR = [[0.05, 0.03], [0.03, 0.05]]
mp = mpmath.mp


# Independent erf moments, typed from THEORY.md section 3 and differentiated by hand:
# G = (2/pi) asin(2 K_ab / sqrt((1+2K_aa)(1+2K_bb))), G_d(q) = G(q, q, q).
def erf_gd(q):
    return 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q))


def erf_gd1(q):
    return 4 / (mp.pi * (1 + 2 * q) * mp.sqrt(1 + 4 * q))


def erf_gd2(q):  # d/dq of erf_gd1
    return -erf_gd1(q) * (2 / (1 + 2 * q) + 2 / (1 + 4 * q))


def erf_g(a, b, k):
    return 2 / mp.pi * mp.asin(2 * k / mp.sqrt((1 + 2 * a) * (1 + 2 * b)))


def erf_gk(a, b, k):
    return 4 / (mp.pi * mp.sqrt((1 + 2 * a) * (1 + 2 * b) - 4 * k * k))


@pytest.fixture(scope="module")
def erf_diag():
    return continuum_optimum("erf", SW2_, SB2_, Q0, dps=30)


@pytest.fixture(scope="module")
def erf_pair():
    return continuum_optimum("erf", SW2_, SB2_, K0_PAIR, response="offdiagonal", dps=30)


# -- the symbolic derivation ----------------------------------------------------------------
def test_continuum_limit_of_the_layer_map():
    eqs = continuum_equations()
    gd = G_D(Q)
    assert sp.simplify(eqs.ode_diag - (SB2 + SW2 * gd)) == 0
    assert sp.simplify(eqs.ode_pair[2] - (SB2 + SW2 * G(KAA, KBB, KAB))) == 0
    assert sp.simplify(eqs.rate_diag - SW2 * sp.diff(gd, Q)) == 0
    assert sp.simplify(eqs.rate_pair - SW2 * sp.diff(G(KAA, KBB, KAB), KAB)) == 0
    # the diagonal rate is dF/dq, so chi_aa(t) = F(q(t)) / F(q0) in closed form
    assert sp.simplify(eqs.rate_diag - sp.diff(eqs.ode_diag, Q)) == 0


def test_diagonal_condition_has_the_theory_form():
    gd = G_D(Q)
    theory = sp.diff(gd, Q, 2) / sp.diff(gd, Q) * (SB2 + SW2 * gd) + SW2 * sp.diff(gd, Q)
    assert sp.simplify(continuum_equations().stationarity_diag - theory) == 0


def test_pair_condition_is_the_chain_rule_through_the_ode():
    g = G(KAA, KBB, KAB)
    gk = sp.diff(g, KAB)
    flow = {KAA: SB2 + SW2 * G_D(KAA), KBB: SB2 + SW2 * G_D(KBB), KAB: SB2 + SW2 * g}
    theory = sum(sp.diff(gk, v) * f for v, f in flow.items()) / gk + SW2 * gk
    assert sp.simplify(continuum_equations().stationarity_pair - theory) == 0


def test_equations_are_named_and_printable():
    named = continuum_equations().named()
    assert {"ode_diag", "ode_pair_ab", "rate_pair", "stationarity_diag",
            "stationarity_pair", "sb2_threshold_diag"} <= set(named)
    assert all(sp.latex(e) for e in named.values())


# -- the diagonal optimum -------------------------------------------------------------------
def test_check_value_erf_diagonal(erf_diag):
    # THEORY.md section 5: sqrt(t*) = 0.96594438...
    print("erf diagonal sqrt(t*) =", mpmath.nstr(erf_diag.sqrt_tstar, 30),
          " q* =", mpmath.nstr(erf_diag.K_star, 30))
    assert erf_diag.converged
    assert abs(erf_diag.sqrt_tstar - mpmath.mpf("0.96594438")) < 5e-9
    with mp.workdps(30):
        assert abs(erf_diag.rho_star(100) - erf_diag.sqrt_tstar / 10) < 1e-28


def test_residual_at_the_optimum(erf_diag):
    assert abs(stationarity_value("erf", SW2_, SB2_, erf_diag.K_star, dps=30)) < 1e-25
    with mp.workdps(35):  # the THEORY.md form with hand-differentiated erf moments
        sw2, sb2, q = mpmath.mpf("1.25"), mpmath.mpf("0.05"), erf_diag.K_star
        theory = erf_gd2(q) / erf_gd1(q) * (sb2 + sw2 * erf_gd(q)) + sw2 * erf_gd1(q)
        assert abs(theory) < 1e-25
        t_star = mpmath.quad(lambda s: 1 / (sb2 + sw2 * erf_gd(s)), [mpmath.mpf("0.05"), q])
        assert abs(t_star - erf_diag.t_star) < 1e-25


def test_diagonal_optimum_is_a_maximum(erf_diag):
    t_star, delta = erf_diag.t_star, mpmath.mpf("0.02")

    def ln_chi(T):
        return continuum_ln_chi_out("erf", SW2_, SB2_, Q0, T, dps=25)

    centre, left, right = ln_chi(t_star), ln_chi(t_star - delta), ln_chi(t_star + delta)
    with mp.workdps(30):
        assert abs(centre - mpmath.log(erf_diag.chi_out)) < 1e-20
    assert left < centre and right < centre
    curvature = (left + right - 2 * centre) / delta**2
    slope = (right - left) / (2 * delta)
    assert curvature < -1e-3
    assert abs(slope) < abs(curvature) * delta  # stationary up to O(delta^2)
    # chi_aa(T) = F(q(T)) / F(q0): the ln-chi integral equals this closed form
    with mp.workdps(30):
        sw2, sb2, q = mpmath.mpf("1.25"), mpmath.mpf("0.05"), erf_diag.K_star
        chi = (sb2 + sw2 * erf_gd(q)) / (sb2 + sw2 * erf_gd(mpmath.mpf("0.05")))
        assert abs(erf_diag.chi_out / (erf_gd1(q) * chi) - 1) < 1e-25


def test_relu_diagonal_has_no_interior_optimum():
    result = continuum_optimum("relu", SW2_, SB2_, Q0)
    assert result.K_star is None and result.t_star is None and not result.converged
    assert result.rho_star(100) is None
    assert "independent of q" in result.reason and "grows" in result.reason
    assert specialize(continuum_equations().stationarity_diag, "relu") == SW2 / 2


def test_no_root_when_the_bias_dominates():
    # c(q0) > 0 iff sb2 < sb2_max(q0); above it chi_out decreases from T = 0
    eqs = continuum_equations()
    threshold = specialize(eqs.sb2_threshold_diag, "erf").subs({SW2: sp.Rational(5, 4),
                                                                Q: sp.Rational(1, 20)})
    sb2_max = float(threshold)
    below = continuum_optimum("erf", SW2_, 0.98 * sb2_max, Q0, dps=20)
    above = continuum_optimum("erf", SW2_, 1.02 * sb2_max, Q0, dps=20)
    print("erf, sw2 = 1.25, q0 = 0.05: sb2_max =", sb2_max, "; sqrt(t*) just below:",
          mpmath.nstr(below.sqrt_tstar, 10))
    assert below.converged and 0 < below.t_star < 0.1
    assert above.t_star is None and "sb2 < sb2_max" in above.reason
    assert str(round(sb2_max, 4))[:5] in above.reason


# -- the off-diagonal optimum ---------------------------------------------------------------
def test_offdiagonal_erf(erf_pair):
    print("erf off-diagonal sqrt(t*) =", mpmath.nstr(erf_pair.sqrt_tstar, 30),
          " K* =", [mpmath.nstr(k, 20) for k in erf_pair.K_star])
    assert erf_pair.converged and 0 < erf_pair.t_star < 32
    assert abs(erf_pair.residual) < 1e-25
    assert abs(stationarity_value("erf", SW2_, SB2_, erf_pair.K_star,
                                  response="offdiagonal")) < 1e-25
    kaa, kbb, kab = erf_pair.K_star
    assert kaa == kbb and 0 < kab < kaa


def test_offdiagonal_optimum_is_a_maximum(erf_pair):
    delta = mpmath.mpf("0.1")

    def ln_chi(T):
        return continuum_ln_chi_out("erf", SW2_, SB2_, K0_PAIR, T, response="offdiagonal",
                                    dps=15)

    centre = ln_chi(erf_pair.t_star)
    assert abs(centre - mpmath.log(erf_pair.chi_out)) < 1e-12
    assert ln_chi(erf_pair.t_star - delta) < centre > ln_chi(erf_pair.t_star + delta)


def test_integrator_against_mpmath_odefun():
    with mp.workdps(20):
        sw2, sb2 = mpmath.mpf("1.25"), mpmath.mpf("0.05")
        y0 = [mpmath.mpf("0.05"), mpmath.mpf("0.05"), mpmath.mpf("0.03")]
        reference = mpmath.odefun(lambda t, y: [sb2 + sw2 * erf_gd(y[0]), sb2 + sw2 * erf_gd(y[1]),
                                                sb2 + sw2 * erf_g(*y)], 0, y0)(mpmath.mpf("0.5"))
        problem = _problem("erf", 1.25, 0.05, K0_PAIR, "offdiagonal", 1.0, 20)
        flow = _Flow(problem.pair_flow, mpmath.mpf(10) ** -19)
        ours = flow.advance([*y0, mpmath.mpf(0)], mpmath.mpf("0.5"))
        assert max(abs(a - b) for a, b in zip(ours, reference, strict=False)) < 1e-17


def test_relu_offdiagonal_has_no_interior_optimum():
    result = continuum_optimum("relu", SW2_, SB2_, K0_PAIR, response="offdiagonal", t_max=4.0,
                               dps=20)
    assert result.t_star is None and "still growing" in result.reason


# -- discrete ResNet against the continuum --------------------------------------------------
def test_discrete_resnet_approaches_the_continuum(erf_diag, erf_pair):
    # plain mpmath loop of K <- K + rho^2 (sb2 + sw2 G(K)), chi *= 1 + rho^2 sw2 G'(K)
    depth = 4000
    with mp.workdps(20):
        sw2, sb2 = mpmath.mpf("1.25"), mpmath.mpf("0.05")
        rho2 = erf_diag.t_star / depth
        q, ln_chi = mpmath.mpf("0.05"), mpmath.mpf(0)
        for _ in range(depth):
            ln_chi += mpmath.log(1 + rho2 * sw2 * erf_gd1(q))
            q += rho2 * (sb2 + sw2 * erf_gd(q))
        diag = mpmath.exp(ln_chi) * erf_gd1(q)
        rho2 = erf_pair.t_star / depth
        a = b = mpmath.mpf("0.05")
        k, ln_chi = mpmath.mpf("0.03"), mpmath.mpf(0)
        for _ in range(depth):
            ln_chi += mpmath.log(1 + rho2 * sw2 * erf_gk(a, b, k))
            a, b, k = (a + rho2 * (sb2 + sw2 * erf_gd(a)), b + rho2 * (sb2 + sw2 * erf_gd(b)),
                       k + rho2 * (sb2 + sw2 * erf_g(a, b, k)))
        pair = mpmath.exp(ln_chi) * erf_gk(a, b, k)
    print("L = 4000: chi_out discrete / continuum - 1:",
          mpmath.nstr(diag / erf_diag.chi_out - 1, 3), mpmath.nstr(pair / erf_pair.chi_out - 1, 3))
    assert abs(diag / erf_diag.chi_out - 1) < 1e-3
    assert abs(pair / erf_pair.chi_out - 1) < 1e-3


# -- quadrature activations -----------------------------------------------------------------
def test_tanh_diagonal_quadrature_path():
    result = continuum_optimum("tanh", SW2_, SB2_, Q0, dps=15)
    print("tanh diagonal sqrt(t*) =", mpmath.nstr(result.sqrt_tstar, 15))
    assert result.converged and abs(result.residual) < 1e-12
    # independent: the condition with G_d'' from mpmath.diff of the quadrature G_d'
    from symfield.precision import mp_expectations

    moments = mp_expectations("tanh", 25)
    with mp.workdps(25):
        sw2, sb2, q = mpmath.mpf("1.25"), mpmath.mpf("0.05"), result.K_star
        gd1 = moments.G_d_q(q)
        gd2 = mpmath.diff(moments.G_d_q, q)
        condition = gd2 / gd1 * (sb2 + sw2 * moments.G_d(q)) + sw2 * gd1
        assert abs(condition) < 1e-10


# -- input errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, parameter", [
    ({"response": "both"}, "response"),
    ({"response": "offdiagonal"}, "K0"),
])
def test_bad_input_names_the_parameter(kwargs, parameter):
    with pytest.raises(SpecError) as error:
        continuum_optimum("erf", SW2_, SB2_, Q0, **kwargs)
    assert error.value.parameter == parameter


def test_bad_variances():
    with pytest.raises(SpecError):
        continuum_optimum("erf", 0.0, SB2_, Q0)
    with pytest.raises(SpecError):
        continuum_optimum("erf", SW2_, -1.0, Q0)


def test_offdiagonal_continuum_of_a_quadrature_family_is_refused_with_a_reason():
    """The coupled flow over mpmath pair quadratures ran for minutes without a word (tanh);
    it is refused with the reason instead of hanging."""
    result = continuum_optimum("tanh", SW2_, SB2_, [[0.05, 0.03], [0.03, 0.05]],
                               response="offdiagonal", dps=15)
    assert result.sqrt_tstar is None and "mpmath pair quadratures" in result.reason
