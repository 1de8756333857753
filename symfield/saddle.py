"""Leading order: the saddle point of the action (the NNGP kernel recursion).

The recursion is not typed in: it is read off the stationarity conditions
``dS/dCt = 0`` of a one-layer action of the generic process
``h^(l) = gamma h^(l-1) + beta xi^(l)``. Because the per-neuron process is
Markov in the layer index, one layer's saddle equation is the whole recursion;
``tests/test_action.py`` checks this against the explicit action of a 3-layer
net.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from .action import GENERIC, Action, NeuronProcess
from .gaussian import KAA, KAB, KBB, Q


@dataclass(frozen=True)
class LayerMap:
    """K^(l) as a function of K^(l-1), and K_out as a function of K^(L).

    ``pair`` / ``diag`` are in (K_aa, K_bb, K_ab) / q and the moments G, G_d.
    ``gram`` is the map of the Gram determinant Delta = K_aa K_bb - K_ab^2 of a
    pair, K'_aa K'_bb - K'_ab^2, in (K_aa, K_bb, K_ab), G and G_d(K_aa), G_d(K_bb)
    (:func:`gram_map`; :mod:`symfield.numerics` rewrites it without cancellation).
    """

    pair: sp.Expr
    diag: sp.Expr
    readout_pair: sp.Expr
    readout_diag: sp.Expr
    saddle_equations: tuple[sp.Eq, ...]
    readout_equations: tuple[sp.Eq, ...]
    action: sp.Expr
    gram: sp.Expr = sp.S.Zero


def gram_map(pair: sp.Expr, diag: sp.Expr) -> sp.Expr:
    """Delta' = K'_aa K'_bb - K'_ab^2 of one layer, from the derived layer map.

    The pair map is carried as (K_aa, K_bb, K_ab, Delta): at correlation c -> 1 the
    determinant recomputed from rounded K' loses everything (c = 1 - 1e-16 gives an
    angle 1e-8), so Delta gets its own map. Written, as derived, in the moments.
    """
    return sp.expand(diag.subs(Q, KAA) * diag.subs(Q, KBB) - pair**2)


def _to_pair_symbols(action: Action) -> dict[sp.Symbol, sp.Symbol]:
    k0 = action.K0
    return {k0[0, 0]: KAA, k0[1, 1]: KBB, k0[0, 1]: KAB}


@functools.lru_cache(maxsize=4)
def derive_layer_map(process: NeuronProcess = GENERIC) -> LayerMap:
    """Derive the one-layer kernel map and the readout map from dS = 0."""
    layer = Action(process, n_inputs=2, depth=1, readout=False)
    solution = layer.solve_saddle()
    sigma = layer.variances([layer.C[0].subs(solution)])[1]
    rename = _to_pair_symbols(layer)
    pair = sp.expand(sigma[0, 1].subs(rename))
    diag = sp.expand(sigma[0, 0].subs({layer.K0[0, 0]: Q}))

    readout = Action(process, n_inputs=2, depth=0, readout=True)
    out = readout.C[0].subs(readout.solve_saddle())
    rename_out = _to_pair_symbols(readout)
    return LayerMap(
        pair=pair,
        diag=diag,
        readout_pair=out[0, 1].subs(rename_out),
        readout_diag=out[0, 0].subs({readout.K0[0, 0]: Q}),
        saddle_equations=tuple(e.subs(rename) for e in layer.saddle_equations()),
        readout_equations=tuple(e.subs(rename_out) for e in readout.saddle_equations()),
        action=layer.S.subs(rename),
        gram=gram_map(pair, diag),
    )
