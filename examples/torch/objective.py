"""The torch example: a small MLP on scikit-learn's digits (8x8 images, 10 classes).

After every epoch the validation loss goes to optuna with ``self.report(trial, value, epoch)``,
which raises ``optuna.TrialPruned`` when the study's pruner says the trial is not worth
finishing (it is then recorded as PRUNED). Each epoch ends with ``self.save_checkpoint``; a trial
stopped by a Slurm time limit or preemption is re-queued and resumes from ``self.load_checkpoint``
in the requeued job. Every trial starts from the same seed, so two trials
with the same parameters give the same result, and differences come from the parameters alone.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from hyper_opt import BaseObjective

# Several worker processes share the machine's cores: one thread each is faster than contention.
torch.set_num_threads(1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and GPU); return a generator for the batch order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=4)
def load_data(validation_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """load_digits (shipped with scikit-learn, nothing is downloaded), split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")  # pixel values are 0..16
    return tuple(train_test_split(x, y.astype("int64"), test_size=validation_fraction,
                                  random_state=seed, stratify=y))


def build_model(conf: dict[str, Any]) -> nn.Module:
    m = conf["model"]
    layers: list[nn.Module] = []
    width = 64
    for _ in range(int(m["num_layers"])):
        layers += [nn.Linear(width, int(m["hidden_size"])), nn.ReLU(), nn.Dropout(float(m["dropout"]))]
        width = int(m["hidden_size"])
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


class Objective(BaseObjective):
    def __init__(self, config, metric="val_loss", device="cpu"):  # the echo-opt shape
        BaseObjective.__init__(self, config, metric, device)

    def train(self, trial, conf):
        generator = seed_everything(int(conf["seed"]))
        device = torch.device(self.device)  # "cuda:0" when the worker was given one GPU
        x_train, x_valid, y_train, y_valid = (
            torch.as_tensor(a, device=device)
            for a in load_data(float(conf["data"]["validation_fraction"]), int(conf["seed"])))
        model = build_model(conf).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(conf["optimizer"]["learning_rate"]),
                                     weight_decay=float(conf["optimizer"]["weight_decay"]))
        batch_size = int(conf["trainer"]["batch_size"])
        smoothing = float(conf["trainer"].get("label_smoothing", 0.0))
        best: dict[str, float] = {}
        first_epoch = 0
        state = self.load_checkpoint(trial)  # set when this trial was stopped by a job's end
        if state is not None:  # resume where it stopped, not from scratch
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            best, first_epoch = state["best"], state["epoch"]
        for epoch in range(first_epoch, int(conf["trainer"]["epochs"])):
            model.train()
            order = torch.randperm(len(x_train), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch],
                                                   label_smoothing=smoothing)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            val_loss, val_accuracy = evaluate(model, x_valid, y_valid)
            if not best or val_loss < best["val_loss"]:  # the epoch an early-stopping run would keep
                best = {"val_loss": val_loss, "loss": total / len(order), "val_accuracy": val_accuracy,
                        "best_epoch": epoch}
            # Before reporting: report() is where a trial stops when its job is about to end.
            self.save_checkpoint(trial, {"epoch": epoch + 1, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                         "torch_rng": torch.get_rng_state(), "best": best})
            self.report(trial, val_loss, epoch)  # raises optuna.TrialPruned when the pruner says so
        return best
