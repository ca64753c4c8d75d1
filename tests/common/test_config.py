import pytest
from pydantic import Field

from services.common.config import ConfigError, ServerSettings, load


class DemoSettings(ServerSettings):
    upstream: str = Field("127.0.0.1:1", description="an upstream")
    redis_url: str = Field("", description="redis")
    ENV_ALIASES = {"redis_url": "REDIS_URL"}


def test_defaults_apply_without_any_source():
    settings = load(DemoSettings, "demo", environ={})
    assert settings.port == 0 and settings.upstream == "127.0.0.1:1"


def test_yaml_section_then_env_override(tmp_path):
    config = tmp_path / "llmsuite.yaml"
    config.write_text("demo:\n  port: 1234\n  upstream: a:1\nother:\n  port: 9\n")
    env = {"LLMSUITE_CONFIG": str(config), "LLMSUITE_DEMO_UPSTREAM": "b:2"}
    settings = load(DemoSettings, "demo", environ=env)
    assert settings.port == 1234
    assert settings.upstream == "b:2"


def test_well_known_env_alias_and_precedence():
    assert load(DemoSettings, "demo", environ={"REDIS_URL": "redis://x"}).redis_url == "redis://x"
    both = {"REDIS_URL": "redis://x", "LLMSUITE_DEMO_REDIS_URL": "redis://y"}
    assert load(DemoSettings, "demo", environ=both).redis_url == "redis://y"


def test_bad_value_names_setting_and_source():
    with pytest.raises(ConfigError) as err:
        load(DemoSettings, "demo", environ={"LLMSUITE_DEMO_PORT": "not-a-port"})
    assert "demo.port" in str(err.value) and "$LLMSUITE_DEMO_PORT" in str(err.value)


def test_unknown_yaml_key_is_rejected(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("demo:\n  prot: 1\n")
    with pytest.raises(ConfigError) as err:
        load(DemoSettings, "demo", environ={"LLMSUITE_CONFIG": str(config)})
    assert "demo.prot" in str(err.value)


def test_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(DemoSettings, "demo", environ={"LLMSUITE_CONFIG": str(tmp_path / "none.yaml")})
    broken = tmp_path / "broken.yaml"
    broken.write_text("demo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(DemoSettings, "demo", environ={"LLMSUITE_CONFIG": str(broken)})


def test_settings_are_frozen():
    settings = load(DemoSettings, "demo", environ={})
    with pytest.raises(Exception):
        settings.port = 5
