"""Plain-torch models for `archsmith analyze file.py:factory`: a small CNN and a message-passing graph network.

Each factory returns (module, example_inputs), the contract analyze and export read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two conv blocks and a classifier. x (B, 3, 32, 32) -> logits (B, 10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def cnn():
    torch.manual_seed(0)
    return SmallCNN(), (torch.randn(4, 3, 32, 32),)


class MessagePassing(nn.Module):
    """One round: m_ij = mlp([h_i, h_j]) on each edge j -> i, summed into i with index_add, then a GRU update.

    h (N, F) node features, edge_index (2, E) source/target node ids.
    """

    def __init__(self, width: int):
        super().__init__()
        self.message = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.update = nn.GRUCell(width, width)

    def forward(self, h: Tensor, edge_index: Tensor) -> Tensor:
        src, dst = edge_index
        messages = self.message(torch.cat([h[dst], h[src]], dim=-1))
        summed = torch.zeros_like(h).index_add_(0, dst, messages)
        return self.update(summed, h)


class GraphNet(nn.Module):
    """Encoder, K message-passing rounds (one shared layer), mean-pool readout. -> (1, classes)."""

    def __init__(self, features: int = 8, width: int = 32, rounds: int = 3, classes: int = 4):
        super().__init__()
        self.encode = nn.Linear(features, width)
        self.layer = MessagePassing(width)
        self.rounds = rounds
        self.readout = nn.Linear(width, classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.encode(x)
        for _ in range(self.rounds):
            h = self.layer(h, edge_index)
        return self.readout(h.mean(0, keepdim=True))


def graph_net():
    torch.manual_seed(0)
    nodes, edges = 50, 200
    return GraphNet(), (torch.randn(nodes, 8), torch.randint(0, nodes, (2, edges)))


@torch.library.custom_op("archsmith_test::wobble", mutates_args=())
def wobble(x: Tensor) -> Tensor:
    """A custom op with no ONNX translation: export to ONNX must name it."""
    return x.sin() * 2


@wobble.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class Wobbly(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        return wobble(self.proj(x))


def wobbly():
    torch.manual_seed(0)
    return Wobbly(), (torch.randn(2, 8),)


class Branchy(nn.Module):
    """Python control flow on a tensor value: analyze must flag it, torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(x)
        if y.sum() > 0:
            return y.relu()
        return -y


def branchy():
    torch.manual_seed(0)
    return Branchy(), (torch.randn(2, 8),)


class GraphReadout(nn.Module):
    """PyG-style per-graph sum readout: x (N, F) node features, batch (N,) graph ids -> (graphs, width).

    Like library code that picks a segment-sum path when sizes are symbolic (contiguous runs, as PyG's Batch lays
    graphs out), it is right for any order of `batch` in eager and with fixed shapes, and right only for sorted ids
    when exported with a dynamic node count: the failure `archsmith export` must name.
    """

    def __init__(self, features: int = 4, width: int = 3, graphs: int = 3):
        super().__init__()
        self.encode = nn.Linear(features, width)
        self.graphs = graphs

    def forward(self, x: Tensor, batch: Tensor) -> Tensor:
        h = self.encode(x)
        if isinstance(batch.shape[0], torch.SymInt):  # traced with a dynamic node count: segments of sorted ids
            counts = torch.bincount(batch, minlength=self.graphs)
            ends = torch.cumsum(counts, 0)
            running = torch.cat([h.new_zeros(1, h.shape[1]), h.cumsum(0)])
            return running[ends] - running[ends - counts]
        return h.new_zeros(self.graphs, h.shape[1]).index_add_(0, batch, h)


def graph_readout():
    torch.manual_seed(0)
    return GraphReadout(), (torch.randn(9, 4), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]))  # sorted ids, as in a batch
