"""Response functions: how the kernel at depth reacts to the input kernel.

The response tensor chi^(l)_{ab,cd} = dK^(l)_ab / dK^(0)_cd is propagated
layer by layer with the Jacobian of the derived layer map (symbolic, per
layer); it is never written as an expression nested L deep. Only four kinds
of entries are non-zero, because K^(l)_ab depends on K^(l-1)_ab, K^(l-1)_aa and
K^(l-1)_bb alone:

    d q'_a / d q_a                  (diagonal response chi_aa)
    d K'_ab / d K_ab                (off-diagonal response chi_ab)
    d K'_ab / d K_aa, d K'_ab / d K_bb  (mixing of the diagonal into K_ab)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from .action import BETA, GAMMA
from .gaussian import KAA, KAB, KBB, Q
from .saddle import LayerMap, derive_layer_map


@dataclass(frozen=True)
class ResponseMap:
    """Jacobian entries of the layer map and of the readout map."""

    pair_k: sp.Expr
    pair_qa: sp.Expr
    pair_qb: sp.Expr
    diag_q: sp.Expr
    readout_pair_k: sp.Expr
    readout_pair_qa: sp.Expr
    readout_pair_qb: sp.Expr
    readout_diag_q: sp.Expr


def jacobian(layer: LayerMap) -> ResponseMap:
    """Differentiate the layer and readout maps entry by entry."""
    return ResponseMap(
        pair_k=sp.diff(layer.pair, KAB),
        pair_qa=sp.diff(layer.pair, KAA),
        pair_qb=sp.diff(layer.pair, KBB),
        diag_q=sp.diff(layer.diag, Q),
        readout_pair_k=sp.diff(layer.readout_pair, KAB),
        readout_pair_qa=sp.diff(layer.readout_pair, KAA),
        readout_pair_qb=sp.diff(layer.readout_pair, KBB),
        readout_diag_q=sp.diff(layer.readout_diag, Q),
    )


@functools.lru_cache(maxsize=4)
def derive_response_map() -> ResponseMap:
    return jacobian(derive_layer_map())


#: Tangent (forward-mode) variables: d q / d theta, d K_aa / d theta, ..., per layer.
DQ, DQA, DQB, DK = sp.symbols("dq dq_a dq_b dk", real=True)
PAIR_TANGENTS = {KAA: DQA, KBB: DQB, KAB: DK}
DIAG_TANGENTS = {Q: DQ}


def tangent(expr: sp.Expr, theta: sp.Symbol, tangents: dict[sp.Symbol, sp.Symbol]) -> sp.Expr:
    """Total derivative d expr / d theta along the layer recursion (chain rule)."""
    return sp.diff(expr, theta) + sum(sp.diff(expr, v) * dv for v, dv in tangents.items())


def derive_tangent_map(gamma: sp.Expr, beta: sp.Expr, theta: sp.Symbol) -> dict[str, sp.Expr]:
    """d/d theta of one layer of a specialised net: the state tangent and the log-response rates.

    With tangents dK^(l-1) in, ``dq_new``/``dk_new`` are dK^(l)/d theta and
    ``dJ_q``/``dJ_k`` the total derivatives of the Jacobian entries, so that
    d log|chi| / d theta accumulates dJ / J layer by layer; ``dR_q``/``dR_k`` do
    the same for the readout. Moments appear as G(...), G_d(q) and derivatives.
    """
    layer, response = derive_layer_map(), derive_response_map()
    net = {GAMMA: gamma, BETA: beta}
    return {
        "dq_new": tangent(layer.diag.subs(net), theta, DIAG_TANGENTS),
        "dk_new": tangent(layer.pair.subs(net), theta, PAIR_TANGENTS),
        "dJ_q": tangent(response.diag_q.subs(net), theta, DIAG_TANGENTS),
        "dJ_k": tangent(response.pair_k.subs(net), theta, PAIR_TANGENTS),
        "dR_q": tangent(response.readout_diag_q, theta, DIAG_TANGENTS),
        "dR_k": tangent(response.readout_pair_k, theta, PAIR_TANGENTS),
    }
