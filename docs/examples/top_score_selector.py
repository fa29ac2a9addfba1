"""A selector: the rows with the highest value of one stored score (by default the word count
that the `word_count` stage stores), best first."""

from __future__ import annotations

from curate.selectors.base import Selector, param


class TopScore(Selector):
    name = "top_score"  # the config key, and the key in pipeline/registry.py SELECTORS

    def __init__(self, budget: float | int = 0.1, score: str = "word_count.words"):
        self.budget = budget  # a row count (int) or a fraction of the pool (float)
        self.score = score

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}"}  # a config whose stages store no such score is rejected

    def select(self, con, run_id, pool, budget_rows):
        return con.execute(
            f"SELECT p.id, s.value FROM {pool} p JOIN scores s ON s.run_id = ? AND s.id = p.id AND s.name = ? "
            "ORDER BY s.value DESC, p.id LIMIT ?",
            [run_id, self.score, budget_rows],
        ).fetchall()
