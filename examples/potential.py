"""An e3nn equivariant interatomic potential: energy per structure from species and 3-D positions.

The energy is invariant under rotations and atom permutations; forces (-dE/dpos) rotate with the structure.
The factory's keyword arguments are its size knobs: `mul` (channels per irrep), `lmax` (the largest spherical
harmonic order of the features and the edge filters) and `layers` (interaction blocks).
"""

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, NormActivation
from torch import nn

SPECIES, RADIUS, BASIS = 4, 3.0, 8


class Interaction(nn.Module):
    """Messages h_j (x) Y(r_ij) weighted by a radial MLP of |r_ij|, summed on i, mixed, a norm nonlinearity, residual."""

    def __init__(self, irreps: o3.Irreps, sh: o3.Irreps):
        super().__init__()
        self.tp = o3.FullyConnectedTensorProduct(irreps, sh, irreps, shared_weights=False)
        self.radial = FullyConnectedNet([BASIS, 16, self.tp.weight_numel], torch.nn.functional.silu)
        self.mix = o3.Linear(irreps, irreps)
        self.act = NormActivation(irreps, torch.sigmoid)

    def forward(self, h, edge_sh, edge_basis, edge_index):
        src, dst = edge_index
        messages = self.tp(h[src], edge_sh, self.radial(edge_basis))
        summed = torch.zeros_like(h).index_add(0, dst, messages)
        return h + self.act(self.mix(summed))


class Potential(nn.Module):
    """(x: (atoms, SPECIES) one-hot, pos: (atoms, 3) in Angstrom, edge_index: (2, edges), batch: (atoms,)) -> energy
    per structure (structures,)."""

    def __init__(self, mul: int = 16, lmax: int = 2, layers: int = 2, structures: int = 2):
        super().__init__()
        self.lmax, self.structures = lmax, structures
        self.sh = o3.Irreps.spherical_harmonics(lmax)
        irreps = o3.Irreps([(mul, (l, (-1) ** l)) for l in range(lmax + 1)])
        self.embed = o3.Linear(o3.Irreps(f"{SPECIES}x0e"), irreps)
        self.blocks = nn.ModuleList(Interaction(irreps, self.sh) for _ in range(layers))
        self.readout = o3.Linear(irreps, o3.Irreps("0e"))

    def forward(self, x, pos, edge_index, batch):
        src, dst = edge_index
        vec = pos[dst] - pos[src]
        edge_sh = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        edge_basis = soft_one_hot_linspace(vec.norm(dim=1), 0.0, RADIUS, BASIS, basis="smooth_finite", cutoff=True)
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, edge_sh, edge_basis, edge_index)
        atomic = self.readout(h).squeeze(-1)
        return torch.zeros(self.structures, dtype=atomic.dtype).index_add(0, batch, atomic)


def potential(mul: int = 16, lmax: int = 2, layers: int = 2) -> nn.Module:
    """The teacher: seeded, so every call builds the same one (a real factory would load trained weights here)."""
    torch.manual_seed(0)
    return Potential(mul, lmax, layers)


def structures(seed: int = 0, atoms: int = 12) -> dict:
    """Two random structures of `atoms` atoms each in a 4 Angstrom box, edges within RADIUS (both directions)."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(2 * atoms, 3, generator=gen) * 4.0
    batch = torch.arange(2).repeat_interleave(atoms)
    species = torch.randint(0, SPECIES, (2 * atoms,), generator=gen)
    near = (torch.cdist(pos, pos) < RADIUS) & (batch[:, None] == batch[None, :]) & ~torch.eye(2 * atoms, dtype=torch.bool)
    return {"x": nn.functional.one_hot(species, SPECIES).float(), "pos": pos, "edge_index": near.nonzero().t().contiguous(),
            "batch": batch}


def many() -> list:
    """128 pairs of structures for calibration, distillation and held-out fidelity."""
    return [structures(seed) for seed in range(1, 129)]
