"""Collects what the pass decided and the graphs it produced, for `fp8pass.explain`."""

from __future__ import annotations

import torch


def snapshot_graph(graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """A copy of `graph` as a GraphModule (Inductor goes on mutating the original)."""
    copy = torch.fx.Graph()
    out = copy.graph_copy(graph, {})
    copy.output(out)
    return torch.fx.GraphModule(torch.nn.Module(), copy)


class Recorder:
    def __init__(self, keep_graphs: bool = True):
        self.keep_graphs = keep_graphs
        self.records = []
        self.graphs: dict[str, torch.fx.GraphModule] = {}
        self.before: dict[str, torch.fx.GraphModule] = {}  # joint/inference graphs as the pass got them
        self._graphs_compiled = 0

    def next_graph_index(self) -> int:
        self._graphs_compiled += 1
        return self._graphs_compiled - 1

    def add_records(self, records) -> None:
        self.records.extend(records)

    def add_graph(self, name: str, graph: torch.fx.Graph, before: bool = False) -> None:
        if not self.keep_graphs:
            return
        target = self.before if before else self.graphs
        try:
            target[name] = snapshot_graph(graph)
        except Exception as exc:  # noqa: BLE001  (a graph we cannot copy must not fail the compile)
            target[name] = f"<graph could not be copied: {exc}>"
