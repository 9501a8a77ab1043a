"""The Jensen-Shannon mutual-information estimator shared by the distillation methods (CorrKD's RCD, HRLF's HMI)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from msabench.methods._blocks import mlp


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (a random cycle through all n; identity for n < 2)."""
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def jsd_mi(stat: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
           perm: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI estimate (Deep InfoMax form) between paired rows of x and y.

    E_joint[-softplus(-T(x, y))] - E_shuffled[softplus(T(x, y[perm]))], where ``stat(x, y)`` returns one score per
    row and ``perm`` pairs each x with another sample's y. Higher means more shared information: a loss maximising
    MI subtracts it.
    """
    joint = stat(x, y).reshape(-1)
    marginal = stat(x, y[perm.to(y.device)]).reshape(-1)
    return (-F.softplus(-joint)).mean() - F.softplus(marginal).mean()


class StatisticsNet(nn.Module):
    """T_theta(x, y): an MLP on the concatenated pair, one score per row."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp([2 * dim, hidden, hidden, 1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)
