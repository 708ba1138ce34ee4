"""Embeddings and retrieval metrics with pytorch-metric-learning's ``AccuracyCalculator``.

Metrics are computed the way "A Metric Learning Reality Check" does: every sample of the
evaluated set is a query against all the others (``ref_includes_query``), with
``k="max_bin_count"`` so that MAP@R and R-precision see all R same-class neighbours. The kNN
runs on faiss when it is installed (``faiss-cpu`` or ``faiss-gpu``), otherwise on
pytorch-metric-learning's pure-torch ``CustomKNN(LpDistance())``: both rank by Euclidean
distance and give the same numbers. NMI/AMI cluster with faiss k-means, or scikit-learn's
without faiss.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

TORCH_KNN_BATCH = 4096  # query rows per block of the torch kNN: bounds its memory on large sets


@functools.lru_cache(maxsize=1)
def faiss_available() -> bool:
    if importlib.util.find_spec("faiss") is None:
        return False
    try:
        import faiss  # noqa: F401
    except Exception as err:  # a broken install (missing CUDA libraries, ...) is reported once
        logger.warning("faiss is installed but cannot be imported (%s); using the torch kNN", err)
        return False
    return True


def knn_backend(knn: str) -> str:
    """``faiss`` or ``torch`` for a setting of ``auto``, ``faiss`` or ``torch``."""
    if knn == "auto":
        return "faiss" if faiss_available() else "torch"
    if knn == "faiss" and not faiss_available():
        raise ImportError("evaluation:knn is 'faiss' but faiss cannot be imported: "
                          "pip install 'hyper_opt[faiss]' (or faiss-gpu)")
    return knn


class SklearnKMeans:
    """A ``kmeans_func`` for AccuracyCalculator that needs no faiss."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, x: Any, num_clusters: int) -> Any:
        import torch
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=int(num_clusters), n_init=5, random_state=self.seed).fit_predict(
            x.detach().cpu().numpy())
        return torch.as_tensor(labels, device=x.device)


def make_calculator(metrics: Sequence[str], *, knn: str = "auto", device: Any = "cpu", seed: int = 0) -> Any:
    """An AccuracyCalculator for ``metrics`` with ``k="max_bin_count"`` and the chosen kNN."""
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    device = torch.device(device)
    backend = knn_backend(knn)
    if backend == "faiss":
        from pytorch_metric_learning.utils.inference import FaissKMeans, FaissKNN

        import faiss

        knn_func = FaissKNN(reset_before=True, reset_after=True)
        gpu = device.type == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        kmeans_func = FaissKMeans(niter=20, gpu=gpu, seed=seed)
    else:
        knn_func = CustomKNN(LpDistance(normalize_embeddings=False, p=2, power=1), batch_size=TORCH_KNN_BATCH)
        kmeans_func = SklearnKMeans(seed)
    return AccuracyCalculator(include=tuple(metrics), k="max_bin_count", device=device,
                              knn_func=knn_func, kmeans_func=kmeans_func)


def accuracy(calculator: Any, query: Any, query_labels: Any, reference: Any = None,
             reference_labels: Any = None) -> dict[str, float]:
    """The calculator's metrics as plain floats. Without a reference, the query set is its own
    reference (each sample's own match excluded)."""
    import torch

    if reference is None:
        result = calculator.get_accuracy(query, query_labels)
    else:
        result = calculator.get_accuracy(query, query_labels, reference, reference_labels,
                                         ref_includes_query=False)
    out = {}
    for key, value in result.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = value
    return out


def _batch_parts(batch: Any) -> tuple[list[Any], Any]:
    """``(data, label)``, ``(anchor, posneg, label)`` or ``{"data", "label"}`` -> (streams, labels)."""
    if isinstance(batch, Mapping):
        return [batch["data"]], batch["label"]
    *streams, labels = batch
    return list(streams), labels


def compute_embeddings(models: Mapping[str, Any], dataset: Any, *, device: Any = "cpu", batch_size: int = 256,
                       normalize: bool = True, num_workers: int = 0) -> tuple[list[Any], Any]:
    """Embeddings (trunk then embedder, eval mode, no gradient) of every sample of ``dataset``:
    one tensor per stream (two for two-stream data), and the labels."""
    import torch

    trunk = models["trunk"]
    embedder = models.get("embedder") or torch.nn.Identity()
    was_training = [m.training for m in (trunk, embedder)]
    trunk.eval()
    embedder.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                                         num_workers=num_workers)
    streams: list[list[Any]] = []
    labels = []
    try:
        with torch.no_grad():
            for batch in loader:
                data, y = _batch_parts(batch)
                if not streams:
                    streams = [[] for _ in data]
                for i, x in enumerate(data):
                    emb = embedder(trunk(x.to(device)))
                    emb = emb.reshape(len(emb), -1).float()
                    if normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    streams[i].append(emb.cpu())
                labels.append(torch.as_tensor(y).cpu())
    finally:
        trunk.train(was_training[0])
        embedder.train(was_training[1])
    if not labels:
        raise ValueError("cannot evaluate an empty dataset")
    return [torch.cat(s) for s in streams], torch.cat(labels)


def evaluate(models: Mapping[str, Any], dataset: Any, calculator: Any, *, device: Any = "cpu",
             batch_size: int = 256, normalize: bool = True, num_workers: int = 0) -> dict[str, float]:
    """The metrics of ``models`` on ``dataset`` (each sample queried against the others; for
    two-stream data the first stream queries the second). Non-finite embeddings (a diverged
    model) score 0 on every metric."""
    import torch

    embeddings, labels = compute_embeddings(models, dataset, device=device, batch_size=batch_size,
                                            normalize=normalize, num_workers=num_workers)
    if not all(bool(torch.isfinite(e).all()) for e in embeddings):
        return {name: 0.0 for name in calculator.get_curr_metrics()}
    if len(embeddings) == 2:
        return accuracy(calculator, embeddings[0], labels, embeddings[1], labels)
    return accuracy(calculator, embeddings[0], labels)
