"""The table every benchmark prints: each figure beside its same-run baseline."""

from __future__ import annotations


class Table:
    """Rows of (what, ours, baseline, ratio, target)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, ours: str, baseline: str = "", ratio: str = "",
            target: str = "") -> None:
        self.rows.append((what, ours, baseline, ratio, target))
        print(f"  {what}: {ours}  {baseline}  {ratio}", flush=True)

    def show(self) -> None:
        head = ("measure", "kubetorch-jupyter", "baseline (same run)", "ratio", "target")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        print()
        print(line.format(*head))
        print(line.format(*("-" * w for w in widths)))
        for row in self.rows:
            print(line.format(*row))
