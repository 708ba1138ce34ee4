"""The model YAML of the metric-learning objective: validated up front, with key paths and valid names."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hyper_opt.config import ParameterSpec
from hyper_opt.exceptions import ConfigError

pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from hyper_opt.metric_learning import components as comp  # noqa: E402
from hyper_opt.metric_learning.objective import Objective  # noqa: E402
from hyper_opt.metric_learning.settings import problems, read_settings, validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "seed": 0,
    "dataset": {"blobs": {"num_classes": 8, "samples_per_class": 10}},
    "splits": {"test_size": 2, "test_start_idx": 0, "num_training_partitions": 2},
    "models": {"trunk": {"MLP": {"hidden_sizes": [16], "output_size": 8}}},
    "loss_funcs": {"metric_loss": {"choose": "TripletMarginLoss", "TripletMarginLoss": {"margin": 0.1},
                                   "ContrastiveLoss": {"neg_margin": 1.0}}},
    "mining_funcs": {"tuple_miner": {"MultiSimilarityMiner": {"epsilon": 0.1}}},
    "sampler": {"MPerClassSampler": {"m": 4}},
    "optimizers": {"trunk_optimizer": {"Adam": {"lr": 0.001}}},
    "trainer": "MetricLossOnly",
    "max_epochs": 2,
}


def changed(**sections):
    conf = copy.deepcopy(GOOD)
    conf.update(sections)
    return conf


def test_a_good_config_has_no_problems_and_defaults():
    assert problems(GOOD) == []
    settings = read_settings(GOOD)
    assert settings.batch_size == 32 and settings.patience is None and settings.fold_schedule == "sequential"
    assert settings.splits.num_training_sets == 2
    assert settings.optimised_metric("precision_at_1") == "precision_at_1"
    assert settings.optimised_metric("val_loss") == "mean_average_precision_at_r"


@pytest.mark.parametrize("conf, expected", [
    (changed(loss_funcs={"metric_loss": {"TripletMarginLos": {}}}),
     ["loss_funcs:metric_loss:TripletMarginLos: unknown loss 'TripletMarginLos'", "TripletMarginLoss"]),
    (changed(mining_funcs={"tuple_miner": {"MultiSimilarityMiner": {"epsilon": 0.1, "eps": 1}}}),
     ["mining_funcs:tuple_miner:MultiSimilarityMiner:eps: MultiSimilarityMiner has no argument 'eps'", "epsilon"]),
    (changed(optimizers={"trunk_optimizer": {"Adamm": {"lr": 0.1}}}),
     ["optimizers:trunk_optimizer:Adamm: unknown optimizer 'Adamm'", "AdamW"]),
    (changed(optimizers={"trunk_optimiser": {"Adam": {}}}), ["optimizers:trunk_optimiser: keys are"]),
    (changed(trainer="MetricLossOnlyy"), ["trainer: unknown trainer 'MetricLossOnlyy'", "TrainWithClassifier"]),
    (changed(models={"trunk": {"MLPP": {}}}), ["models:trunk:MLPP: unknown model", "MLP"]),
    (changed(models={"trunk": {"MLP": {}}, "classifier": {"MLP": {}}}), ["models:classifier: not a models key"]),
    (changed(sampler={"MPerClass": {"m": 4}}), ["sampler:MPerClass: unknown sampler", "MPerClassSampler"]),
    (changed(dataset="digitz"), ["dataset: unknown dataset 'digitz'", "digits"]),
    (changed(loss_funcs={"metric_loss": {"choose": "ArcFaceLoss", "TripletMarginLoss": {}}}),
     ["loss_funcs:metric_loss:choose: got 'ArcFaceLoss'; allowed: TripletMarginLoss"]),
    (changed(loss_funcs={"metric_loss": {"TripletMarginLoss": {}, "ContrastiveLoss": {}}}),
     ["loss_funcs:metric_loss: 2 components given", "choose"]),
    (changed(loss_funcs={"metric_loss": {"TripletMarginLoss": {"distance": {"CosineSimilarty": {}}}}}),
     ["TripletMarginLoss:distance:CosineSimilarty: unknown distance", "CosineSimilarity"]),
    (changed(models={"trunk": {"MLP": {"output_size": "@num_clases"}}}), ["unknown placeholder '@num_clases'"]),
    (changed(evaluation={"metric": "map"}), ["evaluation:metric: got 'map'", "mean_average_precision_at_r"]),
    (changed(splits={"test_size": 1.5}), ["splits:test_size: must be a fraction"]),
    (changed(max_epochs=0, patience=-1), ["max_epochs: must be an integer >= 1", "patience: must be an integer >= 0"]),
    (changed(fold_schedule="parallel"), ["fold_schedule: got 'parallel'; allowed: sequential, interleaved"]),
    (changed(lossfuncs={}), ["lossfuncs: unknown key"]),
    (changed(trainer={"MetricLossOnly": {"batch_size": 3}}), ["trainer:MetricLossOnly:batch_size: set by hyper_opt"]),
    (changed(loss_weights={"classifier_loss": 1}), ["loss_weights:classifier_loss: not a key of loss_funcs"]),
])
def test_problems_name_the_key_path_the_value_and_the_valid_names(conf, expected):
    found = "\n".join(problems(conf))
    for text in expected:
        assert text in found, found


def test_missing_sections_and_trainer_roles():
    conf = {k: v for k, v in GOOD.items() if k not in ("dataset", "optimizers")}
    found = "\n".join(problems(conf))
    assert "dataset: missing" in found and "optimizers: missing" in found
    daml = changed(trainer="DeepAdversarialMetricLearning")
    found = "\n".join(problems(daml))
    assert "models:generator: DeepAdversarialMetricLearning needs it" in found
    assert "loss_funcs:synth_loss" in found and "loss_funcs:g_adv_loss" in found


def test_searched_parameters_must_point_at_existing_keys_and_offered_choices():
    params = [
        ParameterSpec(key="loss_funcs:metric_loss:TripletMarginLoss:margin", type="float", name="m",
                      settings={"low": 0.0, "high": 1.0}),
        ParameterSpec(key="loss_funcs:metric_loss:TripletMarginLoss:swap", type="categorical", name="swap",
                      settings={"choices": [True, False]}),
        ParameterSpec(key="loss_funcs:metric_loss:choose", type="categorical", name="loss",
                      settings={"choices": ["TripletMarginLoss", "ArcFaceLoss", "none"]}),
        ParameterSpec(key="unrelated_name", type="int", name="u", settings={"low": 0, "high": 1}),
    ]
    found = problems(GOOD, parameters=params)
    assert len(found) == 2, found
    assert "optuna:parameters:loss_funcs:metric_loss:TripletMarginLoss:swap: not a key path" in found[0]
    assert "choice 'ArcFaceLoss' is not offered under loss_funcs:metric_loss" in found[1]


def test_validate_raises_one_config_error_and_checks_paths(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(changed(trainer="Nope", max_epochs=0))
    assert len(err.value.problems) == 2
    conf = changed(dataset={"image_folder": {"root": "no_such_folder"}})
    assert "folder not found: 'no_such_folder'" in "\n".join(problems(conf, base_dir=tmp_path))
    assert "model_def_fn: file not found" in "\n".join(problems({"model_def_fn": "x.py"}, base_dir=tmp_path))


def test_objective_validates_when_constructed_and_through_its_hook():
    assert Objective.validate_config({**GOOD, "optuna": {"metric": "x"}}) == []
    assert Objective.validate_config(GOOD, metric="val_loss")[0].startswith("optuna:metric is 'val_loss'")
    with pytest.raises(ConfigError, match="unknown trainer"):
        Objective(changed(trainer="Nope"), "mean_average_precision_at_r", "cpu")


def test_component_grammar():
    options, chosen = comp.alternatives({"choose": None, "A": {}, "B": {"x": 1}}, "p")
    assert [o.name for o in options] == ["A", "B"] and chosen is None
    assert comp.selected("none", "p").name is None
    assert comp.selected({"B": None}, "p") == comp.Component("B", {}, "p:B")
    assert comp.accepted_kwargs(comp.resolve("loss", "TripletMarginLoss")) >= {"margin", "distance", "reducer"}
    assert comp.resolve("loss", "torch.nn.CrossEntropyLoss") is comp.resolve("loss", "CrossEntropyLoss")
    with pytest.raises(comp.SpecError, match="unknown placeholder|not known here"):
        comp.fill("@num_classes", {}, "p")


def test_importing_the_package_and_the_test_command_does_not_import_torch():
    code = ("import sys, hyper_opt.metric_learning, hyper_opt.metric_learning.evaluate, "
            "hyper_opt.metric_learning.objective; "
            "print(sorted(m for m in ('torch', 'pytorch_metric_learning', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_optimize_refuses_a_bad_model_config_before_creating_the_study(tmp_path):
    (tmp_path / "model.yml").write_text(yaml.safe_dump(changed(sampler={"MPerClass": {"m": 4}})))
    (tmp_path / "hyper.yml").write_text(yaml.safe_dump({
        "save_path": "results",
        "optuna": {"study_name": "bad", "objective": "hyper_opt.metric_learning:Objective",
                   "metric": "mean_average_precision_at_r", "direction": "maximize", "n_trials": 1}}))
    proc = subprocess.run([sys.executable, "-m", "hyper_opt", "optimize", "hyper.yml", "model.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "sampler:MPerClass: unknown sampler 'MPerClass'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "hyper_opt.db").exists()


def test_only_the_chosen_dataset_root_must_exist_and_variables_are_expanded(tmp_path, monkeypatch):
    from hyper_opt.metric_learning import data as d
    from hyper_opt.metric_learning.settings import expand_path, resolve_path, unset_variables

    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    (tmp_path / "work" / "alice" / "datasets").mkdir(parents=True)
    assert expand_path("~/x/$USER/${USER}") == tmp_path / "home" / "x" / "alice" / "alice"
    assert resolve_path("$USER/data", tmp_path) == tmp_path / "alice" / "data"
    assert unset_variables("/a/$USER/$NO_SUCH_VARIABLE/${NO_SUCH_VARIABLE}") == ["NO_SUCH_VARIABLE"]
    root = str(tmp_path / "work" / "$USER" / "datasets")
    conf = changed(dataset={"choose": "cub200", "cub200": {"dataset_root": root},
                            "cars196": {"dataset_root": "/nowhere/$NO_SUCH_VARIABLE"},
                            "sop": {"dataset_root": "/nowhere/$USER"}})
    assert problems(conf, base_dir=tmp_path) == []
    conf["dataset"]["digitz"] = {"root": "/nowhere"}  # names of every alternative are still checked
    assert problems(conf, base_dir=tmp_path)[0].startswith("dataset:digitz: unknown dataset 'digitz'")
    del conf["dataset"]["digitz"]
    conf["dataset"]["choose"] = "cars196"
    assert problems(conf, base_dir=tmp_path)[0] == ("dataset:cars196:dataset_root: environment variable "
                                                    "$NO_SUCH_VARIABLE is not set (in '/nowhere/$NO_SUCH_VARIABLE')")
    conf["dataset"]["choose"] = "sop"
    assert "dataset:sop:dataset_root: folder not found: '/nowhere/$USER' (looked for /nowhere/alice)" in \
        problems(conf, base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "home" / "alice" / "cub2011")):
        d.cub200("~/$USER")  # the loaders expand too, when called directly


def test_the_gpu_example_dry_runs_where_only_the_chosen_dataset_exists(tmp_path):
    example = REPO / "examples" / "torch" / "metric_learning"
    (tmp_path / "bob" / "datasets").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "USER": "bob", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "hyper_opt", "optimize", "hyperparameters_cub200.yml", "model_config_cub200.yml",
            "--dry-run", "--set", f"save_path={tmp_path / 'results'}"]
    proc = subprocess.run([*base, "--set", f"dataset:cub200:dataset_root={tmp_path}/$USER/datasets"],
                          cwd=example, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr  # cars196's and sop's /glade roots do not exist here: not asked
    assert "#SBATCH --gres=gpu:1" in proc.stdout
    proc = subprocess.run(base, cwd=example, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "dataset:cub200:dataset_root: folder not found: '/glade/work/$USER/datasets' " \
        "(looked for /glade/work/bob/datasets)" in proc.stderr, proc.stderr
    assert "cars196" not in proc.stderr and "sop" not in proc.stderr
