"""The models clients train, and helpers to move between parameter dicts and flat vectors.

Models are ordinary ``torch.nn.Module``s so the sequential reference path can use
them as written; the batched path calls the same module through
``torch.func.functional_call`` with stacked parameters ``{name: [K, ...]}``.
The flat order of parameters (for update norms, sketches, DP clipping) is the
order of ``named_parameters()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODELS = ("logreg", "mlp")

Params = dict[str, torch.Tensor]


def make_model(
    kind: str, in_features: int, num_classes: int, hidden: Sequence[int] = (64,), *, seed: int = 0
) -> nn.Module:
    """Logistic regression (one linear layer) or an MLP with ReLU hidden layers.

    Initialisation is PyTorch's default under ``torch.manual_seed(seed)``, drawn
    inside ``fork_rng`` so the caller's global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "logreg":
            model: nn.Module = nn.Sequential(nn.Linear(in_features, num_classes))
        elif kind == "mlp":
            layers: list[nn.Module] = []
            width = in_features
            for h in hidden:
                layers += [nn.Linear(width, int(h)), nn.ReLU()]
                width = int(h)
            layers.append(nn.Linear(width, num_classes))
            model = nn.Sequential(*layers)
        else:
            raise ValueError(f"unknown model {kind!r}; expected one of {', '.join(MODELS)}")
    return model.float()


def get_params(model: nn.Module) -> Params:
    """Detached copies of the model's parameters."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def num_params(params: Params) -> int:
    return sum(p.numel() for p in params.values())


def flatten(params: Params) -> torch.Tensor:
    """``{name: [*shape]}`` -> ``[P]``."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def flatten_stacked(params: Params) -> torch.Tensor:
    """``{name: [K, *shape]}`` -> ``[K, P]``."""
    first = next(iter(params.values()))
    return torch.cat([p.reshape(first.shape[0], -1) for p in params.values()], dim=1)


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """``[P]`` -> ``{name: [*shape]}`` with the shapes of ``like``."""
    out: Params = {}
    start = 0
    for name, p in like.items():
        out[name] = vector[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out
