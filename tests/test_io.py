"""tissuelens.io.read_json: every JSON the stages read fails as one line naming the file."""

from __future__ import annotations

import pytest

from tissuelens.errors import InputError
from tissuelens.io import read_json, write_json


def test_round_trip_and_expected_type(tmp_path):
    path = tmp_path / "meta.json"
    write_json({"layers": [3, 4]}, path)
    assert read_json(path) == {"layers": [3, 4]}
    write_json([1, 2], path)
    assert read_json(path, expect=list) == [1, 2]
    assert read_json(path, expect=None) == [1, 2]
    with pytest.raises(InputError, match=r"meta.json: expected a JSON object, found list$"):
        read_json(path)


@pytest.mark.parametrize("content,message", [
    (b'{"layers": [3, ', r"meta.json: not valid JSON \(Expecting value: line 1"),
    (b"\xff\xfe\x00garbage", r"meta.json: not valid JSON \("),
])
def test_corrupt_files_are_named(tmp_path, content, message):
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_json(path)


def test_missing_file_says_what_it_means(tmp_path):
    with pytest.raises(InputError, match=r"config.json: file not found"):
        read_json(tmp_path / "config.json")
    with pytest.raises(InputError, match=r"config.json: missing; not a transformers checkpoint"):
        read_json(tmp_path / "config.json", missing="missing; not a transformers checkpoint")
