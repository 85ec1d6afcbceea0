"""params.yaml parses into typed settings for every profile, and bad config fails clearly."""

from pathlib import Path

import pytest
import yaml

from components.errors import ConfigError
from components.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", ["tiny", "ci", "paper"])
def test_every_profile_validates(profile):
    s = load_settings(profile, REPO / "params.yaml")
    assert s.profile == profile
    assert s.align.trainable == ["connector"], "align trains only the connector"
    assert "language_model" in s.sft.trainable


def test_paper_profile_names_real_parts():
    s = load_settings("paper", REPO / "params.yaml")
    assert s.model.init == "pretrained"
    assert "siglip" in s.model.vision_model_id.lower()
    assert s.model.vision.image_size == 384
    assert s.model.max_length == 16384


def test_profile_overrides_merge_over_base():
    tiny = load_settings("tiny", REPO / "params.yaml")
    ci = load_settings("ci", REPO / "params.yaml")
    assert ci.synthetic.train_per_task < tiny.synthetic.train_per_task
    assert ci.sft.learning_rate == tiny.sft.learning_rate  # not overridden -> inherited
    assert ci.digest() != tiny.digest()


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*tiny"):
        load_settings("nope", REPO / "params.yaml")


def test_invalid_value_names_the_field(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["tiny"] = {"sft": {"learning_rate": -1}}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="sft.learning_rate"):
        load_settings("tiny", bad)


def test_pinpoints_must_be_tile_multiples():
    with pytest.raises(ConfigError, match="not a multiple"):
        load_settings("tiny", REPO / "params.yaml",
                      overrides={"model": {"image_grid_pinpoints": [[32, 48]]}})
