"""The mpmath reference path: closed forms against quadrature, propagation against hand loops.

(a) closed forms (SymPy, Price) against 2-D quadrature of the explicit density;
(b) the quadrature path of symfield.precision against the closed forms;
(c) propagate_mp against the recursion of THEORY.md sections 3-4 unrolled by hand
    with mpmath asin (no SymPy);
(d) chi and the response tensor against mp.diff of K^(L) in K^(0).
"""

from __future__ import annotations

import time

import mpmath
import numpy as np
import pytest
from mpmath import mp

from symfield.activations import resolve
from symfield.precision import (
    diag_quadrature,
    mp_expectations,
    pair_quadrature,
    phi_functions,
    propagate_mp,
)
from symfield.spec import NetworkSpec
from symfield.verify.quadrature import (
    DIAG_QUANTITIES,
    DIFF_QUANTITIES,
    PAIR_QUANTITIES,
    POINTS,
    check_closed_forms,
)

CLOSED = ("erf", "relu", "leaky_relu:0.2", "abs", "linear")
#: (K_aa, K_bb, correlation): near-collinear and anti-correlated inputs.
FAST_POINTS = (("0.7", "1.3", "0.999"), ("0.7", "1.3", "-0.7"))
SLOW_POINTS = POINTS + (
    ("0.05", "0.05", "0.6"), ("1", "1", "0"), ("4", "3", "0.9999"), ("0.3", "2", "-0.99"),
    ("10", "0.1", "0.5"),
)


def _rel(a: object, b: object) -> mpmath.mpf:
    a, b = mpmath.mpf(a), mpmath.mpf(b)
    return abs(a - b) / (abs(b) if b else 1)


# -- (a) closed forms against 2-D quadrature of the explicit density ------------------------
# abs and the identity are the ReLU family's closed form at alpha = -1, 1: one point each
# here (the slow grid has all of them at every point).
@pytest.mark.parametrize("name,points", [
    ("erf", FAST_POINTS), ("relu", FAST_POINTS), ("leaky_relu:0.2", FAST_POINTS),
    ("abs", FAST_POINTS[1:]), ("linear", FAST_POINTS[:1])])
def test_closed_forms_match_quadrature(name: str, points: tuple) -> None:
    quantities = PAIR_QUANTITIES + DIAG_QUANTITIES + ("G_d_q:diff",)
    rows = check_closed_forms((name,), dps=30, points=points, quantities=quantities)
    assert {r.quantity for r in rows} == set(quantities)
    for row in rows:
        assert row.points == len(points)
        assert row.worst_rel_err < 1e-20, row


@pytest.mark.slow
@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_match_quadrature_grid(name: str) -> None:
    quantities = PAIR_QUANTITIES + DIAG_QUANTITIES + DIFF_QUANTITIES
    for row in check_closed_forms((name,), dps=30, points=SLOW_POINTS, quantities=quantities):
        assert row.worst_rel_err < 1e-20, row


def test_quadrature_check_rejects_families_without_closed_form() -> None:
    with pytest.raises(ValueError, match="no closed form"):
        check_closed_forms(("tanh",), points=FAST_POINTS[:1], quantities=("G_d",))


# -- (b) the quadrature path against the closed-form path ---------------------------------
def _kab(kaa: str, kbb: str, corr: str) -> mpmath.mpf:
    with mp.workdps(40):
        return mpmath.mpf(corr) * mp.sqrt(mpmath.mpf(kaa) * mpmath.mpf(kbb))


@pytest.mark.parametrize("point", FAST_POINTS + (("0.8", "0.8", "1"), ("2", "0.5", "-1")))
def test_quadrature_path_matches_closed_forms(point: tuple[str, str, str]) -> None:
    exact = mp_expectations("erf", 30)
    forced = mp_expectations("erf", 30, kind="quadrature")
    assert (exact.kind, forced.kind) == ("exact", "quadrature")
    kaa, kbb, _ = point
    kab = _kab(*point)
    for got, want in zip(forced.pair(kaa, kbb, kab), exact.pair(kaa, kbb, kab), strict=True):
        assert _rel(got, want) < 1e-20
    for q in (kaa, kbb):
        for got, want in zip(forced.diag(q), exact.diag(q), strict=True):
            assert _rel(got, want) < 1e-20


def test_quadrature_path_kinked_user_activation() -> None:
    """A user's Piecewise ReLU: by parts (SymPy's phi'' of a Piecewise has no delta)."""
    phi = phi_functions(resolve("expr:Piecewise((x, x > 0), (0, True))"))
    assert not phi.price and not phi.smooth
    exact = mp_expectations("relu", 30)
    with mp.workdps(30):
        kab = _kab("0.7", "1.3", "-0.7")
        got = pair_quadrature(phi, mpmath.mpf("0.7"), mpmath.mpf("1.3"), kab)
        got_diag = diag_quadrature(phi, mpmath.mpf("0.7"))
    for a, b in zip(got, exact.pair("0.7", "1.3", kab), strict=True):
        assert _rel(a, b) < 1e-20
    for a, b in zip(got_diag, exact.diag("0.7"), strict=True):
        assert _rel(a, b) < 1e-20
    with pytest.raises(ValueError, match="breaks at u = 0"):
        phi_functions(resolve("expr:Abs(x - 1)"))


def test_tanh_quadrature_consistency() -> None:
    """tanh has no closed form: 1-D mp.quad for G_d, and G(q,q,q) = G_d(q) with its chain rule."""
    tanh = mp_expectations("tanh", 30)
    assert tanh.kind == "quadrature"
    q = mpmath.mpf("1.7")
    with mp.workdps(30):
        reference = mp.quad(lambda z: mp.tanh(mp.sqrt(q) * z) ** 2 * mp.npdf(z),
                            [-mp.inf, 0, mp.inf])
        slope = mp.diff(lambda x: mp.quad(lambda z: mp.tanh(mp.sqrt(x) * z) ** 2 * mp.npdf(z),
                                          [-mp.inf, 0, mp.inf]), q)
    g_d, g_d_q = tanh.diag(q)
    assert _rel(g_d, reference) < 1e-22
    assert _rel(g_d_q, slope) < 1e-20
    g, g_k, g_qa, g_qb = tanh.pair(q, q, q)  # c = 1: a 1-D integral
    assert _rel(g, g_d) < 1e-25
    with mp.workdps(30):  # d/dq G(q, q, q) = G_k + G_qa + G_qb
        assert _rel(g_k + g_qa + g_qb, g_d_q) < 1e-22


def test_expectations_cached_and_precision_restored() -> None:
    before = mp.prec
    first = mp_expectations("erf", 30)
    assert mp_expectations(resolve("erf"), 30) is first
    assert mp_expectations("erf", 40) is not first
    first.G("0.5", "0.7", "0.2")
    assert mp.prec == before
    with pytest.raises(ValueError, match="kind"):
        mp_expectations("tanh", 30, kind="exact")


# -- (c) propagation against THEORY.md's recursion, unrolled by hand ------------------------
def _erf_g(kaa: mpmath.mpf, kbb: mpmath.mpf, kab: mpmath.mpf) -> mpmath.mpf:
    """THEORY.md section 3: (2/pi) asin(2 K_ab / sqrt((1 + 2 K_aa)(1 + 2 K_bb)))."""
    return 2 / mp.pi * mp.asin(2 * kab / mp.sqrt((1 + 2 * kaa) * (1 + 2 * kbb)))


def _hand_loop(net: str, K0: list[list[str]], depth: int, rho: str, sw2: str, sb2: str,
               sw2_out: str, sb2_out: str) -> dict[str, list[list[mpmath.mpf]]]:
    """K^(l) = gamma K^(l-1) + beta^2 (sb2 + sw2 G(K^(l-1))); chi as products of dG/dK."""
    rho2, sw2, sb2 = mpmath.mpf(rho) ** 2, mpmath.mpf(sw2), mpmath.mpf(sb2)
    size = len(K0)
    K = [[mpmath.mpf(v) for v in row] for row in K0]
    chi = [[mpmath.mpf(1)] * size for _ in range(size)]

    def slope(K: list[list[mpmath.mpf]], a: int, b: int) -> mpmath.mpf:
        if a == b:  # d/dq of G(q, q, q)
            return mp.diff(lambda q: _erf_g(q, q, q), K[a][a])
        return mp.diff(lambda k: _erf_g(K[a][a], K[b][b], k), K[a][b])

    for _ in range(depth):
        new = [[_erf_g(K[a][a], K[b][b], K[a][b]) for b in range(size)] for a in range(size)]
        for a in range(size):
            for b in range(size):
                if net == "resnet":  # THEORY.md 3 and 4: chi = prod (1 + rho^2 sw2 dG/dK)
                    chi[a][b] *= 1 + rho2 * sw2 * slope(K, a, b)
                    new[a][b] = K[a][b] + rho2 * (sb2 + sw2 * new[a][b])
                else:
                    chi[a][b] *= sw2 * slope(K, a, b)
                    new[a][b] = sb2 + sw2 * new[a][b]
        K = new
    out = [[mpmath.mpf(sb2_out) + mpmath.mpf(sw2_out) * _erf_g(K[a][a], K[b][b], K[a][b])
            for b in range(size)] for a in range(size)]
    chi_out = [[mpmath.mpf(sw2_out) * slope(K, a, b) * chi[a][b] for b in range(size)]
               for a in range(size)]
    return {"K": K, "chi": chi, "K_out": out, "chi_out": chi_out}


@pytest.mark.parametrize("net", ["resnet", "ffnet"])
def test_propagation_matches_hand_loop(net: str) -> None:
    K0 = [["0.05", "0.03", "-0.01"], ["0.03", "0.06", "0.02"], ["-0.01", "0.02", "0.4"]]
    rho = 0.3 if net == "resnet" else None
    spec = NetworkSpec(net=net, activation="erf", sw2=1.25, sb2=0.05, depth=3, rho=rho,
                       sw2_out=1.5, sb2_out=0.1)
    result = propagate_mp(spec, K0, dps=30)
    with mp.workdps(40):
        hand = _hand_loop(net, K0, 3, "0.3" if rho else "1", "1.25", "0.05", "1.5", "0.1")
    for key in ("K", "chi", "K_out", "chi_out"):
        for a in range(3):
            for b in range(3):
                assert _rel(result[key][a][b], hand[key][a][b]) < 1e-25, (key, a, b)


def test_propagation_layers_and_shapes() -> None:
    spec = NetworkSpec(net="resnet", activation="relu", sw2=2.0, sb2=0.0, depth=4, rho=0.5)
    result = propagate_mp(spec, np.array([[1.0, 0.5], [0.5, 2.0]]), dps=20, tensor=True,
                          layers=True)
    assert len(result["K_layers"]) == len(result["chi_layers"]) == 5
    assert result["K_layers"][0][0][1] == mpmath.mpf("0.5")
    assert result["K_layers"][-1] == result["K"]
    assert result["chi_layers"][-1] == result["chi"]
    tensor = result["response_tensor"]
    assert len(tensor) == len(tensor[0][0][0]) == 2
    assert tensor[0][1][0][1] == tensor[1][0][1][0] == result["chi"][0][1]
    assert tensor[0][0][1][1] == 0


def test_deep_propagation_is_fast_and_matches_generated_code() -> None:
    from symfield.kernel import compute

    spec = NetworkSpec(net="resnet", activation="erf", sw2=1.25, sb2=0.05, depth=10_000,
                       rho=0.05)
    K0 = np.array([[0.05, 0.03], [0.03, 0.05]])
    start = time.process_time()
    result = propagate_mp(spec, K0, dps=30)
    assert time.process_time() - start < 60
    generated = compute(spec, K0)
    for key in ("K", "chi", "K_out", "chi_out"):
        np.testing.assert_allclose(np.array(result[key], dtype=float), generated[key],
                                   rtol=1e-10)


# -- (d) responses against finite differences (mp.diff) at 50 digits ------------------------
def _finite_differences(spec: NetworkSpec, K0: list[list[str]], c: int, d: int) -> dict:
    """mp.diff of every entry of K^(L) and K_out in K0_cd (moved with K0_dc)."""
    runs: dict[mpmath.mpf, dict] = {}

    def run(x: mpmath.mpf) -> dict:
        if x not in runs:
            K = [row[:] for row in K0]
            K[c][d] = K[d][c] = x
            runs[x] = propagate_mp(spec, K, dps=50)
        return runs[x]

    size = len(K0)
    return {key: [[mp.diff(lambda x, a=a, b=b, key=key: run(x)[key][a][b], mpmath.mpf(K0[c][d]))
                   for b in range(size)] for a in range(size)] for key in ("K", "K_out")}


@pytest.mark.parametrize("net,activation", [("resnet", "erf"), ("ffnet", "leaky_relu:0.2")])
def test_responses_match_finite_differences(net: str, activation: str) -> None:
    K0 = [["0.5", "0.2", "-0.1"], ["0.2", "0.7", "0.3"], ["-0.1", "0.3", "0.9"]]
    spec = NetworkSpec(net=net, activation=activation, sw2=1.5, sb2=0.1, depth=4,
                       rho=0.4 if net == "resnet" else None, sw2_out=1.3, sb2_out=0.2)
    result = propagate_mp(spec, K0, dps=50, tensor=True)
    size = len(K0)
    with mp.workdps(50):
        for c in range(size):
            for d in range(c, size):
                fd = _finite_differences(spec, K0, c, d)
                for key, tensor, chi in (("K", "response_tensor", "chi"),
                                         ("K_out", "response_tensor_out", "chi_out")):
                    for a in range(size):
                        for b in range(size):
                            want, got = fd[key][a][b], result[tensor][a][b][c][d]
                            assert abs(want - got) <= 1e-15 * max(abs(want), 1), (key, a, b, c, d)
                            assert got == result[tensor][a][b][d][c]
                            if {a, b} == {c, d}:
                                assert abs(result[chi][a][b] - want) <= 1e-15 * abs(want)
