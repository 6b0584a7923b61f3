"""The optional ``transport:`` config section: errors name the key."""
from __future__ import annotations

import pytest

from segmentation.config import parse_config
from segmentation.errors import ConfigError

BASE = {"data": {"exposures": "x.parquet", "covariates": ["age"]}, "segments": {"s": ["a", "b"]},
        "output": {"model_dir": "out"}}


def cfg(transport):
    return parse_config({**BASE, "transport": transport})


def test_valid_section_parses():
    c = cfg({"max_treatments": 2, "treatments": ["a", "b", "c"], "min_share": {"c": 0.05},
             "max_share": {"a": 0.3}, "costs": {"a": 0.1}})
    assert c.transport.max_treatments == 2 and c.transport.min_share == {"c": 0.05}
    assert parse_config(BASE).transport is None


@pytest.mark.parametrize("transport,match", [
    ({"max_treatments": 4, "treatments": ["a", "b", "c"]}, r"transport\.max_treatments = 4 exceeds"),
    ({"max_treatments": 0}, r"'transport\.max_treatments'"),
    ({"max_treatments": 2, "min_share": {"a": 0.6, "b": 0.5}}, r"transport\.min_share: the minimum shares"),
    ({"max_treatments": 1, "min_share": {"a": 0.1, "b": 0.1}}, r"transport\.min_share: 2 treatments"),
    ({"max_treatments": 2, "treatments": ["a", "b"], "max_share": {"z": 0.5}}, r"transport\.max_share: unknown"),
    ({"max_treatments": 2, "min_share": {"a": 1.5}}, r"transport\.min_share\.a"),
    ({"max_treatments": 2, "bogus": 1}, r"'transport\.bogus': unknown key"),
])
def test_bad_section_names_the_key(transport, match):
    with pytest.raises(ConfigError, match=match):
        cfg(transport)
