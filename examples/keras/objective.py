"""The Keras example: a small dense network on scikit-learn's digits (8x8 images, 10 classes).

Keras 3 runs on the torch backend here, so no TensorFlow is needed. Each epoch's ``val_loss``
goes to optuna through :class:`hyper_opt.KerasPruningCallback`, so that the study's pruner can
stop a bad trial early (it is then recorded as PRUNED).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import functools  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hyper_opt import BaseObjective, KerasPruningCallback  # noqa: E402

# Several worker processes share the machine's cores: one thread each is faster than contention.
torch.set_num_threads(1)


def custom_updates(trial: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """Derived settings: ``num_dense`` is not a path of model_config.yml, so it patches nothing
    by itself; here it sets the number of hidden layers. hyper_opt calls this after the colon
    paths have been patched (``train`` need not call it again)."""
    conf["model"]["hidden_layers"] = int(trial.params["num_dense"])
    return conf


@functools.lru_cache(maxsize=4)
def load_data(validation_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """load_digits (shipped with scikit-learn, nothing is downloaded), split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")  # pixel values are 0..16
    return tuple(train_test_split(x, y.astype("int64"), test_size=validation_fraction,
                                  random_state=seed, stratify=y))


def build_model(conf: dict[str, Any]) -> keras.Model:
    m = conf["model"]
    layers: list[Any] = [keras.Input(shape=(64,))]
    for _ in range(int(m["hidden_layers"])):
        layers.append(keras.layers.Dense(int(m["units"]), activation=m["activation"]))
        layers.append(keras.layers.Dropout(float(m["dropout"])))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


class Objective(BaseObjective):
    def __init__(self, study, config, metric="val_loss", device="cpu"):  # the aimlutils shape
        BaseObjective.__init__(self, study, config, metric, device)

    def train(self, trial, conf):
        keras.utils.set_random_seed(int(conf["seed"]))  # python, numpy and torch: same start per trial
        x_train, x_valid, y_train, y_valid = load_data(float(conf["data"]["validation_fraction"]),
                                                       int(conf["seed"]))
        model = build_model(conf)
        optimizer = keras.optimizers.get({
            "class_name": conf["optimizer"]["name"],
            "config": {"learning_rate": float(conf["optimizer"]["learning_rate"])},
        })
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(
            x_train, y_train,
            validation_data=(x_valid, y_valid),
            epochs=int(conf["trainer"]["epochs"]),
            batch_size=int(conf["trainer"]["batch_size"]),
            shuffle=True,
            verbose=0,
            callbacks=[KerasPruningCallback(trial, monitor="val_loss")],  # raises TrialPruned
        ).history
        best = int(np.argmin(history["val_loss"]))  # the epoch an early-stopping run would keep
        return {
            "val_loss": history["val_loss"][best],
            "loss": history["loss"][best],
            "val_accuracy": history["val_accuracy"][best],
            "best_epoch": best,
        }
