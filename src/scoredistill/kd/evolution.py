"""Regularised (aging) evolution over MLP widths × depths under a size budget.

Real, Aggarwal, Huang and Le, AAAI 2019 ("Regularized Evolution for Image Classifier
Architecture Search", Algorithm 1), the search DisWOT runs over its training-free score
(reference/knowledge_distillation.md, method 10)::

    population ← P random architectures within budget, each scored
    repeat C cycles:
        parent ← best of S drawn (without replacement) from the population
        child  ← mutate(parent) within budget; score it
        append child, remove the oldest member
    return the best-scored architecture ever evaluated

so exactly ``P + C`` architectures are scored. A mutation changes one layer's width to another
value of the grid, inserts a random layer or removes one (depth stays in range); draws and
mutations that break the budget are rejected and redrawn, unscored.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["MLPSpace", "SearchResult", "evolve"]

Widths = tuple[int, ...]


def _pick(n: int, rng: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=rng))


@dataclass(frozen=True)
class MLPSpace:
    """Hidden widths of an MLP: each of ``min_depth..max_depth`` layers takes a value of ``widths``."""

    widths: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128)
    max_depth: int = 3
    min_depth: int = 1

    def __post_init__(self) -> None:
        if not self.widths or not 1 <= self.min_depth <= self.max_depth:
            raise ValueError(
                f"need a non-empty width grid and 1 <= min_depth <= max_depth, got {self}"
            )

    def __iter__(self) -> Iterator[Widths]:
        """Every architecture, shallow first."""
        for depth in range(self.min_depth, self.max_depth + 1):
            yield from itertools.product(self.widths, repeat=depth)

    def sample(self, rng: torch.Generator) -> Widths:
        """Uniform depth, then a uniform width per layer."""
        depth = self.min_depth + _pick(self.max_depth - self.min_depth + 1, rng)
        return tuple(self.widths[_pick(len(self.widths), rng)] for _ in range(depth))

    def mutate(self, arch: Widths, rng: torch.Generator) -> Widths:
        """One random edit: change a layer's width, insert a layer, or remove one."""
        ops = ["width"] * (len(self.widths) > 1)
        ops += ["insert"] * (len(arch) < self.max_depth) + ["remove"] * (len(arch) > self.min_depth)
        op, out = ops[_pick(len(ops), rng)], list(arch)
        if op == "width":
            i = _pick(len(arch), rng)
            others = [w for w in self.widths if w != arch[i]]
            out[i] = others[_pick(len(others), rng)]
        elif op == "insert":
            out.insert(_pick(len(arch) + 1, rng), self.widths[_pick(len(self.widths), rng)])
        else:
            del out[_pick(len(arch), rng)]
        return tuple(out)


@dataclass(frozen=True)
class SearchResult:
    """The best architecture, its score, how many were scored and every ``(arch, score)``."""

    best: Widths
    best_score: float
    evaluated: int
    history: list[tuple[Widths, float]]


def evolve(
    score: Callable[[Widths], float],
    space: MLPSpace,
    fits: Callable[[Widths], bool],
    *,
    population: int,
    cycles: int,
    tournament: int,
    rng: torch.Generator,
    max_draws: int = 1000,
) -> SearchResult:
    """Regularised evolution maximising ``score`` over ``space`` restricted to ``fits``.

    A mutation that finds no in-budget child in ``max_draws`` tries re-scores the parent (still
    one evaluation), so the count is always ``population + cycles``.
    """
    if population < 1 or cycles < 0 or not 1 <= tournament <= population:
        raise ValueError(
            f"need population >= 1, cycles >= 0, 1 <= tournament <= population; got "
            f"population={population}, cycles={cycles}, tournament={tournament}"
        )
    history: list[tuple[Widths, float]] = []

    def draw(propose: Callable[[], Widths], fallback: Widths | None) -> Widths:
        for _ in range(max_draws):
            if fits(arch := propose()):
                return arch
        if fallback is None:
            raise ValueError(f"no architecture of {space} within the budget in {max_draws} draws")
        return fallback

    def evaluate(arch: Widths) -> tuple[Widths, float]:
        history.append((arch, float(score(arch))))
        return history[-1]

    pop = deque(evaluate(draw(lambda: space.sample(rng), None)) for _ in range(population))
    for _ in range(cycles):
        drawn = torch.randperm(len(pop), generator=rng)[:tournament].tolist()
        parent = max((pop[i] for i in drawn), key=lambda m: m[1])[0]
        pop.append(evaluate(draw(lambda p=parent: space.mutate(p, rng), parent)))
        pop.popleft()
    best, best_score = max(history, key=lambda m: m[1])
    return SearchResult(best, best_score, len(history), history)
