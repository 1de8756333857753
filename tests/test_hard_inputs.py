"""Hard inputs: correlation exactly 1 (duplicate inputs) and 1 - 1e-12, limits, --dps.

At c = 1 the ReLU-family kernels have a square-root singularity in the angle
theta = acos(c): a rounding of c to 1 - 1e-16 is an angle of 1.5e-8, which
moves dG/dK_ab by 2e-9 per layer. The loop therefore carries the Gram
determinant Delta = K_aa K_bb - K_ab^2 with its own derived map
(symfield.saddle.gram_map, symfield.numerics.stable_gram).
"""

import json

import mpmath
import numpy as np
import pytest
import sympy as sp

from symfield.activations import FAMILIES, resolve
from symfield.cli import main
from symfield.gaussian import KAA, KAB, KBB, Q
from symfield.ir import kernel_routine
from symfield.kernel import load_module
from symfield.numerics import DELTA, EXCESS, GAP, SA, SB, gram_step, unfold_gram
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
    # at coinciding inputs (K_aa = K_bb, Delta = 0, so D = W = 0) every term vanishes
    # symbolically: Delta = 0 maps to exactly 0
    assert sp.expand(gram.subs({SB: SA, DELTA: 0, EXCESS: 0, GAP: 0})) == 0
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
