"""Built-in model builders for the ``models`` section: small MLP and CNN, and torchvision trunks.

Each builder is a function returning a ``torch.nn.Module``; the model YAML names it like any
other component (``trunk: {MLP: {hidden_sizes: [64], output_size: 32}}``). Sizes that depend on
the data or on the previous module default to placeholders filled in at build time
(``input_size: "@input_size"``, a classifier's ``output_size: "@num_classes"``); see
:data:`hyper_opt.metric_learning.components.PLACEHOLDERS`.

torch is imported inside the builders, so that listing the built-in names stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ACTIVATIONS = ("ReLU", "LeakyReLU", "GELU", "ELU", "Tanh", "SiLU")


def _activation(name: str) -> Any:
    from torch import nn

    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return getattr(nn, name)()


def MLP(input_size: int, output_size: int, hidden_sizes: Sequence[int] = (), *,  # noqa: N802 - a class to users
        activation: str = "ReLU", dropout: float = 0.0, batch_norm: bool = False,
        final_activation: bool = False) -> Any:
    """Flatten, then ``Linear`` layers through ``hidden_sizes`` to ``output_size``.

    Hidden layers are followed by the activation (and BatchNorm/Dropout when asked); the last
    layer is linear unless ``final_activation``.
    """
    from torch import nn

    if int(input_size) < 1 or int(output_size) < 1:
        raise ValueError(f"MLP sizes must be >= 1, got input_size={input_size!r}, output_size={output_size!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"MLP dropout must be in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(input_size)
    for hidden in hidden_sizes or ():
        layers.append(nn.Linear(width, int(hidden)))
        if batch_norm:
            layers.append(nn.BatchNorm1d(int(hidden)))
        layers.append(_activation(activation))
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        width = int(hidden)
    layers.append(nn.Linear(width, int(output_size)))
    if final_activation:
        layers.append(_activation(activation))
    return nn.Sequential(*layers)


def CNN(in_channels: int, output_size: int | None = None, channels: Sequence[int] = (32, 64), *,  # noqa: N802
        kernel_size: int = 3, activation: str = "ReLU", batch_norm: bool = True, pool: bool = True,
        global_pool: bool = True, dropout: float = 0.0) -> Any:
    """Conv blocks (conv, BatchNorm, activation, 2x2 max-pool while the image is larger than
    1x1), then global average pooling (or, with ``global_pool: false``, the flattened feature
    map, which keeps where features are) and a linear layer to ``output_size`` (none when null)."""
    import torch
    from torch import nn

    class _CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks: list[nn.Module] = []
            width = int(in_channels)
            for out in channels:
                layers: list[nn.Module] = [nn.Conv2d(width, int(out), int(kernel_size),
                                                     padding=int(kernel_size) // 2)]
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(out)))
                layers.append(_activation(activation))
                blocks.append(nn.Sequential(*layers))
                width = int(out)
            self.blocks = nn.ModuleList(blocks)
            self.pool = bool(pool)
            self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()
            if not output_size:
                self.head: nn.Module = nn.Identity()
            else:  # the flattened map's size is known at the first forward (hyper_opt runs one at once)
                self.head = nn.Linear(width, int(output_size)) if global_pool else nn.LazyLinear(int(output_size))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 3:  # (N, H, W): one channel
                x = x.unsqueeze(1)
            for block in self.blocks:
                x = block(x)
                if self.pool and min(x.shape[-2:]) >= 2:
                    x = nn.functional.max_pool2d(x, 2)
            x = x.mean(dim=(-2, -1)) if global_pool else x.flatten(1)
            return self.head(self.dropout(x))

    return _CNN()


def TorchvisionModel(name: str = "resnet50", weights: str | None = "DEFAULT", *,  # noqa: N802
                     remove_head: bool = True) -> Any:
    """A torchvision classification network as a trunk, its classifier head replaced by Identity.

    Needs ``torchvision`` (not a hyper_opt dependency). ``weights`` is torchvision's weights
    name (``DEFAULT``, ``IMAGENET1K_V2``, ...) or null for random initialisation; pretrained
    weights are downloaded by torchvision into its cache, so fetch them once before jobs run
    on nodes without network.
    """
    try:
        import torchvision
    except ImportError as err:
        raise ImportError("TorchvisionModel needs torchvision: pip install torchvision "
                          "(the version matching your torch)") from err
    from torch import nn

    model = torchvision.models.get_model(name, weights=weights)
    if remove_head:
        for attr in ("fc", "classifier", "head", "heads"):
            if isinstance(getattr(model, attr, None), nn.Module):
                setattr(model, attr, nn.Identity())
                break
        else:
            raise ValueError(f"TorchvisionModel: do not know how to remove the head of {name!r}; "
                             "set remove_head: false")
    return model


BUILTIN_MODELS = {"MLP": MLP, "CNN": CNN, "TorchvisionModel": TorchvisionModel}
