"""Order to chaos (issue 10 section 1): the seed's claims as tests.

Referees are independent of the derived maps: mpmath quadrature of
E[phi(u)^2] and E[phi'(u)^2] written here from phi (phi' by mpmath.diff), the
generated FFNet recursion iterated to depth, the seed's own ReLU recursion
``G' = sb2 + sw2 G / 2``, and a Monte Carlo of wide networks.
"""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
import sympy as sp

from symfield.action import SB2, SW2
from symfield.cli import main
from symfield.criticality import CRITICAL_TOL, analyse, derive_maps, scan
from symfield.ir import MOMENTS

PHI = {"tanh": mpmath.tanh, "erf": mpmath.erf,
       "gelu": lambda x: x * (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2}


def gauss(f, q):
    """E[f(u)], u ~ N(0, q), by mpmath quadrature (30 digits)."""
    with mpmath.workdps(30):
        s = mpmath.sqrt(q)
        return mpmath.quad(lambda z: f(s * z) * mpmath.npdf(z), [-mpmath.inf, 0, mpmath.inf])


# -- the maps are the spine's, differentiated -------------------------------------------
def test_maps_come_from_the_layer_map():
    m = derive_maps()
    G, G_k, G_d, G_d_q = (MOMENTS[n] for n in ("G", "G_k", "G_d", "G_d_q"))
    assert sp.simplify(m.variance - (SB2 + SW2 * G_d)) == 0
    assert sp.simplify(m.chi_q - SW2 * G_d_q) == 0
    # the chain rule along K_ab = c q* cancels the 1/q* of the correlation map
    assert sp.simplify(m.chi_c - SW2 * G_k) == 0
    assert sp.simplify(m.chi_1 - SW2 * G_k) == 0


# -- ReLU: the seed's critical point, semi-critical line, no fixed point ----------------
def test_relu_critical_point_is_2_0():
    r = analyse("relu", 2.0, 0.0)
    assert r["phase"] == "critical" and abs(r["chi_1"] - 1) <= CRITICAL_TOL
    assert r["xi_c"] is None and "xi_c_reason" in r
    for sw2, phase in ((1.9, "ordered"), (1.99, "ordered")):
        assert analyse("relu", sw2, 0.0)["phase"] == phase
    # ordered with sb2 > 0: the seed's recursion G' = sb2 + sw2 G / 2 has q* = sb2 / (1 - sw2/2)
    for sw2, sb2 in ((1.0, 0.3), (1.5, 0.1), (1.9, 0.05)):
        r = analyse("relu", sw2, sb2)
        assert r["q_star"] == pytest.approx(sb2 / (1 - sw2 / 2), rel=1e-12)
        assert r["chi_1"] == pytest.approx(sw2 / 2, rel=1e-12) and r["phase"] == "ordered"


def test_relu_without_fixed_point():
    r = analyse("relu", 2.0, 0.1)  # semi-critical line: linear growth
    assert r["q_star"] is None and "linearly" in r["reason"]
    assert r["phase"] == "semi-critical" and r["chi_q"] == pytest.approx(1.0, abs=1e-12)
    r = analyse("relu", 2.5, 0.1)
    assert r["q_star"] is None and "without bound" in r["reason"]
    assert r["phase"] is None and r["chi_q"] == pytest.approx(1.25, rel=1e-12)


# -- independent referees for q* and chi_1 ----------------------------------------------
@pytest.mark.parametrize("activation,sw2,sb2", [("tanh", 1.5, 0.05), ("erf", 3.0, 0.05),
                                                ("gelu", 1.2, 0.2)])
def test_fixed_point_and_chi_1_against_mpmath(activation, sw2, sb2):
    r = analyse(activation, sw2, sb2)
    q, phi = r["q_star"], PHI[activation]
    assert sb2 + sw2 * gauss(lambda x: phi(x) ** 2, q) == pytest.approx(q, rel=1e-11)
    chi_1 = sw2 * gauss(lambda x: mpmath.diff(phi, x) ** 2, q)
    assert r["chi_1"] == pytest.approx(float(chi_1), rel=1e-10)
    # chi_q = dV/dq at q*, by a central difference of the referee's V
    h = mpmath.mpf(q) * mpmath.mpf("1e-8")
    def V(v):
        return sb2 + sw2 * gauss(lambda x: phi(x) ** 2, v)

    chi_q = (V(q + h) - V(q - h)) / (2 * h)
    assert r["chi_q"] == pytest.approx(float(chi_q), rel=1e-7)


def test_dps_polishing_agrees_with_float():
    f, m = analyse("erf", 1.5, 0.05), analyse("erf", 1.5, 0.05, dps=30)
    for key in ("q_star", "c_star", "chi_1", "chi_q", "chi_c", "xi_c"):
        assert isinstance(m[key], str) and len(m[key].replace(".", "")) >= 25
        assert float(m[key]) == pytest.approx(f[key], rel=1e-12)
    # the polished root solves the fixed-point equations to ~30 digits (mpmath referee)
    with mpmath.workdps(40):
        q, c = mpmath.mpf(m["q_star"]), mpmath.mpf(m["c_star"])
        w, b = mpmath.mpf("1.5"), mpmath.mpf("0.05")
        v = w * (2 / mpmath.pi) * mpmath.asin(2 * q / (1 + 2 * q)) + b
        assert abs(v - q) < mpmath.mpf("1e-25")
        mc = (w * (2 / mpmath.pi) * mpmath.asin(2 * c * q / (1 + 2 * q))
              + b) / q
        assert abs(mc - c) < mpmath.mpf("1e-25")


# -- chi_1 = 1 is where c* = 1 loses stability ------------------------------------------
def _iterate_correlation(activation, sw2, sb2, q, c0, depth):
    """Propagate K0 = q [[1, c0], [c0, 1]] with the generated FFNet recursion."""
    import importlib

    module = importlib.import_module(f"generated.{activation}")
    K = module.ffnet(np.array([[q, c0 * q], [c0 * q, q]]), sw2=sw2, sb2=sb2, depth=depth)["K"]
    return K[0, 1] / np.sqrt(K[0, 0] * K[1, 1])


@pytest.mark.parametrize("activation,sb2", [
    pytest.param("tanh", 0.05, marks=pytest.mark.slow),  # quadrature pair moments: ~20 s
    ("erf", 0.05), ("erf", 0.3)])
def test_chi_1_equals_one_separates_the_phases(activation, sb2):
    sw2 = np.linspace(0.5, 4.0, 36)
    s = scan(activation, sw2, sb2)
    chaotic = s["chi_1"] > 1
    assert chaotic.any() and (~chaotic).any()
    # one transition, ordered below it; c* < 1 exactly on the chaotic side
    assert np.all(np.diff(chaotic.astype(int)) >= 0)
    assert np.all(s["c_star"][chaotic] < 1) and np.all(s["c_star"][~chaotic] == 1)
    assert np.all(s["chi_c"][chaotic] < 1)  # the c* < 1 fixed point attracts
    # iterate the spine's recursion: on the ordered side c -> 1, on the chaotic side
    # c = 1 - 1e-6 leaves 1 and lands on c*
    i_ord, i_cha = np.flatnonzero(~chaotic)[-1], np.flatnonzero(chaotic)[0] + 3
    q = s["q_star"][i_ord]
    assert _iterate_correlation(activation, sw2[i_ord], sb2, q, 0.2, 1000) == pytest.approx(
        1.0, abs=1e-6)
    q, c_star = s["q_star"][i_cha], s["c_star"][i_cha]
    c_deep = _iterate_correlation(activation, sw2[i_cha], sb2, q, 1 - 1e-6, 1000)
    assert c_deep == pytest.approx(c_star, abs=1e-6)


@pytest.mark.parametrize("activation", [pytest.param("tanh", marks=pytest.mark.slow), "erf"])
def test_xi_c_diverges_at_the_transition(activation):
    # the critical sw2 at sb2 = 0.05, by bisection on chi_1 - 1
    lo, hi = 0.5, 3.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if scan(activation, mid, 0.05)["chi_1"] < 1 else (lo, mid)
    sw2_c = (lo + hi) / 2
    d = np.array([0.3, 0.1, 0.03, 0.01, 0.003])
    below, above = scan(activation, sw2_c - d, 0.05), scan(activation, sw2_c + d, 0.05)
    for side in (below, above):
        assert np.all(np.diff(side["xi_c"]) > 0)  # grows towards sw2_c
        assert side["xi_c"][-1] > 20 * side["xi_c"][0]
    assert np.all(below["c_star"] == 1) and np.all(above["c_star"] < 1)
    assert analyse(activation, sw2_c, 0.05)["phase"] == "critical"
    print(f"{activation}: sw2_c = {sw2_c:.12f} at sb2 = 0.05; xi_c below {below['xi_c']}, "
          f"above {above['xi_c']}")


# -- Monte Carlo: a wide FFNet lands on q*, c* -------------------------------------------
@pytest.mark.parametrize("activation,sw2,sb2", [("erf", 3.0, 0.05), ("relu", 1.5, 0.1)])
def test_wide_network_lands_on_the_fixed_point(activation, sw2, sb2):
    from symfield.simulate import simulate
    from symfield.spec import NetworkSpec

    r = analyse(activation, sw2, sb2)
    depth = 60
    spec = NetworkSpec(net="ffnet", activation=activation, sw2=sw2, sb2=sb2, depth=depth)
    res = simulate(spec, np.array([[1.0, 0.5], [0.5, 1.0]]), 2000, 64, seed=7)
    mean, err = res.K_mean[-1], res.K_stderr[-1]
    theory = r["q_star"] * np.array([[1, r["c_star"]], [r["c_star"], 1]])
    z = (mean - theory) / err
    print(f"{activation} sw2={sw2} sb2={sb2}: K^({depth}) z-scores {z[0, 0]:.2f} "
          f"{z[1, 1]:.2f} {z[0, 1]:.2f}")
    assert np.all(np.abs(z) < 4)


# -- command line ------------------------------------------------------------------------
def test_cli_json(capsys):
    assert main(["criticality", "--activation", "tanh", "--sw2", "1.5", "--sb2", "0.05",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("q_star", "c_star", "chi_1", "chi_q", "chi_c", "xi_q", "xi_c", "phase"):
        assert key in out
    assert out["phase"] == "ordered" and 0 < out["chi_1"] < 1
    assert out["xi_q"] == pytest.approx(-1 / np.log(out["chi_q"]))
    assert main(["criticality", "--activation", "relu", "--sw2", "2.5", "--sb2", "0.1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["q_star"] is None and out["reason"]


@pytest.mark.parametrize("flags,name", [(["--sw2", "-1"], "sw2"), (["--sb2", "nan"], "sb2"),
                                        (["--activation", "sigmoidish"], "activation"),
                                        (["--dps", "3"], "dps")])
def test_cli_bad_input(capsys, flags, name):
    assert main(["criticality", *flags, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err


# -- the phase diagram ------------------------------------------------------------------
def test_erf_grid_is_vectorised():
    import time

    w, b = np.meshgrid(np.linspace(0.05, 4.0, 200), np.linspace(0.0, 0.5, 200))
    start = time.perf_counter()
    s = scan("erf", w, b)
    seconds = time.perf_counter() - start
    assert seconds < 5.0, f"200 x 200 erf grid took {seconds:.1f} s"
    # spot checks against the one-point path (same numbers, vectorised or not)
    for i, j in ((0, 0), (37, 120), (150, 60), (199, 199)):
        r = analyse("erf", float(w[i, j]), float(b[i, j]))
        assert s["chi_1"][i, j] == pytest.approx(r["chi_1"], rel=1e-12)
        if r["q_star"]:
            assert s["q_star"][i, j] == pytest.approx(r["q_star"], rel=1e-12)
    # at sb2 = 0 the erf transition is where sw2 phi'(0)^2 = 1: sw2 = pi/4 (q* = 0 side)
    row = s["chi_1"][0]
    assert np.all((row > 1) == (w[0] > np.pi / 4))


def test_phase_diagram_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from symfield.figures import phase_diagram

    summary = phase_diagram(tmp_path, sizes={"tanh": 5, "erf": 30, "relu": 30})
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000
    assert summary["relu"]["chaotic_points"] == 0 and summary["relu"]["no_fixed_point"] > 0
    assert summary["erf"]["chaotic_points"] > 0 and summary["erf"]["no_fixed_point"] == 0


def test_dps_everywhere_and_the_q_zero_limit():
    # q* = 0 (tanh, sb2 = 0, sw2 < 1): chi_q = chi_1 = sw2 phi'(0)^2 = sw2 in the limit
    r = analyse("tanh", 0.8, 0.0, dps=25)
    assert float(r["q_star"]) == 0 and r["c_star"] is None and r["c_star_reason"]
    assert abs(mpmath.mpf(r["chi_1"]) - mpmath.mpf("0.8")) < mpmath.mpf("1e-20")
    assert abs(mpmath.mpf(r["chi_q"]) - mpmath.mpf("0.8")) < mpmath.mpf("1e-20")
    assert r["phase"] == "ordered"
    # no fixed point and the identity map: strings too
    assert analyse("relu", 2.5, 0.1, dps=20)["chi_q"].startswith("1.25000000000000000")
    r = analyse("relu", 2.0, 0.0, dps=20)
    assert r["q_star"] is None and r["chi_1"].startswith("1.0000000000000000000")


def test_quadrature_range_is_never_read_as_a_verdict():
    """Beyond the generated quadrature's trusted range the moments are NaN: the scan must
    neither read that as "q* = 0" (it did: GELU sw2 = 5 gave q* = 0, a negative xi_q)
    nor claim unbounded growth it cannot see; it refuses with the range named."""
    from symfield.kernel import NumericalError

    assert analyse("tanh", 1.5, 0.05)["q_star"] == pytest.approx(0.418, abs=1e-3)
    for activation, sw2 in (("gelu", 5.0), ("tanh", 1e6)):
        with pytest.raises(NumericalError, match="trusted range"):
            analyse(activation, sw2, 0.1)
    # exact families bracket up to Q_MAX and do state unbounded growth
    assert "without bound" in analyse("relu", 2.5, 0.1)["reason"]

