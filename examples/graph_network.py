"""A PyG graph network for node classification: the README's and the tests' GNN teacher.

`archsmith compress examples/graph_network.py:graph_network --inputs examples/graph_network.py:graph
--data examples/graph_network.py:graphs --invariance permutation ...`: the factory's keyword arguments
(hidden, layers) are its size knobs.
"""

import torch
from torch import nn
from torch_geometric.nn import GCNConv

FEATURES, CLASSES = 16, 5


class GraphNetwork(nn.Module):
    """Embed node features, `layers` residual GCN blocks, a per-node classifier: (N, FEATURES) -> (N, CLASSES)."""

    def __init__(self, hidden: int = 128, layers: int = 4):
        super().__init__()
        self.embed = nn.Linear(FEATURES, hidden)
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for conv, norm in zip(self.convs, self.norms):
            h = h + torch.relu(conv(norm(h), edge_index))
        return self.head(h)


def graph_network(hidden: int = 128, layers: int = 4) -> nn.Module:
    """The teacher: seeded, so every call builds the same one (a real factory would load trained weights here)."""
    torch.manual_seed(0)
    return GraphNetwork(hidden, layers)


def graph(seed: int = 0, nodes: int = 40) -> dict:
    """One random undirected graph: node features x (nodes, FEATURES) and edge_index (2, edges), each node linked
    to three others."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.arange(nodes).repeat_interleave(3)
    dst = (src + torch.randint(1, nodes, (src.numel(),), generator=gen)) % nodes
    edges = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    return {"x": torch.randn(nodes, FEATURES, generator=gen), "edge_index": edges}


def graphs() -> list:
    """40 graphs of 30 to 50 nodes, for calibration, distillation and held-out fidelity."""
    return [graph(seed, 30 + seed % 21) for seed in range(1, 41)]
