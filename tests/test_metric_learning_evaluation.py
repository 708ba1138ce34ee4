"""Retrieval metrics: hand-computed values, an independent implementation, faiss vs torch kNN."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt.metric_learning.evaluation import (  # noqa: E402
    accuracy,
    compute_embeddings,
    evaluate,
    faiss_available,
    knn_backend,
    make_calculator,
)

METRICS = ("mean_average_precision_at_r", "precision_at_1", "r_precision")


def brute_force(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAP@R, P@1 and R-precision straight from their definitions (every sample queries all the
    others; R = number of other samples of its class; samples alone in their class are skipped)."""
    dist = np.linalg.norm(embeddings[:, None, :] - embeddings[None, :, :], axis=2)
    p1, rprec, map_r = [], [], []
    for i in range(len(labels)):
        order = [j for j in np.argsort(dist[i], kind="stable") if j != i]
        relevant = labels[order] == labels[i]
        r = int(relevant.sum())
        if r == 0:
            continue
        p1.append(float(relevant[0]))
        rprec.append(relevant[:r].mean())
        hits = np.cumsum(relevant[:r])
        map_r.append(sum(hits[k] / (k + 1) for k in range(r) if relevant[k]) / r)
    return {"mean_average_precision_at_r": float(np.mean(map_r)), "precision_at_1": float(np.mean(p1)),
            "r_precision": float(np.mean(rprec))}


def test_hand_computed_example():
    # Points on a line: a at 0, 1 and 4; b at 3 and 10. Worked out by hand:
    #   query 0 (a): neighbours a, b | R=2 -> P@1 1, R-prec 1/2, AP@R (1/1)/2 = 0.5
    #   query 1 (a): neighbours a, b | R=2 -> 1, 1/2, 0.5
    #   query 3 (b): neighbour  a    | R=1 -> 0, 0, 0
    #   query 4 (a): neighbours b, a | R=2 -> 0, 1/2, (1/2)/2 = 0.25
    #   query 10 (b): neighbour a    | R=1 -> 0, 0, 0
    emb = torch.tensor([[0.0, 0], [1, 0], [3, 0], [4, 0], [10, 0]])
    labels = torch.tensor([0, 0, 1, 0, 1])
    for knn in ("torch", "faiss") if faiss_available() else ("torch",):
        got = accuracy(make_calculator(METRICS, knn=knn), emb, labels)
        assert got["precision_at_1"] == pytest.approx(0.4)
        assert got["r_precision"] == pytest.approx(0.3)
        assert got["mean_average_precision_at_r"] == pytest.approx(0.25)
    assert brute_force(emb.numpy(), labels.numpy()) == pytest.approx(
        {"precision_at_1": 0.4, "r_precision": 0.3, "mean_average_precision_at_r": 0.25})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_an_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=60)
    labels[0] = 7  # a lone sample: excluded from every metric
    emb = rng.normal(size=(60, 5)) + labels[:, None] * 0.4
    got = accuracy(make_calculator(METRICS, knn="torch"), torch.tensor(emb, dtype=torch.float32),
                   torch.tensor(labels))
    assert got == pytest.approx(brute_force(emb.astype(np.float32), labels), abs=1e-6)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
@pytest.mark.parametrize("normalize", [True, False])
def test_faiss_and_torch_knn_agree(normalize):
    rng = np.random.default_rng(5)
    labels = torch.tensor(rng.integers(0, 10, size=300))
    emb = torch.tensor(rng.normal(size=(300, 16)), dtype=torch.float32) + labels[:, None] * 0.1
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=1)
    metrics = METRICS + ("mean_average_precision", "mean_reciprocal_rank")
    a = accuracy(make_calculator(metrics, knn="faiss"), emb, labels)
    b = accuracy(make_calculator(metrics, knn="torch"), emb, labels)
    assert a == pytest.approx(b, abs=1e-9)
    assert knn_backend("auto") == "faiss"


def test_clustering_metrics_without_faiss():
    labels = torch.arange(4).repeat_interleave(10)
    emb = torch.nn.functional.one_hot(labels).float() * 10 + 0.01 * torch.randn(40, 4)
    got = accuracy(make_calculator(("NMI", "AMI", "precision_at_1"), knn="torch"), emb, labels)
    assert got == pytest.approx({"NMI": 1.0, "AMI": 1.0, "precision_at_1": 1.0})


def test_evaluate_embeds_with_trunk_and_embedder_and_scores_diverged_models_zero():
    x = torch.tensor([[0.0, 1], [0.1, 1], [5, 0], [5.1, 0]])
    y = torch.tensor([0, 0, 1, 1])
    dataset = torch.utils.data.TensorDataset(x, y)
    trunk = torch.nn.Linear(2, 2)
    with torch.no_grad():
        trunk.weight.copy_(torch.eye(2))
        trunk.bias.zero_()
    calc = make_calculator(METRICS, knn="torch")
    (emb,), labels = compute_embeddings({"trunk": trunk, "embedder": torch.nn.Identity()}, dataset,
                                        batch_size=3, normalize=False)
    assert torch.allclose(emb, x) and torch.equal(labels, y)
    assert evaluate({"trunk": trunk}, dataset, calc) == pytest.approx(dict.fromkeys(METRICS, 1.0))
    with torch.no_grad():
        trunk.weight.fill_(float("nan"))
    assert evaluate({"trunk": trunk}, dataset, calc) == dict.fromkeys(METRICS, 0.0)


def test_two_stream_data_queries_the_second_stream():
    x = torch.tensor([[0.0, 1], [1, 0], [0, -1]])
    y = torch.tensor([0, 1, 2])
    dataset = [(x[i], x[i] * 1.01, y[i]) for i in range(3)]  # (anchor, posneg, label)
    got = evaluate({"trunk": torch.nn.Identity()}, dataset, make_calculator(METRICS, knn="torch"))
    assert got["precision_at_1"] == pytest.approx(1.0)


def test_raw_input_baseline_flattens_and_normalises_the_inputs(monkeypatch):
    from hyper_opt.metric_learning import evaluate as ev

    rng = np.random.default_rng(3)
    labels = torch.tensor(rng.integers(0, 5, size=40))
    images = torch.tensor(rng.normal(size=(40, 1, 3, 4)), dtype=torch.float32) + labels[:, None, None, None]
    dataset = torch.utils.data.TensorDataset(images, labels)
    (emb,), got_labels = ev.raw_input_embeddings(dataset, {"device": "cpu", "batch_size": 7, "normalize": True,
                                                           "num_workers": 0})
    flat = images.reshape(40, -1)
    assert torch.allclose(emb, flat / flat.norm(dim=1, keepdim=True)) and torch.equal(got_labels, labels)
    calc = make_calculator(METRICS, knn="torch")
    assert ev._score(calc, [emb], labels) == pytest.approx(brute_force(emb.numpy(), labels.numpy()), abs=1e-6)
    monkeypatch.setattr(ev, "RAW_INPUT_LIMIT", 40 * 12 - 1)  # too big: skipped, not an error
    assert ev.raw_input_embeddings(dataset, {"device": "cpu", "batch_size": 7, "normalize": True,
                                             "num_workers": 0}) is None
