"""The DDP example: a small MLP trained with DistributedDataParallel, two ranks per trial.

hyper_opt starts ``gpus_per_trial`` rank processes for each trial with the environment torchrun
gives them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, CUDA_VISIBLE_DEVICES) and
calls ``train(trial, conf)`` on every one of them. ``train`` is what the body of a torchrun
script would be: open the process group, shard the data with a ``DistributedSampler``, wrap the
model in ``DistributedDataParallel``, close the group at the end. The differences:

- the parameters come in ``conf`` (and from ``trial.suggest_*``, which gives every rank the same
  value); every rank gets the same ``conf``;
- ``self.report(trial, val_loss, epoch)`` after every epoch, on every rank: rank 0's value is
  recorded, and every rank raises ``optuna.TrialPruned`` at the same epoch when the pruner says so;
- ``self.save_checkpoint`` writes on rank 0 only, ``self.load_checkpoint`` reads on every rank, so
  a trial stopped by the end of its job resumes with all its ranks.

The data are synthetic (a random teacher network, generated from ``seed`` on every rank), so
nothing is downloaded and every rank holds the same data set without any file.
"""

from __future__ import annotations

import datetime
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from hyper_opt import BaseObjective

# Each rank is a process of its own; on a few shared cores one thread each avoids contention.
torch.set_num_threads(1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_data(conf: dict[str, Any]) -> tuple[TensorDataset, TensorDataset]:
    """A regression task: y = teacher(x) + noise, with a fixed random teacher. The same seed gives
    the same data on every rank; the DistributedSampler then gives each rank its share."""
    d = conf["data"]
    generator = torch.Generator().manual_seed(int(conf["seed"]))
    features = int(d["features"])
    n_train, n_valid = int(d["train_size"]), int(d["valid_size"])
    x = torch.randn(n_train + n_valid, features, generator=generator)
    w1 = torch.randn(features, 32, generator=generator) / features ** 0.5
    w2 = torch.randn(32, 1, generator=generator) / 32 ** 0.5
    y = torch.tanh(x @ w1) @ w2 + float(d["noise"]) * torch.randn(n_train + n_valid, 1, generator=generator)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def build_model(conf: dict[str, Any]) -> nn.Module:
    m = conf["model"]
    layers: list[nn.Module] = []
    width = int(conf["data"]["features"])
    for _ in range(int(m["num_layers"])):
        layers += [nn.Linear(width, int(m["hidden_size"])), nn.ReLU(), nn.Dropout(float(m["dropout"]))]
        width = int(m["hidden_size"])
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def to_cpu(state: Any) -> Any:
    """A state dict with every tensor on the CPU, so that any rank (any GPU) can load it."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def validate(model: nn.Module, valid: TensorDataset, device: torch.device) -> float:
    """Mean squared error over the whole validation set: each rank scores every WORLD_SIZE-th
    sample (no padding, unlike a DistributedSampler), and the sums are added across ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = valid.tensors
    model.eval()
    with torch.no_grad():
        mine = torch.arange(rank, len(x), world)
        error = nn.functional.mse_loss(model(x[mine].to(device)), y[mine].to(device), reduction="sum")
    totals = torch.stack([error, torch.tensor(float(len(mine)), device=device)])
    dist.all_reduce(totals)  # the same value on every rank, so every rank reports the same number
    return (totals[0] / totals[1]).item()


class Objective(BaseObjective):
    def __init__(self, config, metric="val_loss", device="cpu"):
        BaseObjective.__init__(self, config, metric, device)

    def train(self, trial, conf):
        # self.device is cuda:<LOCAL_RANK> when this rank's GPU is visible to torch, else cpu.
        device = torch.device(self.device)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        # NCCL needs a GPU of its own per rank; gloo works on the CPU (and with ranks sharing a GPU).
        backend = "nccl" if gpus >= int(os.environ["LOCAL_WORLD_SIZE"]) else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=5))  # env://, as under torchrun
        try:
            return self._fit(trial, conf, device)
        finally:
            dist.destroy_process_group()  # also when report() raised TrialPruned or Interrupted

    def _fit(self, trial, conf, device: torch.device) -> dict[str, Any]:
        seed = int(conf["seed"])
        seed_everything(seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        train_set, valid_set = make_data(conf)
        sampler = DistributedSampler(train_set, shuffle=True, seed=seed)  # rank and world size from the group
        loader = DataLoader(train_set, batch_size=int(conf["trainer"]["batch_size"]), sampler=sampler)
        model = build_model(conf).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(conf["optimizer"]["learning_rate"]),
                                     weight_decay=float(conf["optimizer"]["weight_decay"]))
        best: dict[str, Any] = {}
        first_epoch = 0
        state = self.load_checkpoint(trial)  # every rank reads rank 0's last checkpoint, if the trial resumes
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best, first_epoch = state["best"], state["epoch"]
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        rank, world = dist.get_rank(), dist.get_world_size()
        for epoch in range(first_epoch, int(conf["trainer"]["epochs"])):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            ddp.train()
            total, seen = 0.0, 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(ddp(x), y)
                loss.backward()  # DDP averages the gradients across ranks here
                optimizer.step()
                total, seen = total + loss.item() * len(x), seen + len(x)
            val_loss = validate(model, valid_set, device)
            print(f"rank {rank}: epoch {epoch} val_loss {val_loss:.6f}", flush=True)  # in this rank's log
            if not best or val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "loss": total / max(seen, 1), "best_epoch": epoch,
                        "world_size": world}
            # Written by rank 0 only; before report(), where a trial stops when its job is ending.
            self.save_checkpoint(trial, {"epoch": epoch + 1, "model": to_cpu(model.state_dict()),
                                         "optimizer": to_cpu(optimizer.state_dict()), "best": best})
            self.report(trial, val_loss, epoch)  # TrialPruned on every rank at the same epoch
        return best
