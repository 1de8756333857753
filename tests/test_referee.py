"""The referee's cheap slice (default suite): what the derivation produces now, and the
committed generated code, against an independent reference (symfield.verify.reference).

The reference shares no derived expression with the code: phi is the family's own
definition, Gaussian expectations are direct integrals, the recursion is typed from
the network's definition and the responses are finite differences. A wrong layer
map, Jacobian, tangent or Price weight therefore shows up here; tests/test_mutation.py
(slow) breaks each on purpose and checks that it does.
"""

import mpmath
import pytest
from mpmath import mp

from symfield.precision import mp_expectations
from symfield.spec import NetworkSpec
from symfield.verify.reference import GaussianMoments, Referee, phi_of
from symfield.verify.table import SLICE_CASES, format_table, referee_slice


@pytest.fixture(scope="module")
def slice_rows():
    return referee_slice()


def test_slice_covers_every_path(slice_rows):
    """Committed or regenerated modules and the mpmath path, for both slice networks."""
    labels = {r["routine"] for r in slice_rows}
    for case in SLICE_CASES:
        assert any(label.startswith(case.label) and "mpmath" in label for label in labels)
        assert any(label.startswith(case.label) and ("generated/" in label or "derived now"
                                                     in label) for label in labels)


def test_slice_agrees_with_the_reference(slice_rows):
    """Kernel, K_out, chi, chi_out, both response tensors and d/d rho within tolerance;
    the reference's own error estimate far below each tolerance."""
    table = format_table(slice_rows)
    print(table)
    assert all(r["ok"] for r in slice_rows), table
    for row in slice_rows:
        assert row["reference_err"] < row["required_rel_err"] / 10


@pytest.mark.parametrize("name", ["erf", "relu", "leaky_relu:0.2"])
def test_reference_moments_against_closed_forms(name):
    """The reference's Gaussian integrals reproduce the derived closed forms to 1e-14
    (hard points: |c| = 1 - 1e-12, variances 1e-8 and 1e4)."""
    moments = GaussianMoments(name)
    exact = mp_expectations(name, 30)
    points = [("0.3", "0.2", "0.1"), ("0.25", "0.25", "-0.2"), ("1e-8", "2e-8", "1e-8")]
    if name != "erf":  # erf at large variance takes the (slower) panel rule
        points += [("1e4", "3e3", "1e3"), ("0.5", "0.5", "0.499999999999")]
    with mp.workdps(30):
        for qa, qb, k in points:
            qa, qb, k = mpmath.mpf(qa), mpmath.mpf(qb), mpmath.mpf(k)
            scale = mp.sqrt(exact.diag(qa)[0] * exact.diag(qb)[0])
            assert abs(moments.pair(qa, qb, k) - exact.G(qa, qb, k)) / scale < 1e-14
            assert abs(moments.diag(qa) / exact.diag(qa)[0] - 1) < 1e-14


def test_reference_phi_is_the_definition():
    """phi comes from the family's SymPy expression with its parameter values."""
    with mp.workdps(30):
        assert phi_of("leaky_relu:0.2").fn(mpmath.mpf(-2)) == mpmath.mpf("-0.4")
        assert phi_of("relu").fn(mpmath.mpf(-2)) == 0
        assert abs(phi_of("tanh").fn(mpmath.mpf(1)) - mpmath.tanh(1)) < mpmath.mpf(10) ** -29


def test_reference_differences_converge():
    """The finite-difference responses do not depend on the step (truncation estimate
    is honest): halving both steps again moves chi and d chi_out/d rho by less than
    the estimate allows."""
    import symfield.verify.reference as reference

    spec = NetworkSpec("resnet", "relu", 2.0, 0.0625, 1, rho=0.25)
    K0 = ((0.375, 0.125), (0.125, 0.25))
    first = Referee("relu").network(spec, K0, drho=True)
    saved = reference.STEP_FIRST, reference.STEP_MIXED
    try:
        reference.STEP_FIRST, reference.STEP_MIXED = saved[0] / 8, saved[1] / 8
        second = Referee("relu").network(spec, K0, drho=True)
    finally:
        reference.STEP_FIRST, reference.STEP_MIXED = saved
    with mp.workdps(30):
        for key in ("chi", "chi_out", "dchi_out_drho"):
            allowed = 10 * max(first.error[key], second.error[key]) + 1e-20
            for a in range(2):
                for b in range(2):
                    x, y = first.values[key][a][b], second.values[key][a][b]
                    assert abs(x - y) / abs(x) < allowed, (key, a, b)
