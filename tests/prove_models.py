"""Models for tests/test_proof.py: healthy ones `prove` must pass, and defective ones, each built to carry one
defect `prove` must find. Factories return (module, example_inputs), as `archsmith analyze` takes them."""

import random

import torch
from torch import nn


# ---- healthy ------------------------------------------------------------------------------------------

def cnn():
    """Conv-BatchNorm-ReLU x3, pooled, a linear classifier: (4, 3, 16, 16) -> (4, 10)."""
    layers, width = [], 3
    for out in (16, 32, 32):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    return model, (torch.randn(4, 3, 16, 16),)


class VAE(nn.Module):
    """x (batch, 20) -> (reconstruction, mu, logvar); z = mu + exp(logvar / 2) * noise."""

    def __init__(self, features: int = 20, latent: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, 32), nn.ReLU())
        self.mu, self.logvar = nn.Linear(32, latent), nn.Linear(32, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, features))

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(z), mu, logvar


def vae():
    return VAE(), (torch.randn(8, 20),)


# ---- one defect each --------------------------------------------------------------------------------------

class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(8, 8), nn.Linear(8, 8)  # spare is never called

    def forward(self, x):
        return self.used(x)


def unused():
    return Unused(), (torch.randn(4, 8),)


def deep_sigmoid():
    """24 sigmoid layers with small weights: gradients shrink by ~1/4 x the weights' gain per layer."""
    layers = []
    for _ in range(24):
        linear = nn.Linear(16, 16)
        nn.init.normal_(linear.weight, std=0.05)
        layers += [linear, nn.Sigmoid()]
    return nn.Sequential(*layers), (torch.randn(4, 16),)


def deep_linear():
    """12 linear layers with weights 3x too large and no normalisation: activations grow ~3x per layer."""
    layers = []
    for _ in range(12):
        linear = nn.Linear(32, 32)
        nn.init.normal_(linear.weight, std=3 / 32 ** 0.5)
        layers += [linear]
    return nn.Sequential(*layers), (torch.randn(4, 32),)


class Cancelling(nn.Module):
    """Adds and subtracts a large offset: exact in fp32, lost in bf16's 8-bit mantissa."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return (self.linear(x) + 1000.0) - 1000.0


def cancelling():
    return Cancelling(), (torch.randn(4, 8),)


class PythonRandom(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        with torch.no_grad():
            self.linear.weight.mul_(random.random())  # Python's RNG: torch.manual_seed does not fix it

    def forward(self, x):
        return self.linear(x)


def python_random():
    return PythonRandom(), (torch.randn(4, 8),)


class ExplicitBreak(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        y = self.linear(x)
        torch._dynamo.graph_break()  # what an unsupported call does to torch.compile
        return y * 2


def graph_break():
    return ExplicitBreak(), (torch.randn(4, 8),)


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        y = self.linear(x)
        if y.sum() > 0:  # data-dependent control flow: a graph break, and torch.export cannot trace it
            return y
        return -y


def branch():
    return Branch(), (torch.randn(4, 8),)


class IndexTerm(nn.Module):
    """Per-node outputs plus a term of the node's position in the list: not permutation-equivariant."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x):
        return self.linear(x) + 0.1 * torch.arange(x.shape[0], dtype=x.dtype)[:, None]


def index_term():
    return IndexTerm(), {"x": torch.randn(10, 8)}


class Denoiser(nn.Module):
    """A diffusers UNet2DModel as a denoiser: (noisy images (2, 3, 8, 8), timesteps (2,)) -> predicted noise."""

    def __init__(self):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                norm_num_groups=4, attention_head_dim=8)

    def forward(self, sample, timestep):
        return self.unet(sample, timestep).sample


def unet():
    return Denoiser(), (torch.randn(2, 3, 8, 8), torch.tensor([10, 500]))
