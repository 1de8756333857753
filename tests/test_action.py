"""The action S[C, Ct]: saddle point from dS = 0, Markov property, cumulant structure."""

import sympy as sp

from symfield.action import (
    BETA,
    FFNET,
    G_D,
    GAMMA,
    RESNET,
    RHO,
    SB2,
    SW2,
    Action,
    G,
)
from symfield.gaussian import KAA, KAB, KBB, Q
from symfield.saddle import derive_layer_map


def _iterate_layer_map(process, K0: sp.Matrix, depth: int) -> sp.Matrix:
    """Apply the derived one-layer map `depth` times to a symbolic 2x2 K0."""
    layer = derive_layer_map()
    subs_net = {GAMMA: process.gamma, BETA: process.beta}
    K = K0
    for _ in range(depth):
        pair = layer.pair.subs(subs_net).subs({KAA: K[0, 0], KBB: K[1, 1], KAB: K[0, 1]},
                                              simultaneous=True)
        qa = layer.diag.subs(subs_net).subs(Q, K[0, 0])
        qb = layer.diag.subs(subs_net).subs(Q, K[1, 1])
        K = sp.Matrix([[qa, pair], [pair, qb]])
    return K


def test_one_layer_saddle_generalises_to_explicit_three_layer_action():
    """Markov property: the explicit 3-layer action's saddle equals the iterated layer map."""
    for process in (RESNET, FFNET):
        action = Action(process, n_inputs=2, depth=3, readout=False)
        solution = action.solve_saddle()
        sigma_L = action.variances([c.subs(solution) for c in action.C])[-1]
        iterated = _iterate_layer_map(process, action.K0, 3)
        assert sp.expand(sigma_L - iterated) == sp.zeros(2, 2), process.name


def test_saddle_point_equations_and_conjugate_field():
    action = Action(RESNET, n_inputs=2, depth=2)
    # Ct* = 0 solves dS/dC = 0 because W(0; C) = 0
    assert action.conjugate_saddle_is_zero()
    solution = action.solve_saddle()
    c1 = action.C[0]
    assert sp.simplify(solution[c1[0, 1]] - (SB2 + SW2 * G(*[action.K0[i, j] for i, j in
                                                            ((0, 0), (1, 1), (0, 1))]))) == 0
    assert sp.simplify(solution[c1[0, 0]] - (SB2 + SW2 * G_D(action.K0[0, 0]))) == 0


def test_resnet_layer_map_is_the_nngp_recursion():
    layer = derive_layer_map()
    resnet = layer.pair.subs({GAMMA: 1, BETA: RHO})
    expected = KAB + RHO**2 * (SB2 + SW2 * G(KAA, KBB, KAB))
    assert sp.expand(resnet - expected) == 0
    ffnet = layer.diag.subs({GAMMA: 0, BETA: 1})
    assert sp.expand(ffnet - (SB2 + SW2 * G_D(Q))) == 0


def test_second_cumulant_is_the_noise_covariance():
    """d^2 S / dCt^2 at Ct = 0 is Cov(f, f): the vertex the one-loop expansion needs."""
    action = Action(RESNET, n_inputs=1, depth=2, readout=False, order=2)
    ct1, ct2 = action.Ct[0][0, 0], action.Ct[1][0, 0]
    at_zero = {ct1: 0, ct2: 0}
    assert sp.simplify(sp.diff(action.S, ct1, 2).subs(at_zero)
                       - action.covariance(1, (0, 0), 1, (0, 0))) == 0
    cross = sp.diff(action.S, ct1, ct2).subs(at_zero)
    assert cross != 0  # ResNet layers share the residual stream: cross-layer noise
    ffnet = Action(FFNET, n_inputs=1, depth=2, readout=False, order=2)
    cross_ff = sp.diff(ffnet.S, ffnet.Ct[0][0, 0], ffnet.Ct[1][0, 0]).subs(
        {ffnet.Ct[0][0, 0]: 0, ffnet.Ct[1][0, 0]: 0})
    # FFNet: h^(0) and h^(1) are independent given C, so the four-point function
    # factorises; it stays an unevaluated G_4 here, but its covariance argument
    # has vanishing cross entries
    moments = [f for f in cross_ff.atoms(sp.Function) if f.func.__name__ == "G_4"]
    assert moments
    for g4 in moments:
        # argument order: upper triangle of the 4x4 covariance, row by row
        cross_entries = [g4.args[i] for i in (2, 3, 5, 6)]  # (0,2) (0,3) (1,2) (1,3)
        assert all(e == 0 for e in cross_entries)
