"""Hard inputs: correlation exactly 1 (duplicate inputs) and 1 - 1e-12, limits, --dps.

At c = 1 the ReLU-family kernels have a square-root singularity in the angle
theta = acos(c): a rounding of c to 1 - 1e-16 is an angle of 1.5e-8, which
moves dG/dK_ab by 2e-9 per layer. The loop therefore carries the Gram
determinant Delta = K_aa K_bb - K_ab^2 with its own derived map
(symfield.saddle.gram_map, symfield.numerics.stable_gram).
"""

import itertools
import json

import mpmath
import numpy as np
import pytest
import sympy as sp

from symfield.action import BETA, GAMMA
from symfield.activations import ALPHA, FAMILIES, resolve
from symfield.cli import main
from symfield.gaussian import KAA, KAB, KBB, Q
from symfield.ir import kernel_routine
from symfield.kernel import load_module
from symfield.numerics import (
    DELTA,
    EXCESS,
    EXCESS_M,
    GAP,
    GAP_M,
    SA,
    SB,
    gram_step,
    unfold_gram,
)
from symfield.precision import propagate_mp
from symfield.spec import NetworkSpec

KINKED = ("relu", "abs", "leaky_relu:0.2")
ACTIVATIONS = ("erf", *KINKED)
NETS = ("resnet", "ffnet")
#: 1 - 2^-40 (about 1 - 9.1e-13): exact in binary and as this decimal, so the float64
#: code and the mpmath reference see the same input kernel.
NEAR_ONE = "0.9999999999990905052982270717620849609375"


def _run(activation: str, net: str, K0: np.ndarray, sw2: float = 1.25, sb2: float = 0.05,
         depth: int = 50, **flags) -> dict:
    act = resolve(activation)
    kwargs = dict(sw2=sw2, sb2=sb2, depth=depth, **act.param_values, **flags)
    if net == "resnet":
        kwargs["rho"] = 0.3
    return load_module(act).NETS[net](K0, **kwargs)


def _spec(activation: str, net: str, sw2: float = 1.25, sb2: float = 0.05) -> NetworkSpec:
    return NetworkSpec(net, activation, sw2, sb2, 50, rho=0.3 if net == "resnet" else None)


# -- the derived Gram map -------------------------------------------------------------------
def test_gram_map_is_derived_and_exact_at_coincidence():
    routine = kernel_routine(FAMILIES["leaky_relu"])
    gram = routine.gram
    assert gram is not None
    (plus, _), (minus, _) = gram.args  # K_ab >= 0 (c -> 1) and K_ab < 0 (c -> -1)
    # at coinciding inputs (K_aa = K_bb, Delta = 0, so D = W = 0) every term vanishes
    # symbolically: Delta = 0 maps to exactly 0
    assert sp.expand(plus.subs({SB: SA, DELTA: 0, EXCESS: 0, GAP: 0})) == 0
    # at anti-aligned inputs (c = -1) only |x| in the FFNet (gamma = 0) maps them onto
    # coinciding ones, through a factor (alpha + 1)^2
    anti = sp.factor(minus.subs({SB: SA, DELTA: 0, EXCESS_M: 0, GAP_M: 0}))
    assert anti != 0 and sp.expand(anti.subs({ALPHA: -1, GAMMA: 0})) == 0
    assert sp.expand(anti.subs({ALPHA: -1, GAMMA: 1, BETA: sp.Rational(1, 3)})) != 0
    # and it is the derived K'_aa K'_bb - K'_ab^2 (helpers unfolded), at an arbitrary point
    derived, _ = gram_step(routine.pair["G"], routine.diag["G_d"])
    point = {KAA: sp.Rational(7, 10), KBB: sp.Rational(13, 10), KAB: sp.Rational(-1, 3)}
    point[DELTA] = point[KAA] * point[KBB] - point[KAB] ** 2
    others = sorted((derived.free_symbols | unfold_gram(gram).free_symbols) - set(point),
                    key=str)
    point.update({s: sp.Rational(2 + i, 5) for i, s in enumerate(others)})
    assert abs(sp.N(derived.xreplace(point) - unfold_gram(gram).xreplace(point), 40)) < 1e-35
    # erf's closed form has no stable rewrite (its moments do not need Delta): recomputed
    assert kernel_routine(FAMILIES["erf"]).gram is None


def test_gram_map_of_the_layer_map():
    """Delta' = K'_aa K'_bb - K'_ab^2 from the saddle-point map (generic gamma, beta)."""
    from symfield.saddle import derive_layer_map

    layer = derive_layer_map()
    expected = layer.diag.subs(Q, KAA) * layer.diag.subs(Q, KBB) - layer.pair**2
    assert sp.expand(layer.gram - expected) == 0


# -- c = 1 exactly ------------------------------------------------------------------------
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("activation", KINKED)
@pytest.mark.parametrize("sw2, sb2", [(1.25, 0.05), (2.0, 0.0)])
def test_duplicate_inputs_stay_exact_kinked(activation, net, sw2, sb2):
    """Duplicate inputs: K_ab = K_aa at every layer, and for the ReLU family
    chi_ab = chi_aa (d K_ab/d K0 along K0 = q 11^T equals d K_aa/d q0, and the mixing
    terms dK_ab/dK0_aa are proportional to sqrt(Delta) = 0)."""
    out = _run(activation, net, np.ones((2, 2)), sw2, sb2, tensor=True)
    chi, chi_out, tensor = out["chi"], out["chi_out"], out["response_tensor"]
    np.testing.assert_allclose(out["K"][0, 1], out["K"][0, 0], rtol=1e-14)
    np.testing.assert_allclose(chi[0, 1], chi[0, 0], rtol=1e-14)
    np.testing.assert_allclose(chi_out[0, 1], chi_out[0, 0], rtol=1e-14)
    assert tensor[0, 1, 0, 0] == 0 and tensor[0, 1, 1, 1] == 0


@pytest.mark.parametrize("net", NETS)
def test_duplicate_inputs_erf_relation(net):
    """erf (smooth): along K0 = q 11^T, chi_aa = chi_ab + dK_ab/dK0_aa + dK_ab/dK0_bb."""
    out = _run("erf", net, np.ones((2, 2)), depth=8, tensor=True)
    T = out["response_tensor"]
    scale = np.max(np.abs(T[0, 1]))  # relative to the largest term
    assert abs(T[0, 1, 0, 1] + T[0, 1, 0, 0] + T[0, 1, 1, 1] - T[0, 0, 0, 0]) < 1e-13 * scale


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_duplicate_inputs_mpmath_path(activation, net):
    """The mpmath path carries Delta too: chi_ab = chi_aa to 28 digits (kinked), and the
    float64 code agrees with it to 1e-13."""
    mp_out = propagate_mp(_spec(activation, net), [[1, 1], [1, 1]], dps=30)
    chi = mp_out["chi"]
    if activation in KINKED:
        assert abs(chi[0][1] - chi[0][0]) <= 1e-28 * abs(chi[0][0])
    out = _run(activation, net, np.ones((2, 2)))
    for key in ("chi", "chi_out", "K"):
        np.testing.assert_allclose(out[key], np.array(mp_out[key], dtype=float), rtol=1e-13)


@pytest.mark.parametrize("sw2, sb2", [(1.25, 0.05), (2.0, 0.0)])
def test_anti_aligned_inputs_abs_ffnet(sw2, sb2):
    """|x| in the FFNet maps c = -1 onto c = +1 exactly (phi(-u) = phi(u)); then
    dG/dK_ab = -1 at the first layer and +1 after it, so chi_ab = -chi_aa exactly."""
    out = _run("abs", "ffnet", np.array([[1.0, -1.0], [-1.0, 1.0]]), sw2, sb2)
    np.testing.assert_allclose(out["chi"][0, 1], -out["chi"][0, 0], rtol=1e-14)
    np.testing.assert_allclose(out["K"][0, 1], out["K"][0, 0], rtol=1e-14)
    chi = propagate_mp(_spec("abs", "ffnet", sw2, sb2), [[1, -1], [-1, 1]], dps=30)["chi"]
    assert abs(chi[0][1] + chi[0][0]) <= 1e-28 * abs(chi[0][0])
    # and near it, c = -1 + 2^-40, against the 60-digit reference without a carried Delta
    K0 = [["1", "-" + NEAR_ONE], ["-" + NEAR_ONE, "1"]]
    ref = propagate_mp(_spec("abs", "ffnet", sw2, sb2), K0, dps=60, carry_delta=False)
    near = _run("abs", "ffnet", np.array([[1.0, -float(NEAR_ONE)], [-float(NEAR_ONE), 1.0]]),
                sw2, sb2)
    with mpmath.workdps(60):
        r = ref["chi"][0][1]
        assert abs((mpmath.mpf(float(near["chi"][0, 1])) - r) / r) < 1e-13


# -- c = 1 - 1e-12 ------------------------------------------------------------------------
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_near_duplicate_inputs_keep_their_digits(activation, net):
    """c = 1 - 2^-40: float64 and the 30-digit path against an independent reference, the
    mpmath path at 60 digits recomputing Delta from the kernel each layer (no carried
    Delta; its rounding, 1e-60, is harmless at this distance from c = 1)."""
    K0 = [["1", NEAR_ONE], [NEAR_ONE, "1"]]
    spec = _spec(activation, net)
    reference = propagate_mp(spec, K0, dps=60, carry_delta=False)
    mp30 = propagate_mp(spec, K0, dps=30)
    out = _run(activation, net, np.array([[1.0, float(NEAR_ONE)], [float(NEAR_ONE), 1.0]]))
    with mpmath.workdps(60):
        for key in ("chi", "chi_out", "K"):
            ref = reference[key][0][1]
            assert abs((mpmath.mpf(float(out[key][0, 1])) - ref) / ref) < 1e-13, key
            assert abs((mp30[key][0][1] - ref) / ref) < 1e-26, key


# -- the command line ---------------------------------------------------------------------
def test_cli_duplicate_inputs_relu(capsys):
    argv = ["kernel", "--net", "resnet", "--activation", "relu", "--rho", "0.3", "--depth",
            "50", "--K0", "1,1;1,1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(argv + ["--dps", "30"]) == 0
    mp_out = json.loads(capsys.readouterr().out)
    chi = np.array(out["chi"])
    assert abs(chi[0, 1] - chi[0, 0]) <= 1e-14 * chi[0, 0]
    assert mp_out["chi"][0][1] == mp_out["chi"][0][0]
    assert abs(chi[0, 1] / float(mp_out["chi"][0][1]) - 1) < 1e-14


# -- no hang without a word ------------------------------------------------------------------
def _error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, parameter, value, limit", [
    (["kernel", "--rho", "0.1", "--depth", "1e7"], "depth", "1e7", "1000000"),
    (["kernel", "--rho", "0.1", "--dps", "100000"], "dps", "100000", "1000"),
    (["kernel", "--rho", "0.1", "--dps", "15.7"], "dps", "15.7", "[15, 1000]"),
    (["kernel", "--rho", "0.1", "--dps", "14"], "dps", "14", "[15, 1000]"),
    (["optimal-rho", "--depths", "10,10000000"], "depths", "10000000", "100000"),
    (["optimal-rho", "--depths", "10,2.5"], "depths", "2.5", "[1, 100000]"),
    (["optimal-rho", "--dps", "30.5"], "dps", "30.5", "[15, 1000]"),
    (["bench", "--repeats", "x"], "repeats", "x", "[1, 1000]"),
])
def test_limits_are_refused_in_one_line(capsys, argv, parameter, value, limit):
    err = _error_line(capsys, argv + ["--json"])
    assert f"{parameter}=" in err and value in err and limit in err


def test_over_budget_run_is_refused_naming_the_depth_that_fits(capsys, monkeypatch):
    """A run whose projected time exceeds the budget stops after the calibration second
    with exit 2, naming the parameter, its value and the largest value that fits."""
    monkeypatch.setenv("SYMFIELD_MAX_SECONDS", "1.5")
    err = _error_line(capsys, ["kernel", "--rho", "0.001", "--depth", "1000000", "--json"])
    assert "depth=1000000" in err and "limit" in err and "use depth <=" in err
    fit = int(err.rsplit("<=", 1)[1])
    assert 1 <= fit < 1000000


def test_long_run_draws_a_progress_bar_with_a_time_estimate(capsys, monkeypatch):
    import symfield.progress

    monkeypatch.setattr(symfield.progress, "CALIBRATION", 0.0)
    assert main(["kernel", "--rho", "0.01", "--depth", "3000", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays one JSON object
    assert "symfield: kernel [" in captured.err and "s left" in captured.err


def test_one_distinct_depth_fits_no_exponent(capsys):
    assert main(["optimal-rho", "--depths", "5,5", "--no-continuum", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for label in ("diagonal", "offdiagonal"):
        assert out[f"rho_star_{label}"][0] is not None
        assert out[f"exponent_{label}"] is None
        assert "two or more distinct depths" in out[f"exponent_reason_{label}"]


# -- --dps means every number ------------------------------------------------------------------
def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_kernel_dps_prints_every_number_from_mpmath(capsys):
    argv = ["kernel", "--net", "resnet", "--activation", "relu", "--rho", "0.2", "--depth",
            "20", "--K0", "0.5,0.2;0.2,0.4", "--json", "--tensor"]
    assert main(argv + ["--dps", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(argv + ["--dps", "50"]) == 0
    ref = json.loads(capsys.readouterr().out)
    keys = ("K", "K_out", "chi", "chi_out", "log_abs_chi", "chi_sign", "log_abs_chi_out",
            "chi_out_sign", "response_tensor", "response_tensor_out")
    with mpmath.workdps(50):
        for key in keys:
            values, refs = list(_leaves(out[key])), list(_leaves(ref[key]))
            assert values and all(isinstance(v, str) for v in values), key
            for v, r in zip(values, refs, strict=True):
                assert abs(mpmath.mpf(v) - mpmath.mpf(r)) <= 1e-25 * max(1, abs(mpmath.mpf(r)))
    assert "30 digits" in out["moments"]


def _erf_sqrt_tstar(sw2: str, sb2: str, q0: str, dps: int) -> mpmath.mpf:
    """sqrt(t*) of THEORY.md section 5, independently: Williams' arcsine kernel
    G_d(q) = (2/pi) asin(2q / (1 + 2q)) (Williams 1997), F = sb2 + sw2 G_d, the optimum
    where G_d''/G_d' F + sw2 G_d' = 0, and t* = int_q0^K* dq / F (mpmath quad/findroot)."""
    with mpmath.workdps(dps):
        sw2, sb2, q0 = mpmath.mpf(sw2), mpmath.mpf(sb2), mpmath.mpf(q0)

        def G(q):
            return 2 / mpmath.pi * mpmath.asin(2 * q / (1 + 2 * q))

        def F(q):
            return sb2 + sw2 * G(q)

        def cond(q):
            return mpmath.diff(G, q, 2) / mpmath.diff(G, q) * F(q) + sw2 * mpmath.diff(G, q)

        assert cond(q0) > 0 > cond(mpmath.mpf(2))
        grid = [q0 * 2 ** (mpmath.mpf(i) / 4) for i in range(40)]
        lo, hi = next((a, b) for a, b in itertools.pairwise(grid) if cond(a) > 0 >= cond(b))
        k_star = mpmath.findroot(cond, (lo, hi), solver="anderson")
        return mpmath.sqrt(mpmath.quad(lambda q: 1 / F(q), [q0, k_star]))


def test_optimal_rho_dps_prints_every_number_from_mpmath(capsys):
    """With --dps 30 every computed number is a decimal string, and the continuum erf
    check value sqrt(t*) = 0.96594438... (THEORY.md) holds to 25 digits against an
    independent mpmath computation."""
    argv = ["optimal-rho", "--activation", "erf", "--sw2", "1.25", "--sb2", "0.05",
            "--K0", "0.05", "--depths", "10,20", "--json"]
    assert main(argv + ["--dps", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    inputs = {"activation", "sw2", "sb2", "K0", "depths", "method"}
    for key, value in out.items():
        if key in inputs or key.startswith("reason") or key.startswith("exponent_reason"):
            continue
        for leaf in _leaves(value):
            assert leaf is None or isinstance(leaf, str), (key, leaf)
    expected = _erf_sqrt_tstar("1.25", "0.05", "0.05", 40)
    assert abs(expected - mpmath.mpf("0.96594438")) < 1e-8  # the literature's digits
    with mpmath.workdps(40):
        got = mpmath.mpf(out["continuum"]["diagonal"]["sqrt_tstar"])
        assert abs(got - expected) < 1e-25
        # rho*_continuum = sqrt(t*/L), also at 30 digits
        rho10 = mpmath.mpf(out["rho_star_continuum"]["diagonal"][0])
        assert abs(rho10 - expected / mpmath.sqrt(10)) < 1e-25
    # the other numbers (roots, curvature, exponent, gaps) agree with a 40-digit run
    assert main(argv + ["--dps", "40", "--no-continuum"]) == 0
    finer = json.loads(capsys.readouterr().out)
    with mpmath.workdps(40):
        for key in ("rho_star_diagonal", "chi_out_max_diagonal",
                    "second_derivative_diagonal", "exponent_diagonal"):
            for v, r in zip(_leaves(out[key]), _leaves(finer[key]), strict=True):
                assert abs(mpmath.mpf(v) - mpmath.mpf(r)) <= 1e-25 * abs(mpmath.mpf(r)), key
    # the float64 run of the same command prints the continuum as floats good to ~1e-15
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert abs(plain["continuum"]["diagonal"]["sqrt_tstar"] - float(expected)) < 1e-14
