"""`symfield verify`: generated float64 routines against the mpmath path."""

import pytest

from symfield.verify.table import format_table, run_verify


def test_quick_verify_passes():
    """Closed-form moments at hard points and nine networks (depth <= 100) at 30 digits."""
    rows = run_verify(quick=True, progress=False)
    table = format_table(rows)
    print(table)
    assert rows and all(r["ok"] for r in rows), table
    closed = [r for r in rows if r["kind"] == "exact" and "condition" not in r]
    assert min(r["digits"] for r in closed) >= 12


@pytest.mark.slow
def test_full_verify_passes():
    """Adds depth 10^4, the quadrature families and closed forms vs 2-D quadrature."""
    rows = run_verify(quick=False, progress=False)
    assert all(r["ok"] for r in rows), format_table(rows)
