"""One-loop expansion of the action (THEORY.md section 6) against independent expansions.

* The general causal action, expanded by Wick's theorem, gives the structured
  form V = A Q A^T, N<dC> = A[(1/2) H:V + T] that the numeric code assembles.
* The full action S[C, Ct] of small nets (L <= 3, P = 1, readout included),
  expanded numerically to one loop (Hessian inverse and the cubic vertex at the
  saddle, Isserlis), against the engine's per-layer assembly, entry by entry.
  The activation phi(x) = exp(x/2) has every Gaussian moment in closed form
  (E exp(a.u) = exp(a^T K a / 2)), so no quadrature enters the reference.
* The mixed propagator <dC dCt> of the action equals the chain of layer-map
  Jacobians that symfield.response derives.
* The generated moments against scipy quadrature (independent code).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from scipy import integrate, special

from symfield.action import (
    BETA,
    FFNET,
    G_4,
    G_D,
    GAMMA,
    RESNET,
    RHO,
    SB2,
    SB2_OUT,
    SW2,
    SW2_OUT,
    Action,
)
from symfield.expansion import (
    derive_one_loop_structure,
    expand_action,
    field_cumulants,
    loop_expansion,
)
from symfield.gaussian import KAA, KAB, KBB, Q
from symfield.nlo import MomentProvider, moments_for, one_loop
from symfield.response import derive_response_map
from symfield.saddle import derive_layer_map
from symfield.spec import NetworkSpec

# ------------------------------------------------------------ general structure


@pytest.mark.parametrize("kind", ["resnet", "ffnet"])
def test_general_causal_action_gives_the_structured_form(kind):
    s = derive_one_loop_structure(3, kind)
    e = s.expansion
    assert (e.cov - s.V).applyfunc(sp.expand) == sp.zeros(3, 3)
    # <dC dCt> is the response propagator A = (I - R)^(-1); <dCt dCt> = 0 (causality)
    assert (e.mixed - s.A).applyfunc(sp.expand) == sp.zeros(3, 3)
    assert e.conjugate == sp.zeros(3, 3)
    assert (e.mean - s.mean).applyfunc(sp.expand) == sp.zeros(3, 1)
    # the third cumulant of f never contributes at one loop
    assert not any(m.has(sp.Symbol("kappa3")) for m in e.mean)
    if kind == "ffnet":
        assert s.T == sp.zeros(3, 1)  # the noise diagram vanishes for the FFNet
    else:
        # ... and not for the ResNet; its equal-time piece dQ_12/dC_1 (A_11 = 1) is there
        assert s.T[1] == sp.Symbol("dQ_12_1")
        assert s.T[2] != 0


def test_tadpole_alone_is_not_the_mean_shift_of_a_causal_resnet_action():
    s = derive_one_loop_structure(3, "resnet")
    tadpole_only = s.A * s.tadpole
    assert (s.expansion.mean - tadpole_only).applyfunc(sp.expand) != sp.zeros(3, 1)


# ------------------------------------------------------------ full action, L <= 3


def _g4_exp(*entries):
    """E[prod_i exp(u_i / 2)] = exp(1^T Sigma 1 / 8); entries: upper triangle, row by row."""
    index = [(i, j) for i in range(4) for j in range(i, 4)]
    return sp.exp(sum((1 if i == j else 2) * v for (i, j), v in zip(index, entries,
                                                                      strict=True)) / 8)


class ExpMoments(MomentProvider):
    """phi = exp(x/2): g = phi^2 = exp(x); E exp(x) = exp(v/2), E exp(x + y) = exp((va+vb+2c)/2)."""

    def one_dim(self, kind, v):
        m = np.exp(np.asarray(v) / 2)
        return m, m / 2, m / 4

    def pair(self, kind_i, kind_j, va, vb, c):
        M = np.exp((va + vb + 2 * c) / 2)
        return M, M / 2, M / 2, M


VALUES = {SW2: sp.Rational(5, 4), SB2: sp.Rational(1, 20), SW2_OUT: sp.Rational(3, 2),
          SB2_OUT: sp.Rational(1, 10), RHO: sp.Rational(3, 5)}


@pytest.mark.parametrize("net", ["ffnet", "resnet"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_engine_equals_the_expanded_full_action(net, depth):
    process = FFNET if net == "ffnet" else RESNET
    action = Action(process, 1, depth, readout=True, order=2)
    exact = action.S.replace(G_4, _g4_exp).replace(G_D, lambda v: sp.exp(v / 2))
    action.__dict__["S"] = exact  # the cached property, with the moments of exp(x/2)
    values = {**VALUES, action.K0[0, 0]: sp.Rational(3, 10)}
    reference = expand_action(action, values, digits=30)
    spec = NetworkSpec(net=net, activation="erf", sw2=1.25, sb2=0.05, depth=depth,
                       rho=0.6 if net == "resnet" else None, sw2_out=1.5, sb2_out=0.1)
    engine = one_loop(spec, 0.3, ExpMoments(), hidden=False)
    V = np.array(reference.cov.tolist(), dtype=float)
    mean = np.array(reference.mean.tolist(), dtype=float).ravel()
    np.testing.assert_allclose(engine.V, V, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(engine.shift, mean, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(engine.A, np.array(reference.mixed.tolist(), dtype=float),
                               rtol=1e-11, atol=1e-13)
    if net == "resnet" and depth >= 2:  # the noise diagram matters
        assert np.max(np.abs(engine.shift - engine.tadpole_only)) > 0.1 * np.max(
            np.abs(engine.shift))


def test_cumulants_of_W_are_mean_and_noise_covariance():
    action = Action(RESNET, 1, 2, readout=False, order=2)
    mu, Qm = field_cumulants(action)
    assert sp.simplify(mu[0] - (SB2 + SW2 * G_D(action.K0[0, 0]))) == 0
    # the series holds both orderings of the (permutation-symmetric) four-point moment
    both = (action.covariance(1, (0, 0), 2, (0, 0)) + action.covariance(2, (0, 0), 1, (0, 0)))
    assert sp.simplify(Qm[0, 1] - both / 2) == 0
    assert Qm[0, 1] != 0  # the ResNet's layers share the residual stream


@pytest.mark.parametrize("process", [RESNET, FFNET], ids=["resnet", "ffnet"])
def test_mixed_propagator_is_the_response_chain(process):
    """N <dC^(l) dCt^(m)> from the Hessian = the chain of the spine's layer Jacobians."""
    depth = 3
    action = Action(process, 1, depth, readout=True, order=1)
    point = {ct: 0 for ct in action.field_symbols("Ct")}
    point.update(action.solve_saddle())
    for _ in range(depth + 1):
        point = {k: sp.sympify(v).subs(point) for k, v in point.items()}
    loop = loop_expansion(action.S, action.field_symbols("C"), action.field_symbols("Ct"),
                          point, simplify=sp.expand)
    sigma = action.variances([c.subs(point) for c in action.C])
    layer, response = derive_layer_map(), derive_response_map()
    net = {GAMMA: process.gamma, BETA: process.beta}
    J = [response.diag_q.subs(net).subs(Q, s[0, 0]) for s in sigma]  # dSigma^(j+1)/dSigma^(j)
    beta2, gamma2 = process.beta**2, process.gamma**2
    assert sp.simplify(layer.diag.subs(net).diff(Q) - response.diag_q.subs(net)) == 0
    for l in range(depth + 1):
        for m in range(depth + 1):
            if m > l:
                expected = 0
            elif m == l:
                expected = 1
            else:
                # dC^(l+1)/dSigma^(l) ...: the readout (l = depth) has its own Jacobian
                head = (response.readout_diag_q.subs(Q, sigma[l][0, 0]) if l == depth
                        else (J[l] - gamma2) / beta2)
                chain = sp.Mul(*[J[j] for j in range(m + 1, l)])
                expected = head * chain * beta2
            assert sp.expand(loop.mixed[l, m] - expected) == 0, (l, m)


# ------------------------------------------------------------ moments vs scipy


def _dblquad(f, g, va, vb, c):
    r = c / np.sqrt(va * vb)
    s = np.sqrt(max(1 - r * r, 0.0))

    def integrand(z2, z1):
        x = np.sqrt(va) * z1
        y = np.sqrt(vb) * (r * z1 + s * z2)
        return f(x) * g(y) * np.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * np.pi)

    return integrate.dblquad(integrand, -12, 12, -12, 12, epsabs=1e-13, epsrel=1e-12)[0]


def _erf2(x):
    return special.erf(x) ** 2


def _erf2_d1(x):  # d/dx erf(x)^2, typed from the definition of erf
    return 4 * np.exp(-x * x) * special.erf(x) / np.sqrt(np.pi)


def _relu2(x):
    return np.maximum(x, 0.0) ** 2


@pytest.mark.parametrize("va,vb,c", [(0.4, 0.7, 0.3), (2.5, 3.1, 2.7), (6.0, 6.0, 6.0)])
def test_erf_pair_moments_against_scipy(va, vb, c):
    gen = moments_for("erf")
    M, M_va, M_vb, M_k = gen.pair("phi2", "phi2", va, vb, c)
    assert M == pytest.approx(_dblquad(_erf2, _erf2, va, vb, c), rel=1e-9)
    # Price: dM/dc = E[g'(x) g'(y)]
    assert M_k == pytest.approx(_dblquad(_erf2_d1, _erf2_d1, va, vb, c), rel=1e-8)
    # partials in the variances against central differences of the same moment
    h = 1e-4
    if c < min(va, vb):
        fd = (gen.pair("phi2", "phi2", va + h, vb, c)[0] - gen.pair("phi2", "phi2", va - h,
                                                                     vb, c)[0]) / (2 * h)
        assert M_va == pytest.approx(fd, rel=1e-6)
    M2 = gen.pair("phi2", "x2", va, vb, c)[0]
    assert M2 == pytest.approx(_dblquad(_erf2, np.square, va, vb, c), rel=1e-9)


def _arccos_kernel(degree, va, vb, c):
    """E[relu(x)^n relu(y)^n] for n = 1, 2: the arc-cosine kernels of Cho & Saul
    ("Kernel methods for deep learning", NIPS 22, 2009), J_1 and J_2."""
    t = np.arccos(np.clip(c / np.sqrt(va * vb), -1, 1))
    J = {1: np.sin(t) + (np.pi - t) * np.cos(t),
         2: 3 * np.sin(t) * np.cos(t) + (np.pi - t) * (1 + 2 * np.cos(t) ** 2)}[degree]
    return (va * vb) ** (degree / 2) * J / (2 * np.pi)


@pytest.mark.parametrize("va,vb,c", [(0.4, 0.7, 0.3), (2.5, 3.1, -1.2), (1.0, 1.0, 1.0)])
def test_relu_polar_moments_against_the_arccosine_kernels(va, vb, c):
    gen = moments_for("relu")
    M, M_va, M_vb, M_k = gen.pair("phi2", "phi2", va, vb, c)
    assert M == pytest.approx(_arccos_kernel(2, va, vb, c), rel=1e-12)
    # Price: dM/dc = E[(2 relu x)(2 relu y)]
    assert M_k == pytest.approx(4 * _arccos_kernel(1, va, vb, c), rel=1e-12)
    # Price's dM/dva = (1/2) E[2 H(x) relu(y)^2] against differences of the closed form
    h = 1e-5 * va
    if abs(c) < np.sqrt(va * vb) * 0.99:
        fd = (_arccos_kernel(2, va + h, vb, c) - _arccos_kernel(2, va - h, vb, c)) / (2 * h)
        assert M_va == pytest.approx(fd, rel=1e-7)
    else:  # c = sqrt(va vb): the moment of the diagonal, E relu(x)^4 = 3 v^2 / 2 at va = vb
        assert M_va + M_vb + M_k == pytest.approx(3 * va, rel=1e-12)


def test_one_dim_moments_against_scipy():
    for name, g in (("erf", _erf2), ("tanh", lambda x: np.tanh(x) ** 2)):
        gen = moments_for(name)
        for v in (0.3, 2.0, 9.0):
            ref = integrate.quad(lambda z, g=g, v=v: g(np.sqrt(v) * z) * np.exp(-z * z / 2)
                                 / np.sqrt(2 * np.pi), -40, 40, epsabs=1e-14, limit=400)[0]
            m, m1, _ = gen.one_dim("phi2", np.array([v]))
            assert m[0] == pytest.approx(ref, rel=1e-10), (name, v)
            h = 1e-5
            fd = (gen.one_dim("phi2", np.array([v + h]))[0][0]
                  - gen.one_dim("phi2", np.array([v - h]))[0][0]) / (2 * h)
            assert m1[0] == pytest.approx(fd, rel=1e-6), (name, v)


@pytest.mark.parametrize("process", [RESNET, FFNET], ids=["resnet", "ffnet"])
def test_mixed_propagator_two_inputs_is_the_readout_jacobian(process):
    """P = 2, one layer and the readout: <dC_out,ab dCt^(1)_cd> is the spine's readout
    Jacobian (entries (11, 12, 22)) times beta^2; the conjugate of an off-diagonal entry
    enters tr(Ct C) twice, so its column carries 1/2."""
    action = Action(process, 2, 1, readout=True, order=1)
    point = {ct: 0 for ct in action.field_symbols("Ct")}
    point.update(action.solve_saddle())
    for _ in range(3):
        point = {k: sp.sympify(v).subs(point) for k, v in point.items()}
    loop = loop_expansion(action.S, action.field_symbols("C"), action.field_symbols("Ct"),
                          point, simplify=sp.expand)
    sigma = action.variances([c.subs(point) for c in action.C])[1]
    r = derive_response_map()
    pair = {KAA: sigma[0, 0], KBB: sigma[1, 1], KAB: sigma[0, 1]}
    jac = sp.Matrix([
        [r.readout_diag_q.subs(Q, sigma[0, 0]), 0, 0],
        [r.readout_pair_qa.subs(pair, simultaneous=True),
         r.readout_pair_k.subs(pair, simultaneous=True),
         r.readout_pair_qb.subs(pair, simultaneous=True)],
        [0, 0, r.readout_diag_q.subs(Q, sigma[1, 1])]])
    weight = [1, sp.Rational(1, 2), 1]
    for i in range(3):
        for j in range(3):
            assert sp.expand(loop.mixed[3 + i, j] - jac[i, j] * process.beta**2 * weight[j]) == 0
            assert sp.expand(loop.mixed[i, j] - (weight[j] if i == j else 0)) == 0
            assert loop.mixed[i, 3 + j] == 0  # causality: the readout does not act back
