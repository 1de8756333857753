"""Break the derivation on purpose and check that the referee notices (slow).

Each mutation is applied with monkeypatch (no file is edited), every derivation
cache is cleared, and ``run_verify`` (what `symfield verify` runs) is called on the
referee slice: the modules regenerated from the mutated derivation and the mpmath
path must disagree with the independent reference, and without a mutation all
rows must pass. The same slice runs in the default suite (tests/test_referee.py).
"""

import dataclasses
import importlib

import pytest
import sympy as sp

from symfield.verify.table import SLICE_CASES, format_table, run_verify

pytestmark = pytest.mark.slow

#: Modules whose lru_caches hold derived expressions (or code made from them).
_CACHED = ("symfield.activations", "symfield.saddle", "symfield.response", "symfield.ir",
           "symfield.precision", "symfield.codegen.python")


def clear_derivation_caches() -> None:
    for name in _CACHED:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


@pytest.fixture
def clean(monkeypatch):
    clear_derivation_caches()
    yield monkeypatch
    monkeypatch.undo()
    clear_derivation_caches()


def drop_hidden_bias(monkeypatch) -> None:
    """(1) Action.mean without sb2 on the hidden layers (the readout keeps its bias)."""
    from symfield import action

    def mean(self, field):
        sw2, sb2 = self._variances_of(field)
        if field <= self.depth:
            sb2 = 0
        sigma = self.variances()[field - 1]
        return sp.Matrix(self.n_inputs, self.n_inputs,
                         lambda a, b: sb2 + sw2 * action.gaussian_moment2(sigma, a, b))

    monkeypatch.setattr(action.Action, "mean", mean)


def scale_tangent(monkeypatch) -> None:
    """(2) The d/d rho tangent of the kernel (dq_new, dk_new) scaled by 1.01."""
    from symfield import ir, response

    original = response.derive_tangent_map

    def scaled(*args, **kwargs):
        return {k: sp.Rational(101, 100) * v if k in ("dq_new", "dk_new") else v
                for k, v in original(*args, **kwargs).items()}

    monkeypatch.setattr(response, "derive_tangent_map", scaled)
    monkeypatch.setattr(ir, "derive_tangent_map", scaled)


def flip_j_qa(monkeypatch) -> None:
    """(3) The sign of J_qa = dK'_ab/dK_aa flipped."""
    from symfield import response

    original = response.jacobian

    def flipped(layer):
        jac = original(layer)
        return dataclasses.replace(jac, pair_qa=-jac.pair_qa)

    monkeypatch.setattr(response, "jacobian", flipped)


def quarter_price_weight(monkeypatch) -> None:
    """(4) The Price weight 1/2 per variance derivative changed to 1/4."""
    from symfield import ir
    from symfield.codegen import python

    original = ir.pair_price_orders

    def doubled(name):
        a, b, power = original(name)
        return a, b, 2 * power

    monkeypatch.setattr(ir, "pair_price_orders", doubled)
    monkeypatch.setattr(python, "pair_price_orders", doubled)


MUTATIONS = {"hidden bias dropped": drop_hidden_bias, "tangent x 1.01": scale_tangent,
             "J_qa sign flipped": flip_j_qa, "Price weight 1/4": quarter_price_weight}


def _referee_rows(rows):
    return [r for r in rows if r["kind"].startswith("referee")]


def test_referee_passes_without_mutation(clean):
    rows = run_verify(cases=SLICE_CASES, progress=False)
    assert all(r["ok"] for r in rows), format_table(rows)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_referee_catches(clean, name):
    MUTATIONS[name](clean)
    clear_derivation_caches()
    rows = run_verify(cases=SLICE_CASES, progress=False)
    failed = [r for r in _referee_rows(rows) if not r["ok"]]
    print(f"\nMUTATION {name}: " + "; ".join(
        f"{r['routine']} {r['worst_key']} {r['worst_rel_err']:.2e}" for r in failed))
    assert failed, format_table(rows)
    # the regenerated code must be among the failures (the committed code is unchanged)
    assert any("derived now" in r["routine"] for r in failed), format_table(rows)
