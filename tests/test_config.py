import pytest

from vqprior.config_files import load_config, presets
from vqprior.errors import UserError


def test_defaults_validate():
    from vqprior.config import Config

    cfg = load_config()
    assert cfg.data.source == "mnist" and cfg.run.name == "mnist"
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg  # the saved form reads back the same


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        overrides=["prior.epochs=2", "sample.labels=[3, 5]", "run.name=foo", "vqvae.encoder.params={hidden=8}"]
    )
    assert cfg.prior.epochs == 2 and cfg.sample.labels == [3, 5] and cfg.run.name == "foo"
    assert cfg.vqvae.encoder.params == {"hidden": 8, "res_blocks": 1}  # merged into the default params


def test_a_new_component_target_does_not_inherit_the_default_params():
    cfg = load_config(overrides=['vqvae.encoder={target="my.mod:Enc", params={width=3}}'])
    assert cfg.vqvae.encoder.params == {"width": 3}


def test_preset_file_and_overrides_apply_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[prior]\nepochs = 7\nbatch_size = 3\n")
    cfg = load_config("quick", f, ["prior.batch_size=5"])
    assert cfg.vqvae.epochs == 2  # preset
    assert cfg.prior.epochs == 7  # file beats preset
    assert cfg.prior.batch_size == 5  # --set beats file
    assert "quick" in presets()


@pytest.mark.parametrize(
    "override,message",
    [
        ("vqvae.codebok_size=3", "unknown key 'vqvae.codebok_size'"),
        ("prior.epochs=zero", "prior.epochs"),
        ("sample.temperature=inf", "sample.temperature"),
        ("sample.temperature=nan", "sample.temperature"),
        ("run.seed=-1", "run.seed"),
        ("vqvae.codebook_size=1", "vqvae.codebook_size"),
        ("sample.temperature=0", "sample.temperature"),
        ('sample.mix={"3"=0.5, "8"=0.4}', "sum to 1"),
        ("data.source=folder", "needs data.root"),
        ("novalue", "expected section.key=value"),
    ],
)
def test_bad_config_is_one_clear_line(override, message):
    with pytest.raises(UserError, match=message) as err:
        load_config(overrides=[override])
    assert "\n" not in str(err.value)


def test_missing_config_file_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[prior\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(file=bad)


def test_run_name_defaults_to_the_data_source(tmp_path):
    assert load_config().run.name == "mnist"
    assert load_config(overrides=["data.source=cifar10", f'data.root="{tmp_path}"']).run.name == "cifar10"
    folder = tmp_path / "my pets"
    folder.mkdir()
    assert load_config(overrides=["data.source=folder", f'data.root="{folder}"']).run.name == "my-pets"
    assert load_config(overrides=["data.source=cifar10", f'data.root="{tmp_path}"', "run.name=mine"]).run.name == "mine"
