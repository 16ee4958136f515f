"""The typed configuration: defaults, TOML, overrides, unknown keys, the network families' tables,
the augmentation table, value ranges, the earlier flat spelling, and the command-line merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facerecon.config import AugmentConfig, Config, ConfigError, command_line_overrides, load_config
from facerecon.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "facerecon" / "configs"


def _toml(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_face_papers() -> None:
    cfg = Config()
    assert cfg.loss.chamfer_block_weights == (0.5, 1.0, 1.0, 1.0)
    assert (cfg.loss.normal, cfg.loss.laplace, cfg.loss.move, cfg.loss.edge) == (1.6e-4, 0.5, 0.033, 0.1)
    assert (cfg.train.lr, cfg.train.milestones, cfg.train.gamma, cfg.train.epochs) == (1e-4, (25, 40, 60), 0.3, 80)
    assert cfg.train.points_per_region == (11000, 4000, 3000)
    assert cfg.model.kind == "pixel2mesh" and cfg.model.template == "hemisphere"
    assert cfg.model.camera.projection == "orthographic" and cfg.model.graph.hidden == 128
    assert not cfg.train.augment.enabled and cfg.train.augment.flip == 0.5


def test_roundtrip_and_toml(tmp_path: Path) -> None:
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    path = _toml(tmp_path, '[model]\nbackbone = "resnet18"\n[model.graph]\nhidden = 192\n[train]\nlr = 3e-5\nmilestones = [40]\n')
    loaded = load_config(path, {"loss.laplace": 1, "model.pixel2mesh.template_offset": [0, 0, 0.3]})
    assert loaded.model.backbone == "resnet18" and loaded.model.graph.hidden == 192
    assert loaded.train.lr == 3e-5 and loaded.train.milestones == (40,)
    assert loaded.loss.laplace == 1.0 and isinstance(loaded.loss.laplace, float)
    assert loaded.model.pixel2mesh.template_offset == (0.0, 0.0, 0.3)


def test_unknown_and_mistyped_keys(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'model.hiden'"):
        Config.from_dict({"model": {"hiden": 3}})
    with pytest.raises(InputError, match="'optim'"):
        Config.from_dict({"optim": {}})
    with pytest.raises(InputError, match="'train.epochs'.*integer"):
        Config.from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(InputError, match="'model.camera.projection'"):
        Config.from_dict({"model": {"camera": {"projection": "fisheye"}}})
    with pytest.raises(InputError, match="'model.pixel2mesh.template_scale'"):
        Config.from_dict({"model": {"pixel2mesh": {"template_scale": [1, 2]}}})
    with pytest.raises(InputError, match="'model.kind'.*'prior_graph'"):
        Config.from_dict({"model": {"kind": "prior"}})
    with pytest.raises(InputError, match="'train.nope'"):
        load_config(None, {"train.nope": 1})
    with pytest.raises(InputError, match="bad.toml.*invalid TOML"):
        load_config(_toml(tmp_path, "[model\n", "bad.toml"))
    with pytest.raises(InputError, match="u.toml.*'loss.laplacian'"):
        load_config(_toml(tmp_path, "[loss]\nlaplacian = 2.0\n", "u.toml"))
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------------- families
@pytest.mark.parametrize(
    "text, key",
    [
        ('[model]\nkind = "pixel2mesh"\n[model.prior]\ncomponents = 10\n', "model.prior.components"),
        ('[model]\nkind = "pixel2mesh"\n[model.spiral]\nwidths = [8, 8, 8, 8]\n', "model.spiral.widths"),
        ('[model]\nkind = "prior_graph"\n[model.spiral]\nhops = [2, 2, 2, 2]\n', "model.spiral.hops"),
        ('[model]\nkind = "prior_graph"\n[model.camera]\nprojection = "pinhole"\n', "model.camera.projection"),
        ('[model]\nkind = "prior_graph"\n[model.pixel2mesh]\ncolour = true\n', "model.pixel2mesh.colour"),
        ('[model]\nkind = "prior_spiral"\n[model.graph]\nhidden = 64\n', "model.graph.hidden"),
    ],
)
def test_a_key_of_another_network_kind_is_an_error_naming_it(text: str, key: str, tmp_path: Path) -> None:
    path = _toml(tmp_path, text, "family.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"'{key}' does not apply to model.kind" in message and "\n" not in message
    assert info.value.key == key


def test_each_kind_reads_its_own_tables(tmp_path: Path) -> None:
    text = (
        '[model]\nkind = "prior_spiral"\nbackbone = "mobilenet_v2_050"\n'
        "[model.prior]\ncomponents = 12\nhead_hidden = 64\n[model.spiral]\nwidths = [16, 16, 8, 8]\nhops = [1, 1, 1, 2]\n"
    )
    cfg = load_config(_toml(tmp_path, text))
    assert cfg.model.kind == "prior_spiral" and cfg.model.starts_from_prior
    assert (cfg.model.prior.components, cfg.model.prior.head_hidden) == (12, 64)
    assert cfg.model.spiral.widths == (16, 16, 8, 8) and cfg.model.spiral.hops == (1, 1, 1, 2)
    # what a checkpoint stores holds the kind's tables only, and reads back the same
    stored = cfg.to_dict()["model"]
    assert {"prior", "spiral"} <= set(stored) and not {"graph", "pixel2mesh", "camera"} & set(stored)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_changing_the_kind_by_override_drops_the_untouched_tables(tmp_path: Path) -> None:
    cfg = load_config(None, {"model.kind": "prior_graph", "model.prior.components": 8})
    assert cfg.model.kind == "prior_graph" and cfg.model.prior.components == 8
    path = _toml(tmp_path, "[model.graph]\nhidden = 64\n", "g.toml")  # explicitly set for pixel2mesh
    with pytest.raises(ConfigError, match="'model.graph.hidden' does not apply to model.kind = 'prior_spiral'"):
        load_config(path, {"model.kind": "prior_spiral"})


# ------------------------------------------------------------------------------------- augmentation
def test_augmentation_is_one_table_read_by_the_data_pipeline(tmp_path: Path) -> None:
    from facerecon.data.augment import AugmentSettings

    assert AugmentSettings is AugmentConfig
    cfg = load_config(_toml(tmp_path, "[train.augment]\nenabled = true\nflip = 0.0\nrotation_deg = 10\nscale = 0.2\n"))
    aug = cfg.train.augment
    assert aug.enabled and (aug.flip, aug.rotation_deg, aug.scale, aug.colour) == (0.0, 10.0, 0.2, 0.8)


@pytest.mark.parametrize(
    "line, key, rule",
    [
        ("flip = 1.5", "train.augment.flip", "must be >= 0 and <= 1 (a probability)"),
        ("five_outlier = -0.1", "train.augment.five_outlier", "must be >= 0 and <= 1 (a probability)"),
        ("scale = 1.0", "train.augment.scale", "must be >= 0 and < 1 (a fraction of the crop)"),
        ("rotation_deg = -5", "train.augment.rotation_deg", "must be >= 0"),
        ("shift = nan", "train.augment.shift", "must be >= 0"),
    ],
)
def test_augmentation_out_of_range_names_the_key_and_file(line: str, key: str, rule: str, tmp_path: Path) -> None:
    path = _toml(tmp_path, f"[train.augment]\n{line}\n", "aug.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: config key '{key}'") and rule in str(info.value)
    # the same value set on the command line names --set; built from Python, the key alone
    name, value = (part.strip() for part in line.split("="))
    with pytest.raises(ConfigError, match=f"^--set {key}={value}: config key '{key}'"):
        load_config(None, command_line_overrides([f"{key}={value}"]))
    with pytest.raises(ConfigError, match=f"^config key '{key}'"):
        AugmentConfig(**{name: float(value)})


# ------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    "section, line, key, rule",
    [
        ("train", "lr = -1e-3", "train.lr", "-0.001 must be > 0"),
        ("train", "lr = 0", "train.lr", "0.0 must be > 0"),
        ("train", "batch_size = 0", "train.batch_size", "0 must be >= 1"),
        ("train", "epochs = -3", "train.epochs", "-3 must be >= 1"),
        ("train", "num_workers = -1", "train.num_workers", "-1 must be >= 0"),
        ("train", "points_per_region = [100, -1, 5]", "train.points_per_region", "must be >= 0"),
        ("loss", "laplace = -0.5", "loss.laplace", "-0.5 must be >= 0"),
        ("loss", "normal = inf", "loss.normal", "inf must be >= 0"),
        ("model.graph", "hidden = 0", "model.graph.hidden", "0 must be >= 1 and <= 8192"),
        ("model", "blocks = 0", "model.blocks", "0 must be >= 1 and <= 64"),
    ],
)
def test_values_out_of_range_are_user_errors_naming_key_and_file(section: str, line: str, key: str, rule: str, tmp_path: Path) -> None:
    path = _toml(tmp_path, f"[{section}]\n{line}\n", "values.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    assert str(info.value) == f"{path}: config key '{key}': {str(info.value).split(': ', 2)[2]}"
    assert rule in str(info.value)


# ------------------------------------------------------------------------------------- earlier spelling
#: The ``[model]`` tables of facerecon/configs/*.toml in the flat spelling of earlier versions.
FLAT_V2 = """
[model]
template = "hemisphere"
backbone = "mobilenet_v2"
image_size = 128
start = "prior"
prior_components = 40
five_point = true
head_hidden = 256
hidden = 64
hidden_per_block = [64, 48, 32, 16]
layers_per_block_list = [6, 4, 2, 2]
adaptive_unpool = true
landmarks = true
[train]
augment = true
aug_drop_five = 0.1
aug_five_outlier = 0.15
"""
FLAT_SPIRAL = """
[model]
template = "hemisphere"
backbone = "mobilenet_v2_050"
image_size = 128
start = "prior"
prior_components = 40
five_point = true
head_hidden = 256
hidden = 64
hidden_per_block = [64, 48, 32, 16]
layers_per_block_list = [6, 4, 2, 2]
decoder = "spiral"
spiral_widths = [32, 32, 16, 8]
spiral_hops = [1, 1, 1, 1]
adaptive_unpool = true
landmarks = true
[train]
augment = true
aug_drop_five = 0.1
"""
FLAT_V1 = """
[model]
template = "hemisphere"
backbone = "mobilenet_v2"
image_size = 128
hidden = 96
layers_per_block = 8
adaptive_unpool = true
landmarks = true
"""


@pytest.mark.parametrize(
    "flat, shipped",
    [(FLAT_V2, "aflw-v2.toml"), (FLAT_SPIRAL, "aflw-v2-spiral.toml"), (FLAT_V1, "aflw-mobilenet.toml")],
)
def test_flat_config_files_load_as_the_nested_ones(flat: str, shipped: str, tmp_path: Path) -> None:
    old = load_config(_toml(tmp_path, flat, "flat.toml"))
    new = load_config(CONFIGS / shipped)
    assert old.model == new.model
    assert old.train.augment == new.train.augment


def test_flat_spelling_maps_to_the_kinds_by_hand() -> None:
    spiral = Config.from_dict({"model": {"start": "prior", "decoder": "spiral", "spiral_hops": [2, 2, 1, 1], "hidden": 64}})
    assert spiral.model.kind == "prior_spiral" and spiral.model.spiral.hops == (2, 2, 1, 1)
    assert spiral.model.graph.hidden == 128  # ignored by that kind then, left out now
    graph = Config.from_dict({"model": {"start": "prior", "prior_components": 7, "projection": "orthographic"}})
    assert graph.model.kind == "prior_graph" and graph.model.prior.components == 7
    v1 = Config.from_dict({"model": {"start": "template", "decoder": "spiral", "colour": True, "focal": 300,
                                     "projection": "pinhole", "hidden_per_block": [8, 8, 8, 8]},
                           "train": {"aug_rotation": 12, "aug_flip": 0.0}})
    assert v1.model.kind == "pixel2mesh" and v1.model.pixel2mesh.colour and v1.model.camera.focal == 300.0
    assert v1.model.camera.projection == "pinhole" and v1.model.graph.hidden_per_block == ()
    assert (v1.train.augment.rotation_deg, v1.train.augment.flip, v1.train.augment.enabled) == (12.0, 0.0, False)


def test_shipped_checkpoint_config_loads() -> None:
    from facerecon.engine.predict import default_checkpoint

    shipped = default_checkpoint()
    if shipped is None:
        pytest.skip("no default model installed")
    stored = torch.load(shipped, map_location="cpu", weights_only=True)["config"]
    assert stored["model"]["kind"] == "prior_graph"  # rewritten in the nested spelling when it was pruned
    cfg = Config.from_dict(stored)
    assert cfg.model.kind == "prior_graph" and cfg.model.backbone == "mobilenet_v2" and cfg.model.image_size == 128
    assert cfg.model.graph.hidden_per_block == (64, 48, 32, 16) and cfg.model.graph.layers_per_block_list == (6, 4, 2, 2)
    assert cfg.model.graph.refined_levels == 1  # a graph block on the coarsest level only
    assert (cfg.model.prior.components, cfg.model.prior.head_hidden, cfg.model.prior.five_point) == (40, 256, True)
    assert cfg.train.augment.enabled and (cfg.train.augment.drop_five, cfg.train.augment.five_outlier) == (0.1, 0.15)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"kind": "prior_graph", "hidden": 3}}, "'model.hidden' is the earlier spelling of 'model.graph.hidden': rename it"),
        ({"model": {"start": "prior", "prior": {"components": 3}}}, "'model.start' is the earlier spelling of 'model.kind'"),
        ({"train": {"aug_flip": 0.2, "augment": {"enabled": True}}}, "'train.aug_flip' is the earlier spelling of 'train.augment.flip'"),
        ({"model": {"start": "mean"}}, "'model.start': 'mean' is not one of 'template', 'prior'"),
        ({"model": {"start": "prior", "decoder": "spiral", "adaptive_unpool": False}}, "'model.adaptive_unpool' = false"),
    ],
)
def test_mixed_or_unusable_flat_spelling_says_what_to_rename(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^[^\n]*$") as info:
        Config.from_dict(data, source="run.toml")
    assert str(info.value).startswith("run.toml: ") and message in str(info.value)


def test_flat_keys_on_the_command_line_name_their_new_spelling() -> None:
    with pytest.raises(ConfigError, match="^--set model.hidden=3: unknown config key 'model.hidden'; it is 'model.graph.hidden' now$"):
        load_config(None, command_line_overrides(["model.hidden=3"]))
    with pytest.raises(ConfigError, match="'train.aug_flip'; it is 'train.augment.flip' now"):
        load_config(None, command_line_overrides(["train.aug_flip=0.3"]))
    with pytest.raises(ConfigError, match="model.kind now"):
        load_config(None, command_line_overrides(["model.start=prior"]))


# ------------------------------------------------------------------------------------- command line
def test_shortcut_flag_and_set_of_one_key_are_refused_whatever_the_values() -> None:
    for sets, flags in [
        (["train.epochs=lots"], {"train.epochs": ("--epochs", 2)}),
        (["train.batch_size=0"], {"train.batch_size": ("--batch-size", 4)}),
        (["train.epochs=2"], {"train.epochs": ("--epochs", 2)}),
    ]:
        key = next(iter(flags))
        with pytest.raises(InputError, match=f"^--set {sets[0]} and {flags[key][0]} both set {key}: give it once$"):
            command_line_overrides(sets, flags)
    with pytest.raises(InputError, match="^--set train.lr=1e-3 and --set train.lr=2e-3 both set train.lr"):
        command_line_overrides(["train.lr=1e-3", "train.lr=2e-3"])


def test_command_line_values_are_parsed_as_toml_and_checked_with_their_source() -> None:
    overrides = command_line_overrides(["model.backbone=resnet18", "train.milestones=[3, 5]"], {
        "train.epochs": ("--epochs", 6), "train.lr": ("--lr", None)})
    cfg = load_config(None, overrides)
    assert (cfg.model.backbone, cfg.train.milestones, cfg.train.epochs, cfg.train.lr) == ("resnet18", (3, 5), 6, 1e-4)
    with pytest.raises(ConfigError, match=r"^--set train.epochs=lots: config key 'train.epochs': 'lots' is not an integer$"):
        load_config(None, command_line_overrides(["train.epochs=lots"], {"train.batch_size": ("--batch-size", 4)}))
    with pytest.raises(ConfigError, match=r"^--lr: config key 'train.lr': 0.0 must be > 0$"):
        load_config(None, command_line_overrides([], {"train.lr": ("--lr", 0.0)}))
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        command_line_overrides(["train.lr"])
