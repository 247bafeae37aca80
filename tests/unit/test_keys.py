"""The one spelling of object keys and prefixes, shared by the gateway and storage."""

from __future__ import annotations

import pytest

from dlaas import keys


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("", ""),
        ("a/b", "a/b"),
        ("/a/b", "a/b"),
        ("///a//b///", "a/b/"),
        ("./a/./b/.", "a/b"),
        ("a/", "a/"),
        ("/", "/"),  # names nothing: left for `problem` to refuse
        ("./.", "./."),
        ("cafe\u0301/", "cafe\u0301/"),  # Unicode as written: S3 keys are exact strings
        (".../a", ".../a"),
        ("..", ".."),  # not made safe: refused by `problem`
        ("a/../b", "a/../b"),
    ],
)
def test_normalize(written: str, normal: str) -> None:
    assert keys.normalize(written) == normal
    assert keys.normalize(normal) == normal  # one spelling: normalizing it again changes nothing


@pytest.mark.parametrize(
    ("text", "is_key", "words"),
    [
        ("..", False, "'..'"),
        ("a/../b", False, "'..'"),
        ("a\\b", False, "backslash"),
        ("a\x00b", False, "control"),
        ("tab\tname", False, "control"),
        ("x" * 1025, False, "1024 bytes"),
        ("\u00e9" * 513, False, "1024 bytes"),  # 1,026 bytes in UTF-8
        ("", True, "required"),
        ("/", False, "whole bucket"),
        ("./", False, "whole bucket"),
        ("//./", True, "whole bucket"),
        ("dir/", True, "not end with '/'"),
    ],
)
def test_problem(text: str, is_key: bool, words: str) -> None:
    why = keys.problem(text, is_key=is_key)
    assert why is not None and words in why


@pytest.mark.parametrize("text", ["", "a", "a/", "a..b/c", ".hidden/x", "...", "x" * 1024, "\u00e9" * 512])
def test_acceptable(text: str) -> None:
    assert keys.problem(text) is None
