"""Config validation: every invalid value raises ValueError at construction."""

from __future__ import annotations

import dataclasses

import pytest

from smtp_core import Config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": ""},
        {"hostname": "mx example"},
        {"hostname": "mx\r\n250 injected"},
        {"hostname": "mx\x00"},
        {"hostname": "mx\t"},
        {"max_command_line": 511},
        {"max_command_line": 4096, "max_auth_line": 4095},
        {"max_auth_line": 100},
        {"max_message_size": 0},
        {"max_message_size": -1},
        {"max_recipients": 0},
        {"max_errors": 0},
        {"max_auth_failures": 0},
        {"max_text_line": -1},
        {"bare_line_endings": "fix"},
        {"auth_mechanisms": ("CRAM-MD5",)},
        {"auth_mechanisms": ("plain",)},
        {"auth_mechanisms": ("PLAIN", "XOAUTH2")},
    ],
)
def test_invalid_values_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Config(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"max_command_line": 512, "max_auth_line": 512},
        {"max_message_size": 1, "max_recipients": 1, "max_errors": 1, "max_auth_failures": 1},
        {"max_text_line": 0},
        {"max_text_line": 998},
        {"bare_line_endings": "normalize"},
        {"auth_mechanisms": ("LOGIN", "PLAIN")},
        {"hostname": "[192.0.2.1]"},
    ],
)
def test_valid_values(kwargs: dict) -> None:
    config = Config(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_config_is_frozen_and_keyword_only() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config("mx.example.org")  # type: ignore[misc]


def test_replace_validates_too() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(Config(), max_errors=0)
