"""The typed configuration: defaults, TOML, overrides, unknown keys."""

from __future__ import annotations

import pytest

from facerecon.config import Config, load_config
from facerecon.errors import InputError


def test_defaults_are_the_face_papers() -> None:
    cfg = Config()
    assert cfg.loss.chamfer_block_weights == (0.5, 1.0, 1.0, 1.0)
    assert (cfg.loss.normal, cfg.loss.laplace, cfg.loss.move, cfg.loss.edge) == (1.6e-4, 0.5, 0.033, 0.1)
    assert (cfg.train.lr, cfg.train.milestones, cfg.train.gamma, cfg.train.epochs) == (1e-4, (25, 40, 60), 0.3, 80)
    assert cfg.train.points_per_region == (11000, 4000, 3000)
    assert cfg.model.template == "hemisphere" and cfg.model.projection == "orthographic"


def test_roundtrip_and_toml(tmp_path) -> None:
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.toml"
    path.write_text('[model]\nbackbone = "resnet18"\nhidden = 192\n[train]\nlr = 3e-5\nmilestones = [40]\n')
    loaded = load_config(path, {"loss.laplace": 1, "model.template_offset": [0, 0, 0.3]})
    assert loaded.model.backbone == "resnet18" and loaded.model.hidden == 192
    assert loaded.train.lr == 3e-5 and loaded.train.milestones == (40,)
    assert loaded.loss.laplace == 1.0 and isinstance(loaded.loss.laplace, float)
    assert loaded.model.template_offset == (0.0, 0.0, 0.3)


def test_unknown_and_mistyped_keys(tmp_path) -> None:
    with pytest.raises(InputError, match="'model.hiden'"):
        Config.from_dict({"model": {"hiden": 3}})
    with pytest.raises(InputError, match="'optim'"):
        Config.from_dict({"optim": {}})
    with pytest.raises(InputError, match="'train.epochs'.*integer"):
        Config.from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(InputError, match="'model.projection'"):
        Config.from_dict({"model": {"projection": "fisheye"}})
    with pytest.raises(InputError, match="'model.template_scale'"):
        Config.from_dict({"model": {"template_scale": [1, 2]}})
    with pytest.raises(InputError, match="'train.nope'"):
        load_config(None, {"train.nope": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(InputError, match="bad.toml.*invalid TOML"):
        load_config(bad)
    unknown = tmp_path / "u.toml"
    unknown.write_text("[loss]\nlaplacian = 2.0\n")
    with pytest.raises(InputError, match="u.toml.*'loss.laplacian'"):
        load_config(unknown)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml")
