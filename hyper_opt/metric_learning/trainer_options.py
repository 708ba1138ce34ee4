"""The trainer options pytorch-metric-learning's ``BaseTrainer`` takes beyond what hyper_opt
fills in, checked up front, and mixed precision (which its trainers lack) as a trainer subclass.

In the model YAML they are keyword arguments of the trainer::

    trainer:
      MetricLossOnly:
        freeze_trunk_batchnorm: true          # BatchNorm layers of the trunk stay in eval mode
        freeze_these: [trunk]                 # keys of models / loss_funcs: not trained
        label_hierarchy_level: 0              # column of 2-D labels (1-D labels: ignored); or "all"
        gradient_clippers:                    # <model or loss key>_grad_clipper:
          trunk_grad_clipper: 1.0             #   max L2 norm (torch.nn.utils.clip_grad_norm_)
          embedder_grad_clipper: {max_norm: 5.0, norm_type: 2}
          metric_loss_grad_clipper: {clip_value: 0.5}   # torch.nn.utils.clip_grad_value_

and ``mixed_precision: true`` at the top level trains under ``torch.autocast`` with a gradient
scaler on CUDA devices (float16); on a CPU it is ignored with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

CLIPPER_SUFFIX = "_grad_clipper"
NORM_KEYS = ("max_norm", "norm_type")
VALUE_KEYS = ("clip_value",)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def problems(kwargs: Mapping[str, Any], path: str, *, targets: Sequence[str] | None) -> list[str]:
    """Problems of the trainer's ``freeze_these``, ``freeze_trunk_batchnorm``,
    ``label_hierarchy_level`` and ``gradient_clippers`` (``targets``: keys of models and loss_funcs;
    None when unknown, e.g. for a model-definition file)."""
    found = []
    names = ", ".join(sorted(targets)) if targets is not None else "any"
    if "freeze_trunk_batchnorm" in kwargs and not isinstance(kwargs["freeze_trunk_batchnorm"], bool):
        found.append(f"{path}:freeze_trunk_batchnorm: must be true or false, got {kwargs['freeze_trunk_batchnorm']!r}")
    if "freeze_these" in kwargs:
        value = kwargs["freeze_these"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            found.append(f"{path}:freeze_these: must be a list of keys of models or loss_funcs ({names}), "
                         f"got {value!r}")
        else:
            found += [f"{path}:freeze_these: {v!r} is not a key of models or loss_funcs ({names})"
                      for v in value if targets is not None and v not in targets]
    if "label_hierarchy_level" in kwargs:
        value = kwargs["label_hierarchy_level"]
        if value != "all" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            found.append(f"{path}:label_hierarchy_level: must be an integer >= 0 or 'all', got {value!r}")
    if "gradient_clippers" in kwargs:
        clippers = kwargs["gradient_clippers"]
        if not isinstance(clippers, Mapping):
            found.append(f"{path}:gradient_clippers: must be a mapping <key>{CLIPPER_SUFFIX}: max_norm, "
                         f"got {clippers!r}")
            return found
        for key, spec in clippers.items():
            where = f"{path}:gradient_clippers:{key}"
            target = str(key)[: -len(CLIPPER_SUFFIX)] if str(key).endswith(CLIPPER_SUFFIX) else None
            if target is None or (targets is not None and target not in targets):
                found.append(f"{where}: keys are <name>{CLIPPER_SUFFIX} where <name> is a key of models or "
                             f"loss_funcs ({names})")
                continue
            found += _clipper_problems(spec, where)
    return found


def _clipper_problems(spec: Any, where: str) -> list[str]:
    if _number(spec):
        return [] if spec > 0 else [f"{where}: max_norm must be > 0, got {spec!r}"]
    if not isinstance(spec, Mapping):
        return [f"{where}: a max_norm (number), {{max_norm: x, norm_type: 2}} or {{clip_value: x}}, got {spec!r}"]
    keys = set(spec)
    if keys <= set(NORM_KEYS) and "max_norm" in keys:
        bad = [k for k in keys if not _number(spec[k]) or spec[k] <= 0]
    elif keys == set(VALUE_KEYS):
        bad = [k for k in keys if not _number(spec[k]) or spec[k] <= 0]
    else:
        return [f"{where}: allowed keys: max_norm (with norm_type) or clip_value, got {sorted(map(str, keys))}"]
    return [f"{where}:{k}: must be a number > 0, got {spec[k]!r}" for k in bad]


def gradient_clippers(spec: Mapping[str, Any], modules: Mapping[str, Any]) -> dict[str, Any]:
    """``<key>_grad_clipper`` -> a callable clipping the gradients of ``modules[key]`` (as
    pytorch-metric-learning's trainers call them, after backward and before the optimizer step)."""
    out = {}
    for key, value in spec.items():
        module = modules.get(key[: -len(CLIPPER_SUFFIX)])
        if module is None or not any(p.requires_grad for p in module.parameters()):
            continue
        out[key] = Clipper(module, {"max_norm": value} if _number(value) else dict(value))
    return out


class Clipper:
    """Clip one module's gradients by norm (``max_norm``, ``norm_type``) or value (``clip_value``);
    a batch that gave the module no gradient (e.g. no triplet mined) is left alone."""

    def __init__(self, module: Any, spec: Mapping[str, Any]) -> None:
        self.module, self.spec = module, dict(spec)

    def __call__(self) -> None:
        import torch

        params = [p for p in self.module.parameters() if p.grad is not None]
        if not params:
            return
        if "clip_value" in self.spec:
            torch.nn.utils.clip_grad_value_(params, clip_value=float(self.spec["clip_value"]))
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm=float(self.spec["max_norm"]),
                                           norm_type=float(self.spec.get("norm_type", 2.0)))


def with_mixed_precision(trainer_class: type) -> type:
    """A subclass of a pytorch-metric-learning trainer whose forward pass runs under
    ``torch.autocast("cuda", float16)`` and whose backward pass goes through a GradScaler
    (gradients are unscaled before the clippers run; steps with inf/NaN gradients are skipped)."""
    import torch

    class MixedPrecision(trainer_class):  # type: ignore[misc, valid-type]
        def custom_setup(self) -> None:
            super().custom_setup()
            self.grad_scaler = torch.amp.GradScaler("cuda")

        def calculate_loss(self, curr_batch: Any) -> Any:
            with torch.autocast("cuda", dtype=torch.float16):
                return super().calculate_loss(curr_batch)

        def backward(self) -> None:
            self.grad_scaler.scale(self.losses["total_loss"]).backward()

        def clip_gradients(self) -> None:
            for optimizer in self.optimizers.values():
                self.grad_scaler.unscale_(optimizer)
            super().clip_gradients()

        def step_optimizers(self) -> None:
            from pytorch_metric_learning.utils import common_functions as c_f

            for key, optimizer in self.optimizers.items():
                if c_f.regex_replace("_optimizer$", "", key) not in self.freeze_these:
                    self.grad_scaler.step(optimizer)
            self.grad_scaler.update()

    MixedPrecision.__name__ = MixedPrecision.__qualname__ = f"MixedPrecision{trainer_class.__name__}"
    return MixedPrecision


def enable_mixed_precision(trainer: Any) -> Any:
    """Turn a built trainer into its :func:`with_mixed_precision` subclass (in place)."""
    import torch

    trainer.__class__ = with_mixed_precision(type(trainer))
    trainer.grad_scaler = torch.amp.GradScaler("cuda")
    return trainer
