"""Price's theorem and the identity table: derived closed forms, checked independently."""

import mpmath
import pytest
import sympy as sp

from symfield.activations import ALPHA, FAMILIES, derive, resolve
from symfield.gaussian import (
    KAA,
    KAB,
    KBB,
    NoClosedForm,
    Q,
    X,
    expect_1d,
    expect_pair,
    integrate_from_zero,
)
from symfield.numerics import DELTA, stable_form


def test_erf_is_the_arcsine_kernel():
    # Williams (1997): E[erf(u_a) erf(u_b)] = (2/pi) asin(2K_ab / sqrt((1+2K_aa)(1+2K_bb)))
    G = derive(FAMILIES["erf"]).pair
    expected = 2 / sp.pi * sp.asin(2 * KAB / sp.sqrt((1 + 2 * KAA) * (1 + 2 * KBB)))
    point = {KAA: sp.Rational(3, 10), KBB: sp.Rational(7, 10), KAB: sp.Rational(1, 5)}
    assert abs(sp.N((G - expected).subs(point), 40)) < 1e-35


def test_relu_is_the_arccosine_kernel():
    # Cho & Saul (2009): sqrt(K_aa K_bb)/(2 pi) (sin t + (pi - t) cos t), t = acos(c)
    G = derive(FAMILIES["leaky_relu"]).pair.subs(ALPHA, 0)
    s = sp.sqrt(KAA * KBB)
    t = sp.acos(KAB / s)
    expected = s / (2 * sp.pi) * (sp.sin(t) + (sp.pi - t) * sp.cos(t))
    for c in (sp.Rational(-9, 10), 0, sp.Rational(1, 3), sp.Rational(999, 1000)):
        point = {KAA: sp.Rational(1, 2), KBB: 2, KAB: c}
        assert abs(sp.N((G - expected).subs(point), 40)) < 1e-35


@pytest.mark.parametrize("name, expected", [
    ("linear", KAB),
    ("abs", 2 / sp.pi * (sp.sqrt(KAA * KBB - KAB**2) + KAB * sp.asin(KAB / sp.sqrt(KAA * KBB)))),
])
def test_family_members(name, expected):
    activation = resolve(name)
    values = {ALPHA: sp.nsimplify(activation.param_values["alpha"])}
    G = derive(activation.family).pair.subs(values)
    point = {KAA: sp.Rational(2, 3), KBB: sp.Rational(5, 4), KAB: sp.Rational(-1, 2)}
    assert abs(sp.N((G - expected).subs(point), 40)) < 1e-35


def test_one_dimensional_table_against_mpmath():
    with mpmath.workdps(30):
        q = mpmath.mpf(7) / 10
        for f in (sp.Heaviside(X), X * sp.Heaviside(X), sp.Abs(X), sp.exp(-X**2), X**4):
            g = sp.lambdify(X, f, modules="mpmath")
            ref = mpmath.quad(lambda z, g=g: mpmath.npdf(z) * g(mpmath.sqrt(q) * z),
                              [-mpmath.inf, 0, mpmath.inf])
            value = sp.N(expect_1d(f).subs(Q, sp.Rational(7, 10)), 30)
            assert abs(value - ref) < 1e-25, f


def test_no_closed_form_for_tanh():
    with pytest.raises(NoClosedForm):
        expect_pair(sp.tanh(X), sp.tanh(X))
    assert derive(FAMILIES["tanh"]).kind == "quadrature"


def test_antiderivatives_are_checked_by_differentiation():
    integrand = 1 / sp.sqrt(4 - 9 * KAB**2)
    result = integrate_from_zero(integrand, KAB)
    assert sp.simplify(sp.diff(result, KAB) - integrand) == 0
    with pytest.raises(NoClosedForm):
        integrate_from_zero(sp.exp(KAB**2), KAB)


def test_stable_form_removes_the_gram_cancellation():
    expectations = derive(FAMILIES["leaky_relu"])
    partials = expectations.pair_partials()
    stable = stable_form(partials["G_qa"])
    assert DELTA in stable.free_symbols and KAB not in stable.free_symbols
    # no 0/0 at correlation 1: Delta -> 0 gives a finite limit
    assert stable.subs(DELTA, 0) == 0
    # and the rewrite is an identity
    point = {KAA: sp.Rational(1, 3), KBB: sp.Rational(4, 5), KAB: sp.Rational(1, 7)}
    delta = point[KAA] * point[KBB] - point[KAB] ** 2
    difference = (stable.subs(DELTA, delta) - partials["G_qa"]).subs(point)
    assert abs(sp.N(difference, 40)) < 1e-35
    # erf's asin argument never reaches 1: left alone
    erf = derive(FAMILIES["erf"]).pair
    assert stable_form(erf).has(sp.asin)
