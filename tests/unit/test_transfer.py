"""dlaas.transfer: verified, atomic, link-capable copies of file trees."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from dlaas import transfer
from dlaas.transfer import TransferError, copy_file, copy_tree, safe_relpath, sha256_file


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": bytes(range(256)) * 100,
        "sub/deeper/c.txt": b"",
        "run.sh": b"#!/bin/sh\necho hi\n",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "run.sh").chmod(0o755)
    (root / "empty-folder").mkdir()
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_copy_tree_copies_every_file_with_its_mode(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out" / "dst"
    files = make_tree(src)

    stats = copy_tree(src, dst)

    assert read_tree(dst) == files
    assert (dst / "empty-folder").is_dir()
    assert stat.S_IMODE((dst / "run.sh").stat().st_mode) == 0o755
    assert stats == transfer.TransferStats(
        files=len(files), bytes=sum(len(c) for c in files.values()), skipped=0, linked=0
    )
    assert not [p for p in dst.rglob(".dlaas-*")], "no temporary files left behind"


def test_copy_tree_skips_identical_files_and_recopies_changed_ones(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_tree(src)
    copy_tree(src, dst)
    # Same size, different content: must be noticed through the hash, not the size.
    (dst / "a.txt").write_bytes(b"ALPHA\n")

    stats = copy_tree(src, dst)

    assert stats.files == 1 and stats.skipped == len(files) - 1
    assert read_tree(dst) == files


def test_copy_tree_link_mode_shares_the_inode(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_tree(src)

    stats = copy_tree(src, dst, link=True)

    assert stats.linked == len(files) == stats.files
    for rel in files:
        assert os.path.samefile(src / rel, dst / rel)
    again = copy_tree(src, dst, link=True)
    assert again.skipped == len(files) and again.files == 0


def test_copy_tree_link_mode_falls_back_to_a_copy_across_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_tree(src)

    def cross_device(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    stats = copy_tree(src, dst, link=True)

    assert stats.linked == 0 and stats.files == len(files)
    assert read_tree(dst) == files
    assert not os.path.samefile(src / "a.txt", dst / "a.txt")


def test_verify_catches_a_corrupted_write_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "model.pt").write_bytes(b"weights" * 1000)
    real_copy: Callable[..., str] = transfer._copy_stream

    def corrupting_copy(source: io.BufferedReader, target: io.BufferedWriter, progress: Callable[[int], None]) -> str:
        digest = real_copy(source, target, progress)
        target.seek(0)
        target.write(b"X")  # a bit flipped on the way to the disk
        return digest

    monkeypatch.setattr(transfer, "_copy_stream", corrupting_copy)
    with pytest.raises(TransferError, match=r"verification failed.*model\.pt"):
        copy_tree(src, dst, verify=True)

    assert list((dst / "sub").iterdir()) == []


def test_copy_tree_reports_bytes_as_they_move(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = make_tree(src)
    for index in range(20):
        (src / "many" / f"{index}.txt").parent.mkdir(exist_ok=True)
        (src / "many" / f"{index}.txt").write_bytes(b"x" * index)
    seen: list[int] = []

    stats = copy_tree(src, dst, on_bytes=seen.append, workers=4)

    total = sum(len(c) for c in files.values()) + sum(range(20))
    assert sum(seen) == total == stats.bytes


@pytest.mark.parametrize("kind", ["file-symlink", "folder-symlink"])
def test_copy_tree_refuses_symlinks_without_writing_anything(tmp_path: Path, kind: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    if kind == "file-symlink":
        (src / "sub" / "passwd").symlink_to("/etc/passwd")
    else:
        (src / "etc").symlink_to("/etc", target_is_directory=True)

    with pytest.raises(TransferError, match="symlink"):
        copy_tree(src, dst)

    assert not dst.exists() or read_tree(dst) == {}


def test_copy_tree_refuses_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")

    with pytest.raises(TransferError, match=r"special file.*pipe"):
        copy_tree(src, tmp_path / "dst")


def test_copy_tree_needs_a_source_folder(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="cannot read"):
        copy_tree(tmp_path / "missing", tmp_path / "dst")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TransferError, match="not a directory"):
        copy_tree(tmp_path / "file", tmp_path / "dst")


def test_copy_file_copies_and_skips(tmp_path: Path) -> None:
    src = tmp_path / "training.log"
    src.write_text("epoch=1 loss=0.5\n")
    dst = tmp_path / "results" / "logs" / "training.log"

    first = copy_file(src, dst)
    second = copy_file(src, dst)

    assert dst.read_text() == "epoch=1 loss=0.5\n"
    assert (first.files, second.skipped) == (1, 1)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "data/train-00001.npz", "with space/ü.txt"])
def test_safe_relpath_accepts_plain_relative_keys(key: str) -> None:
    assert safe_relpath(key).as_posix() == key


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a//b", "a/", "a\\b", "..\\x", "a\x00b", "."],
)
def test_safe_relpath_refuses_escaping_or_ambiguous_keys(key: str) -> None:
    with pytest.raises(TransferError):
        safe_relpath(key)
