"""The table of settings: every setting is accepted by every route it claims, refused by the
others, and reaches the mount; an unknown key is refused with the key named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from cupixfs.commands import cli
from cupixfs.config import mount_options, profiles
from cupixfs.config.settings import (
    CACHE,
    DEMO,
    FLAG,
    LOGIN,
    MOUNT,
    SETTINGS,
    MountConfig,
    Route,
    Setting,
    UsageError,
    resolve,
)

#: How each command is spelt before its options.
COMMAND_ARGV = {
    MOUNT: [["mount", "/mnt/x"]],
    DEMO: [["demo"]],
    LOGIN: [["login"]],
    CACHE: [["cache", "stats"], ["cache", "clear"]],
}
ALL_COMMANDS = list(COMMAND_ARGV)


def _expected(setting: Setting) -> Any:
    return True if setting.kind is FLAG else setting.kind.parse(setting.kind.text_example)


def _cli_argv(setting: Setting) -> list[str]:
    if setting.kind is FLAG:
        return [setting.long_option]
    return [setting.long_option, setting.kind.text_example]


def _profile_values(setting: Setting, tmp_path: Path) -> dict[str, Any]:
    text = f"[profiles.p]\n{setting.name} = {setting.kind.toml_example}\n"
    return profiles.parse(tomllib.loads(text), tmp_path / "config.toml").select("p")[1]


def test_every_command_is_spelt_here() -> None:
    assert {c for s in SETTINGS for c in s.commands} <= set(COMMAND_ARGV)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_the_command_line_takes_a_setting_exactly_where_the_table_says(setting: Setting) -> None:
    parser = cli.build_parser()
    for command in ALL_COMMANDS:
        for prefix in COMMAND_ARGV[command]:
            argv = [*prefix, *_cli_argv(setting)]
            if setting.takes(Route.CLI) and command in setting.commands:
                said = cli.said(parser.parse_args(argv), command)
                assert said == {setting.name: _expected(setting)}, argv
            else:
                with pytest.raises(SystemExit):
                    parser.parse_args(argv)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_o_takes_a_setting_exactly_where_the_table_says(setting: Setting) -> None:
    for key in (setting.name, *setting.aliases):
        item = key if setting.kind is FLAG else f"{key}={setting.kind.text_example}"
        if setting.takes(Route.OPTION):
            assert mount_options.parse([item]) == {setting.name: _expected(setting)}
        else:
            with pytest.raises(UsageError, match=f"unknown mount option '{key}'"):
                mount_options.parse([item])


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_a_profile_takes_a_setting_exactly_where_the_table_says(
    setting: Setting, tmp_path: Path
) -> None:
    if setting.takes(Route.PROFILE):
        toml = tomllib.loads(f"v = {setting.kind.toml_example}")["v"]
        expected = setting.kind.toml(toml, tmp_path)
        assert _profile_values(setting, tmp_path) == {setting.name: expected}
        if setting.kind is not FLAG:
            assert expected == _expected(setting)
    else:
        with pytest.raises(UsageError, match=f"unknown key '{setting.name}'"):
            _profile_values(setting, tmp_path)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.mount_config], ids=lambda s: s.name)
def test_every_mount_setting_reaches_the_mount(setting: Setting) -> None:
    config = resolve(Path("/m"), "t", {setting.name: _expected(setting)})
    assert getattr(config, setting.name) == _expected(setting)
    default = resolve(Path("/m"), "t", {})
    assert getattr(default, setting.name) == setting.default_value()


def test_the_mount_config_has_a_field_for_each_mount_setting_and_no_other() -> None:
    assert MountConfig.fields_from_settings() == {s.name for s in SETTINGS if s.mount_config}


def test_an_unknown_key_is_refused_by_every_route_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="unknown mount option 'cache_sise'"):
        mount_options.parse(["cache_sise=4G"])
    with pytest.raises(UsageError, match=r"\[profiles\.p\]: unknown key 'cache_sise'"):
        profiles.parse(tomllib.loads("[profiles.p]\ncache_sise = 1\n"), tmp_path / "c.toml")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["mount", "/mnt/x", "--cache-sise", "4G"])
    assert "--cache-sise" in capsys.readouterr().err
