"""A damaged ``model.json`` is bad input: every verb that reads it exits 2 with one ``error:``
line naming the file (no traceback), before Spark starts and with nothing written."""
from __future__ import annotations

import json
import re

import pytest

from segmentation.cli import main
from segmentation.errors import ModelFileError
from segmentation.model import SegmentationModel

CASES = {
    "truncated": ('{"features": [', "is not valid JSON"),
    "not utf-8": (b"\xff\xfe{}", "is not valid JSON"),
    "a list": ("[1, 2]", "not a segmentation model (a JSON list, not an object)"),
    "old version": (json.dumps({"format_version": 0}), "format_version 0"),
    "key missing": (None, "not a segmentation model (missing key 'segments')"),
}


def _write(path, content):
    if content is None:                   # a current format_version, the rest missing
        from segmentation.model import FORMAT_VERSION

        content = json.dumps({"format_version": FORMAT_VERSION, "features": ["intercept"]})
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_model_json_exits_2_naming_the_file(tmp_path, capsys, case):
    content, message = CASES[case]
    (tmp_path / "model").mkdir()
    model_json = tmp_path / "model" / "model.json"
    _write(model_json, content)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        SegmentationModel.load(str(tmp_path / "model"))
    code = main(["assign", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "users"),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and str(model_json) in lines[-1] and message in lines[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
