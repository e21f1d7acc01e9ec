"""Which drift test each column of a window gets, and the correction for testing many at once.

A window with fewer than `monitoring.drift_large_sample` rows gets p-value tests: K-S for
numerical columns, chi-square for categorical ones. Testing 20+ columns at 5% each finds a
"drifted" column in most unchanged windows, so the p-values of one report are corrected with
Benjamini-Hochberg at `monitoring.drift_fdr`. With many rows every p-value test rejects tiny,
harmless differences, so a large window gets distances instead: Wasserstein (normed) for
numerical, Jensen-Shannon for categorical columns, drifted above `drift_distance_threshold`.

The tests are Evidently's own (its registry of stat tests), set per column through its
`per_column_method` / `per_column_threshold`. Benjamini-Hochberg at level q rejects exactly the
p-values <= k*q/m (k: the largest rank whose p-value is under its line), so one threshold for
every p-value column makes Evidently's own verdicts in the HTML the corrected ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

P_VALUE = {"ks": "K-S p-value", "chisquare": "chi-square p-value"}
DISTANCE = {
    "wasserstein": "Wasserstein distance (normed)",
    "jensenshannon": "Jensen-Shannon distance",
}


@dataclass
class ColumnTests:
    """The test and threshold of each compared column, and (small windows) the corrected p-values."""

    methods: dict[str, str]  # column -> Evidently stat test name
    thresholds: dict[str, float]  # column -> the threshold Evidently is given
    corrected: bool  # Benjamini-Hochberg applied over the p-value columns
    p_values: dict[str, float] = field(default_factory=dict)
    adjusted: dict[str, float] = field(default_factory=dict)  # BH-adjusted p-values
    why: str = ""

    def drifted(self, scores: dict[str, float], level: float) -> list[str]:
        """The drifted columns: adjusted p-value <= level, or distance >= its threshold."""
        out = []
        for column, method in self.methods.items():
            if column not in scores:
                continue
            if method in P_VALUE:
                p = self.adjusted.get(column)
                if p is not None and p <= level:
                    out.append(column)
            elif scores[column] >= self.thresholds[column]:
                out.append(column)
        return out


def benjamini_hochberg(p_values: dict[str, float], level: float) -> tuple[dict[str, float], float]:
    """BH-adjusted p-values, and the raw-p threshold that rejects the same columns.

    Adjusted p of rank i (ascending) is min over j >= i of m/j * p_(j), capped at 1; a column is
    rejected when its adjusted p <= level, i.e. when its raw p <= k*level/m.
    """
    if not p_values:
        return {}, level
    names = sorted(p_values, key=lambda c: p_values[c])
    p = np.array([p_values[c] for c in names], dtype=float)
    m = len(p)
    scaled = p * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    under = np.nonzero(p <= np.arange(1, m + 1) * level / m)[0]
    k = int(under[-1]) + 1 if len(under) else 1
    # Nothing rejected: level/m is below every p-value (p_(1) > 1*level/m), so still none.
    return dict(zip(names, adjusted.tolist(), strict=True)), k * level / m


def plan_tests(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    rows: int,
    large_sample: int,
    level: float,
    distance_threshold: float,
) -> ColumnTests:
    """The tests for one window of `rows` rows (`current` and `reference` ready for Evidently)."""
    if rows >= large_sample:
        methods = {c: "wasserstein" for c in numerical} | {c: "jensenshannon" for c in categorical}
        why = (
            f"{rows:,} rows >= drift_large_sample {large_sample:,}: distances (Wasserstein "
            f"normed, Jensen-Shannon), drifted at >= {distance_threshold:g}"
        )
        return ColumnTests(methods, dict.fromkeys(methods, distance_threshold), False, why=why)
    methods = {c: "ks" for c in numerical} | {c: "chisquare" for c in categorical}
    raw = {c: _p_value(current[c], reference[c], m) for c, m in methods.items()}
    adjusted, threshold = benjamini_hochberg(raw, level)
    raw_drifted = sum(p <= level for p in raw.values())
    kept = sum(p <= level for p in adjusted.values())
    why = (
        f"{rows:,} rows < drift_large_sample {large_sample:,}: p-value tests (K-S, chi-square), "
        f"Benjamini-Hochberg at FDR {level:g} over {len(raw)} columns "
        f"({kept} drifted; {raw_drifted} without the correction)"
    )
    return ColumnTests(methods, dict.fromkeys(methods, threshold), True, raw, adjusted, why)


def _p_value(current: pd.Series, reference: pd.Series, method: str) -> float:
    """Evidently's own stat test on one column, as its drift metric runs it (nulls dropped)."""
    # Lazy: Evidently takes seconds to import.
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if method == "ks" else ColumnType.Categorical
    ref = reference.replace([-np.inf, np.inf], np.nan).dropna()
    cur = current.replace([-np.inf, np.inf], np.nan).dropna()
    test = get_stattest(ref, cur, kind, method)
    return float(test(ref, cur, kind, 0.05).drift_score)


def described_tests(methods: dict[str, str]) -> dict[str, str]:
    """Per column, the test in words (for the report)."""
    return {c: P_VALUE.get(m) or DISTANCE.get(m) or m for c, m in methods.items()}


RARE = "(rare categories)"
MIN_EXPECTED = 5  # chi-square's p-value holds when every expected count is at least this


def pool_rare(
    current: pd.DataFrame, reference: pd.DataFrame, categorical: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Categories expected fewer than 5 times in the window, merged into one (for chi-square).

    A category seen once in 10,000 reference rows turns up in a 300-row window now and then;
    alone, it would make chi-square's p-value near zero. Pooled, it still counts (many rows of
    a rare or new category make the pooled bucket drift). Returns the frames and the columns
    pooled.
    """
    current, reference, pooled = current.copy(), reference.copy(), []
    n = int(current[categorical].notna().any(axis=1).sum()) if categorical else 0
    for column in categorical:
        shares = reference[column].dropna().astype(str).value_counts(normalize=True)
        rare = set(shares[shares * max(n, 1) < MIN_EXPECTED].index)
        seen = set(current[column].dropna().astype(str))
        rare |= seen - set(shares.index)  # new categories: no expected count at all
        if not rare:
            continue
        for frame in (current, reference):
            values = frame[column].astype(object)
            frame[column] = values.where(~values.astype(str).isin(rare) | values.isna(), RARE)
        pooled.append(column)
    return current, reference, pooled
