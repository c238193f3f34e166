"""A typo or an impossible value anywhere in a study file or a config is refused when it is read: one
`error:` line naming the key and the fix, exit 2, and no storage, data or output written."""

import pytest
import yaml

from cvae_opt.commands import retrain, run
from cvae_opt.commands.common import run_main
from cvae_opt.config import Config

STUDY = {
    "name": "tiny", "problem": "two_birds", "data": {"train_size": 500, "val_size": 100},
    "budget": {"epochs": 1}, "objective": {"metric": "score", "direction": "maximize"},
    "sampler": {"name": "random", "args": {"seed": 1}}, "pruner": None,
    "fixed": {"latent": 4, "hidden": 32, "channels": [8], "kernels": [5], "eval_conditions": 5, "eval_samples": 2},
    "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
}

BAD = {  # what the study file says -> what the one error line must name
    "misspelt choice": ({"fixed": {"physics_reduce": "minn"}}, "fixed.train.physics_reduce: unknown 'minn'; use one of mean, min"),
    "misspelt schedule": ({"fixed": {"lr_schedule": "cosin"}}, "fixed.train.lr_schedule: unknown 'cosin'; use one of constant, cosine"),
    "misspelt activation": ({"fixed": {"activation": "relu6"}}, "fixed.model.activation: unknown 'relu6'"),
    "misspelt draw": ({"fixed": {"eval_draw": "every"}}, "fixed.train.eval_draw: unknown 'every'"),
    "negative epochs": ({"fixed": {"epochs": -1}}, "fixed.train.epochs: -1; it must be a positive integer"),
    "batch size 0": ({"fixed": {"batch_size": 0}}, "fixed.train.batch_size: 0; it must be a positive integer"),
    "oversample 0": ({"fixed": {"eval_oversample": 0}}, "fixed.train.eval_oversample: 0; it must be a positive integer"),
    "negative beta": ({"fixed": {"beta": -0.5}}, "fixed.train.beta: -0.5; it must be >= 0"),
    "zero lr": ({"fixed": {"lr": 0}}, "fixed.train.lr: 0.0; the learning rate must be > 0"),
    "validation share 1": ({"fixed": {"eval_overhead": 1.0}}, "fixed.train.eval_overhead: 1.0; use a share of the training time in [0, 1)"),
    "bad device": ({"fixed": {"device": "gpu"}}, "fixed.train.device: unknown device 'gpu'"),
    "no training pairs": ({"data": {"train_size": 0, "val_size": 100}}, "fixed.data.train_size: 0; it must be a positive integer"),
    "negative noise": ({"data": {"train_size": 500, "val_size": 100, "noise": -0.1}}, "fixed.data.noise: -0.1; it must be >= 0"),
    "one component": ({"fixed": {"latent_type": "categorical", "components": 1}}, "fixed.model.components: 1"),
    "kernels too long": ({"fixed": {"kernels": [60]}}, None),  # shape is checked once the problem is known
    "search range end": ({"search": {"lr": {"type": "float", "low": 0.0, "high": 1e-2}}},
                         "search.lr: the value 0.0 gives an invalid config: config.train.lr: 0.0; the learning rate must be > 0"),
    "search choice": ({"search": {"physics_reduce": {"type": "categorical", "choices": ["mean", "max"]}}},
                      "search.physics_reduce: the value 'max' gives an invalid config: config.train.physics_reduce: unknown 'max'"),
    "conditional search value": ({"search": {
        "latent_type": {"type": "categorical", "choices": ["gaussian", "categorical"]},
        "components": {"type": "int", "low": 1, "high": 8, "condition": {"latent_type": "categorical"}}}},
        "search.components: the value 1 gives an invalid config: config.model.components: 1; a categorical latent needs at least 2"),
}


def run_in(tmp_path, monkeypatch, capsys, module, argv):
    monkeypatch.chdir(tmp_path)
    code = run_main(module.main, [str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_study_file_is_refused_at_load_and_touches_nothing(tmp_path, monkeypatch, capsys, case):
    change, expect = BAD[case]
    study = {**STUDY, **{k: ({**STUDY[k], **v} if k == "fixed" else v) for k, v in change.items()}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    code, err = run_in(tmp_path, monkeypatch, capsys, run, ["--study", "bad.yaml", "--trials", 1])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: bad.yaml"), err
    if expect:
        assert expect in lines[0], lines[0]
    else:
        assert "kernels [60] shrink 50 points" in lines[0]
    assert not (tmp_path / "storage").exists()  # no database, no artifacts, no cached data


BAD_CONFIG = {
    "typo in a key": ({"train": {"lerning_rate": 0.1}}, "train.lerning_rate: unknown key"),
    "misspelt choice": ({"train": {"physics_reduce": "minimum"}}, "train.physics_reduce: unknown 'minimum'"),
    "impossible value": ({"train": {"eval_samples": 0}}, "train.eval_samples: 0; it must be a positive integer"),
    "fresh data from a file": ({"data": {"train_file": "x.pt", "fresh": True}}, "data.fresh draws new training pairs"),
    "wrong type": ({"model": {"hidden": "wide"}}, "model.hidden: 'wide' is not a valid int"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_a_bad_exported_config_is_refused_before_training(tmp_path, monkeypatch, capsys, case):
    d = Config().to_dict()
    change, expect = BAD_CONFIG[case]
    for section, values in change.items():
        d[section].update(values)
    (tmp_path / "best.yaml").write_text("# exported\n" + yaml.safe_dump({"config": d}))
    code, err = run_in(tmp_path, monkeypatch, capsys, retrain, ["--config", "best.yaml", "--out", "out"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: best.yaml: config."), err
    assert expect in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "storage").exists()


def test_every_shipped_study_and_config_passes_the_checks():
    from cvae_opt.studies import STUDIES_DIR, load_study_file

    files = sorted(STUDIES_DIR.rglob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        if f.parent == STUDIES_DIR:
            load_study_file(str(f))
        else:  # configs: exported best ones, probes, the notebooks' recipe
            Config.from_yaml_file(f)
