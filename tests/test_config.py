"""Loading both real formats, and every validation error (with the key path, before anything exists)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from hyper_opt.config import load_config, mask_url, parse_override
from hyper_opt.exceptions import ConfigError

from .conftest import FAST_OBJECTIVE, write_search

LEGACY = textwrap.dedent('''
    log:
      save_path: "results/log.txt"
    slurm:
      jobs: 20
      batch:
        account: "NAML0001"
        gres: "gpu:v100:1"
        mem: "128G"
        n: 8
        t: "12:00:00"
        J: "hyper_opt"
        o: "hyper_opt.out"
        e: "hyper_opt.err"
    optuna:
      name: "holodec_optimization.db"
      reload: 0
      objective: "objective.py"
      metric: "val_loss"
      direction: "minimize"
      n_trials: 500
      gpu: True
      save_path: "test"
      sampler:
        type: "TPESampler"
      parameters:
        num_dense:
          type: "int"
          settings: {name: "num_dense", low: 0, high: 10}
        dropout:
          type: "float"
          settings: {name: "dr", low: 0.0, high: 0.5}
        optimizer:learning_rate:
          type: "loguniform"
          settings: {name: "lr", low: 1.0e-7, high: 1.0e-2}
''')

ECHO = textwrap.dedent('''
    log: True
    save_path: "./data"
    slurm:
      jobs: 2
      tasks_per_worker: 2
      gpus_per_node: 1
      bash: ["source ~/.bashrc", "conda activate echo"]
      kernel: "conda activate echo"
      batch:
        account: "NAML0001"
        gres: "gpu:a100:1"
        t: "12:00:00"
    pbs:
      jobs: 1
      tasks_per_worker: 1
      gpus_per_node: 1
      bash: ["source ~/.bashrc"]
      batch:
        l: ["select=1:ncpus=8:ngpus=1:mem=64GB", "walltime=12:00:00"]
        A: "NAML0001"
    optuna:
      study_name: "torch-cifar"
      storage: "cifar.db"
      storage_type: "sqlite"
      objective: "objective.py"
      direction: ["maximize", "minimize"]
      metric: ["valid_accuracy", "valid_loss"]
      n_trials: 500
      gpu: True
      sampler:
        type: "TPESampler"
        n_startup_trials: 50
      enqueue:
        - {learning_rate: 0.001, dropout: 0.1}
      parameters:
        learning_rate:
          type: "loguniform"
          settings: {name: "learning_rate", low: 0.00000001, high: 0.01}
        dropout:
          type: "float"
          settings: {name: "dropout", low: 0.0, high: 0.5}
        activation:
          type: "categorical"
          settings: {name: "activation", choices: ["relu", "tanh"]}
        filters:
          type: "discrete_uniform"
          settings: {name: "filters", low: 8, high: 64, q: 8}
        width:
          type: "uniform"
          settings: {name: "width", low: 0.5, high: 2.0}
''')


@pytest.fixture(autouse=True)
def _run_from_the_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The predecessors' files read relative paths from the working directory: run from theirs."""
    monkeypatch.delenv("HYPER_OPT_CWD", raising=False)
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, text: str, model: dict | None = None) -> tuple[Path, Path]:
    (tmp_path / "objective.py").write_text(FAST_OBJECTIVE)
    hyper = tmp_path / "hyper.yml"
    hyper.write_text(text)
    model_path = tmp_path / "model.yml"
    model_path.write_text(yaml.safe_dump(model or {"optimizer": {"learning_rate": 0.1}, "dropout": 0.2}))
    return hyper, model_path


def test_legacy_format_loads_unchanged(tmp_path: Path) -> None:
    hyper, model = _write(tmp_path, LEGACY)
    config, model_conf = load_config(hyper, model)
    spec = config.optuna
    assert config.save_path == (tmp_path / "test").resolve()
    assert config.log_file == (tmp_path / "results" / "log.txt").resolve()
    assert spec.storage.kind == "sqlite" and spec.storage.path == config.save_path / "holodec_optimization.db"
    assert spec.study_name == "holodec_optimization.db", "aimlutils named the study after the file, verbatim"
    assert config.format == "aimlutils"
    assert spec.reload is False and spec.gpu is True and spec.n_trials == 500
    assert spec.metrics == ("val_loss",) and spec.directions == ("minimize",)
    assert [(p.key, p.name, p.type) for p in spec.parameters] == [
        ("num_dense", "num_dense", "int"), ("dropout", "dr", "float"),
        ("optimizer:learning_rate", "lr", "loguniform")]
    assert config.slurm is not None and config.slurm.jobs == 20
    assert config.slurm.batch["gres"] == "gpu:v100:1" and config.slurm.batch["t"] == "12:00:00"
    assert spec.objective.file == tmp_path / "objective.py" and spec.objective.class_name == "Objective"
    assert model_conf == {"optimizer": {"learning_rate": 0.1}, "dropout": 0.2}


def test_echo_format_loads_unchanged(tmp_path: Path) -> None:
    hyper, model = _write(tmp_path, ECHO)
    config, _ = load_config(hyper, model)
    spec = config.optuna
    assert config.save_path == (tmp_path / "data").resolve()
    assert spec.study_name == "torch-cifar"
    assert config.format == "echo" and spec.reload and not spec.reload_explicit, "echo-opt always continued"
    assert spec.storage.path == config.save_path / "cifar.db"
    assert spec.metrics == ("valid_accuracy", "valid_loss") and spec.multi_objective
    assert spec.enqueue == ({"learning_rate": 0.001, "dropout": 0.1},)
    assert spec.sampler is not None and spec.sampler.kwargs == {"n_startup_trials": 50}
    assert config.slurm is not None and config.slurm.workers_per_job == 2
    assert config.slurm.bash == ("source ~/.bashrc", "conda activate echo")
    assert config.pbs is not None and config.pbs.jobs == 1
    assert config.log_file == config.save_path / "log.txt", "echo-opt's log: True keeps log.txt"


def test_echo_journal_and_url_storages(tmp_path: Path) -> None:
    hyper, model = _write(tmp_path, ECHO.replace('storage_type: "sqlite"', 'storage_type: "nfs"'))
    config, _ = load_config(hyper, model)
    assert config.optuna.storage.kind == "journal" and config.optuna.heartbeat_interval is None
    hyper.write_text(ECHO.replace('storage: "cifar.db"', 'storage: "postgresql://u:secret@db:5432/x"')
                     .replace('storage_type: "sqlite"', 'storage_type: "postgresql"'))
    config, _ = load_config(hyper, model)
    assert config.optuna.storage.kind == "url" and config.optuna.storage.is_server
    assert "secret" not in mask_url(config.optuna.storage.url or "")


def _problems(tmp_path: Path, text: str, model: dict | None = None, **kwargs: object) -> str:
    hyper, model_path = _write(tmp_path, text, model)
    with pytest.raises(ConfigError) as info:
        load_config(hyper, model_path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(hyper) in message or "command line" in message
    assert not (tmp_path / "test").exists() and not (tmp_path / "data").exists(), "nothing may be created"
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("optuna:", "optuna:\n  bogus_key: 1"), ["optuna:bogus_key", "unknown key", "n_trials"]),
        (("log:", "slrum:\n  jobs: 2\nlog:"), ["slrum", "unknown key", "did you mean 'slurm'?"]),
        (("n_trials: 500", "n_trials: many"), ["optuna:n_trials", "'many'", "integer >= 1"]),
        (("n_trials: 500", "n_trials: 0"), ["optuna:n_trials", "0"]),
        (('type: "TPESampler"', 'type: "TPESamplr"'), ["optuna:sampler:type", "'TPESamplr'", "TPESampler", "RandomSampler"]),
        (('type: "TPESampler"', 'type: "TPESampler"\n    n_startup: 3'), ["optuna:sampler", "n_startup", "n_startup_trials"]),
        (('direction: "minimize"', 'direction: "minimise"'), ["optuna:direction", "'minimise'", "minimize, maximize"]),
        (('type: "loguniform"', 'type: "logarithmic"'), ["optuna:parameters:optimizer:learning_rate:type", "'logarithmic'", "loguniform"]),
        (('low: 0.0, high: 0.5', 'low: 0.9, high: 0.5'), ["optuna:parameters:dropout:settings", "0.9", "greater than high"]),
        (('low: 1.0e-7, high', 'low: 0.0, high'), ["optuna:parameters:optimizer:learning_rate:settings:low", "> 0 on a log scale"]),
        (('low: 0, high: 10', 'low: 0.5, high: 10'), ["optuna:parameters:num_dense:settings:low", "0.5", "integer"]),
        (('{name: "dr", low: 0.0, high: 0.5}', '{name: "dr", low: 0.0, high: 0.5, stepp: 0.1}'), ["settings:stepp", "not a float setting", "step"]),
        (('{name: "dr", low: 0.0, high: 0.5}', '{name: "num_dense", low: 0.0, high: 0.5}'), ["dropout:settings:name", "'num_dense'", "unique"]),
        (('objective: "objective.py"', 'objective: "missing.py"'), ["optuna:objective", "missing.py", "not found"]),
        (('objective: "objective.py"', 'objective: "objective.py:Nope"'), ["optuna:objective", "no class 'Nope'"]),
        (('objective: "objective.py"', 'objective: "no_such_pkg.mod:Objective"'), ["optuna:objective", "no_such_pkg.mod", "cannot be imported"]),
        (("reload: 0", "reload: 7"), ["optuna:reload", "7"]),
        (("jobs: 20", "jobs: -1"), ["slurm:jobs", "-1"]),
        (('mem: "128G"', 'mem: "128G\\nrm -rf /"'), ["slurm:batch:mem", "newline"]),
    ],
)
def test_each_problem_names_its_key_path(tmp_path: Path, change: tuple[str, str], expected: list[str]) -> None:
    assert change[0] in LEGACY
    message = _problems(tmp_path, LEGACY.replace(change[0], change[1], 1))
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"


def test_predecessor_files_keep_extra_top_level_keys_with_a_warning(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """echo-opt and aimlutils ignored top-level keys they did not read: a ``notes:`` entry, or the
    model config inlined (NCAR/holodec-ml@50ca2789:config/hyperparameter.yml keeps ``path_data``,
    ``random_seed`` ... beside ``optuna``). hyper_opt's own format refuses them."""
    hyper, model = _write(tmp_path, "notes: 'lr sweep, 2nd data set'\n" + ECHO)
    config, _ = load_config(hyper, model)
    assert config.format == "echo" and "top-level key 'notes'" in caplog.text and "as echo-opt did" in caplog.text
    hyper, model = _write(tmp_path, LEGACY + "\npath_data: /glade/p/data\nrandom_seed: 328942\n")
    config, _ = load_config(hyper, model)
    assert config.format == "aimlutils" and "'path_data'" in caplog.text and "as aimlutils did" in caplog.text
    hyper, model = _write(tmp_path, "local: {workers: 1}\nnotes: x\n" + ECHO)
    with pytest.raises(ConfigError, match="notes: unknown key"):
        load_config(hyper, model)


def test_pruner_by_name_and_bad_values(tmp_path: Path) -> None:
    ok = LEGACY.replace('type: "TPESampler"', 'type: "TPESampler"\n  pruner:\n    type: "MedianPruner"\n    n_startup_trials: 2')
    hyper, model = _write(tmp_path, ok)
    config, _ = load_config(hyper, model)
    assert config.optuna.pruner is not None and config.optuna.pruner.type == "MedianPruner"
    message = _problems(tmp_path, ok.replace("n_startup_trials: 2", "n_startup_trials: -4"))
    assert "optuna:pruner" in message and "-4" in message
    message = _problems(tmp_path, ok.replace('"MedianPruner"', '"MedianPrunner"'))
    assert "MedianPrunner" in message and "SuccessiveHalvingPruner" in message


def test_wrapped_pruner_is_built_from_a_nested_mapping(tmp_path: Path) -> None:
    text = LEGACY.replace('type: "TPESampler"', 'type: "TPESampler"\n  pruner:\n    type: PatientPruner\n'
                          '    patience: 2\n    wrapped_pruner: {type: MedianPruner, n_startup_trials: 1}')
    hyper, model = _write(tmp_path, text)
    config, _ = load_config(hyper, model)
    from hyper_opt.study import make_pruner

    pruner = make_pruner(config.optuna.pruner)
    assert type(pruner).__name__ == "PatientPruner"


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = LEGACY.replace("n_trials: 500", "n_trials: -1").replace('direction: "minimize"', 'direction: "up"')
    message = _problems(tmp_path, text)
    assert "optuna:n_trials" in message and "optuna:direction" in message
    assert message.startswith("2 problem(s)")


def test_metric_and_direction_lists_must_match(tmp_path: Path) -> None:
    message = _problems(tmp_path, ECHO.replace('metric: ["valid_accuracy", "valid_loss"]', 'metric: ["a", "b", "c"]'))
    assert "2 direction(s) for 3 metric(s)" in message


def test_enqueue_keys_that_are_not_parameters_are_ignored_aloud(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    hyper, model = _write(tmp_path, ECHO.replace("{learning_rate: 0.001, dropout: 0.1}",
                                                 "{learnig_rate: 0.001, dropout: 0.1}"))
    config, _ = load_config(hyper, model)
    assert config.optuna.enqueue == ({"dropout": 0.1},)
    assert "optuna:enqueue:0:learnig_rate" in caplog.text and "ignored" in caplog.text


def test_strict_refuses_parameters_that_are_not_model_paths(tmp_path: Path) -> None:
    hyper, model = _write(tmp_path, LEGACY)
    load_config(hyper, model)  # num_dense is not a model path: fine without --strict
    message = _problems(tmp_path, LEGACY, strict=True)
    assert "optuna:parameters:num_dense" in message and "--strict" in message


def test_hyper_opt_files_resolve_relative_paths_against_their_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hyper, model = _write(tmp_path, "format: hyper_opt\n" + LEGACY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config, _ = load_config(hyper, model)
    assert config.format == "hyper_opt"
    assert config.save_path == tmp_path / "test"
    assert config.log_file == tmp_path / "results" / "log.txt"
    assert config.optuna.objective.file == tmp_path / "objective.py"


def test_predecessor_files_resolve_relative_paths_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "examples" / "torch"
    sub.mkdir(parents=True)
    hyper, model = _write(sub, LEGACY.replace('objective: "objective.py"', 'objective: "examples/torch/objective.py"')
                          .replace('name: "holodec_optimization.db"', 'name: "h.db"\n  storage: "sqlite:///db/h.db"'))
    monkeypatch.chdir(tmp_path)  # the project root, where the user ran the predecessor
    config, _ = load_config(hyper, model)
    assert config.format == "echo" and config.base_dir == tmp_path  # optuna:storage is echo-opt's key
    assert config.save_path == tmp_path / "test", "not examples/torch/test"
    assert config.log_file == tmp_path / "results" / "log.txt"
    assert config.optuna.objective.file == sub / "objective.py"
    assert config.optuna.storage.path == tmp_path / "db" / "h.db", "an sqlite URL is read from the cwd, not save_path"
    # Workers and jobs read them from the directory the search started in, wherever they run.
    monkeypatch.chdir(sub)
    monkeypatch.setenv("HYPER_OPT_CWD", str(tmp_path))
    assert load_config(hyper, model)[0].save_path == tmp_path / "test"


def test_objective_relative_to_the_working_directory_is_accepted_for_old_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    hyper, model = _write(sub, LEGACY.replace('objective: "objective.py"', 'objective: "code/objective.py"'))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "objective.py").write_text(FAST_OBJECTIVE)
    monkeypatch.chdir(tmp_path)
    config, _ = load_config(hyper, model)
    assert config.optuna.objective.file == tmp_path / "code" / "objective.py"


def test_overrides_reach_either_file_and_never_silently_miss(tmp_path: Path) -> None:
    hyper, model = _write(tmp_path, LEGACY)
    config, conf = load_config(hyper, model, overrides=["optuna:n_trials=7", "optimizer:learning_rate=0.5",
                                                         "hyper:optuna:gpu=false"])
    assert config.optuna.n_trials == 7 and config.optuna.gpu is False
    assert conf is not None and conf["optimizer"]["learning_rate"] == 0.5
    with pytest.raises(ConfigError, match="optimizer:lr"):
        load_config(hyper, model, overrides=["optimizer:lr=0.5"])
    with pytest.raises(ConfigError, match="expected KEY:PATH=VALUE"):
        load_config(hyper, model, overrides=["optuna:n_trials"])
    config, _ = load_config(hyper, model, overrides=["optuna:parameters:optimizer:learning_rate:settings:low=1.0e-4"])
    lr = next(p for p in config.optuna.parameters if p.key == "optimizer:learning_rate")
    assert lr.settings["low"] == 1.0e-4, "a colon-keyed parameter's settings are reachable"
    assert parse_override("a:b=[1, 2]") == (("a", "b"), [1, 2])
    assert parse_override("optuna:reload=0") == (("optuna", "reload"), 0)


def test_missing_files_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hyperparameter file not found"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("optuna: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_cli_reports_config_errors_in_one_message_without_traceback(tmp_path: Path) -> None:
    s = write_search(tmp_path / "s", optuna={"n_trials": "ten", "direction": "sideways"})
    proc = s.cli("optimize", "hyper.yml", "model.yml")
    assert proc.returncode == 2
    assert "optuna:n_trials" in proc.stderr and "optuna:direction" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not s.save_path.exists()
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--debug")
    assert "Traceback" in proc.stderr


@pytest.mark.parametrize("name", ["a\nb", "../../x", "/abs/name", "x y", "x'y", ".hidden", "-x", "a" * 129, ""])
def test_unsafe_study_names_are_refused_with_the_key_named(tmp_path: Path, name: str) -> None:
    from .conftest import write_search

    s = write_search(tmp_path / "s", optuna={"study_name": name})
    with pytest.raises(ConfigError) as caught:
        load_config(s.hyper, s.model)
    assert "optuna:study_name" in str(caught.value)


def test_a_newline_in_the_study_name_never_reaches_the_job_script(tmp_path: Path) -> None:
    from .conftest import write_search

    s = write_search(tmp_path / "s", optuna={"study_name": "x\n#SBATCH --time=99:00:00\ntouch /tmp/pwned"},
                     extra={"slurm": {"jobs": 1, "batch": {"t": "00:05:00"}}})
    proc = s.cli("optimize", "hyper.yml", "model.yml", "--dry-run")
    assert proc.returncode == 2 and "not a safe study name" in proc.stderr and "#SBATCH" not in proc.stdout


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_storage_is_refused(tmp_path: Path, url: str) -> None:
    s = write_search(tmp_path / "s", optuna={"storage": url})
    with pytest.raises(ConfigError, match="in-memory database"):
        load_config(s.hyper, s.model)
