"""Pure graph functions over a workflow's dependencies.

A graph is a mapping from each node to the nodes it depends on (its ``after:``
list); every dependency must itself be a key. Order of keys is kept wherever
a choice is free, so results are deterministic.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence

__all__ = [
    "ancestors", "critical_path", "find_cycle", "finish_times", "is_chain", "longest_path",
    "topo_order",
]

Graph = Mapping[str, Sequence[str]]


def find_cycle(graph: Graph) -> list[str] | None:
    """A cycle in dependency order (each node depends on the one before it), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in graph:
        if state.get(root):
            continue
        path: list[str] = [root]
        iters = [iter(graph[root])]
        state[root] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :]
                return list(reversed(cycle))
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(graph[nxt]))
    return None


def topo_order(graph: Graph) -> list[str]:
    """Nodes with every dependency before its dependents (Kahn; ties by key order).

    Raises ``ValueError`` on a cycle.
    """
    position = {node: i for i, node in enumerate(graph)}
    if all(position.get(dep, i) < i for i, deps in enumerate(graph.values()) for dep in deps):
        return list(graph)  # already in order: Kahn's ties by key order would give just this
    pending = {node: len(set(deps)) for node, deps in graph.items()}
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in set(deps):
            dependents[dep].append(node)
    ready = [(position[node], node) for node, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for child in dependents[node]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(order) != len(graph):
        raise ValueError(f"cycle through {find_cycle(graph)}")
    return order


def longest_path(
    graph: Graph, weight: Mapping[str, float], order: Sequence[str] | None = None
) -> tuple[float, list[str]]:
    """The heaviest path through the DAG, summing node weights: (length, nodes in order).

    ``order``: a topological order of ``graph``, when the caller has one.
    """
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in order if order is not None else topo_order(graph):
        best, prev = 0.0, None
        for dep in graph[node]:
            if prev is None or finish[dep] > best:
                best, prev = finish[dep], dep
        finish[node] = best + weight[node]
        via[node] = prev
    if not finish:
        return 0.0, []
    top = max(finish.values())
    end = next(n for n in graph if finish[n] == top)  # ties: the first in key order
    path: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = via[cursor]
    return finish[end], list(reversed(path))


def finish_times(
    graph: Graph, weight: Mapping[str, float], order: Sequence[str] | None = None
) -> dict[str, float]:
    """When each node finishes if it starts as its last dependency finishes."""
    finish: dict[str, float] = {}
    for node in order if order is not None else topo_order(graph):
        finish[node] = max((finish[d] for d in graph[node]), default=0.0) + weight[node]
    return finish


def critical_path(graph: Graph, weight: Mapping[str, float]) -> list[str]:
    """The nodes of the heaviest path, in order."""
    return longest_path(graph, weight)[1]


def ancestors(graph: Graph, node: str) -> set[str]:
    """Every node ``node`` depends on, directly or not."""
    seen: set[str] = set()
    stack = list(graph[node])
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(graph[dep])
    return seen


def is_chain(graph: Graph, order: Sequence[str]) -> bool:
    """Whether each node of the topological ``order`` depends on the one before it: one
    path through every node (more edges may skip along it)."""
    return all(a in graph[b] for a, b in itertools.pairwise(order))
