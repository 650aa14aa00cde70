"""Image names become directory names, and a repository often lives on a USB drive formatted
FAT32, exFAT or NTFS: a new name must be a valid file name on all of them, refused in one line
that says why, and two names that differ only in case are one name (the same directory on a
case-insensitive filesystem). Images stored before these rules still read."""

from __future__ import annotations

import json

import pytest

from rescue.errors import RepoError, UsageError
from rescue.repo.files import MAX_FILE
from rescue.repo.local import LocalStorage
from rescue.repo.store import (
    Repository,
    check_name,
    name_problem,
    same_name,
)


@pytest.mark.parametrize(
    "name",
    ["pc", "PC-2024-05-01", "Samsung-SSD-860-EVO-500GB-20240501-120000", "a.b_c+d-e", "x" * 128, "CONSOLE", "LPT10"],
)
def test_names_valid_everywhere_are_accepted(name):
    assert name_problem(name) is None
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a:b", "':' cannot be in a file name on FAT, exFAT or NTFS"),
        ("a*b", "'*' cannot be in a file name"),
        ("a?b", "'?' cannot be in a file name"),
        ('a"b', "'\"' cannot be in a file name"),
        ("a<b", "'<' cannot be in a file name"),
        ("a>b", "'>' cannot be in a file name"),
        ("a|b", "'|' cannot be in a file name"),
        ("a\\b", "'\\\\' cannot be in a file name"),
        ("a/b", "'/' cannot be in a file name"),
        ("a\x01b", "'\\x01' cannot be in a file name"),
        ("a\x1b[2Jb", "'\\x1b' cannot be in a file name"),
        ("pc.", "ends with a dot, which FAT and exFAT drop"),
        ("pc..", "ends with a dot"),
        ("CON", "CON is a device name on Windows"),
        ("con", "CON is a device name on Windows"),
        ("Nul.2024", "NUL is a device name on Windows"),
        ("aux", "AUX is a device name"),
        ("prn.x.y", "PRN is a device name"),
        ("COM1", "COM1 is a device name"),
        ("lpt9.img", "LPT9 is a device name"),
        ("", "it is empty"),
        ("x" * 129, "longer than 128 characters"),
        (".hidden", "starts with a dot or a dash"),
        ("-rf", "starts with a dot or a dash"),
        ("../evil", "starts with a dot"),
        ("a b", "use letters, digits, '.', '_', '+', '-' only"),
        ("café", "use letters, digits"),
    ],
)
def test_names_invalid_on_fat_exfat_or_ntfs_are_refused_in_one_line(name, reason):
    assert reason in (name_problem(name) or "")
    with pytest.raises(UsageError) as e:
        check_name(name)
    message = str(e.value)
    assert message.startswith("invalid image name ") and reason in message
    assert "\n" not in message and "\x1b" not in message and "\x01" not in message


def test_case_is_folded_when_names_are_compared():
    assert same_name("pc", "PC") and same_name("Office-PC", "office-pc")
    assert not same_name("pc1", "pc2")


def fake_image(repo: Repository, name: str) -> None:
    """An image directory with a manifest file: what makes a name taken (its content is not
    read for that)."""
    d = repo.path / "images" / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{}")


def test_a_name_differing_only_in_case_from_an_image_is_refused(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    fake_image(repo, "Office-PC")
    assert repo.taken_name("office-pc") == "Office-PC"
    assert repo.taken_name("Office-PC") == "Office-PC"
    assert repo.taken_name("office-pc2") is None
    with pytest.raises(RepoError) as e:
        repo.start_image("OFFICE-pc")
    assert "an image named 'Office-PC' already exists" in str(e.value)
    assert "differ only in case" in str(e.value)
    assert sorted(p.name for p in (repo.path / "images").iterdir()) == ["Office-PC"]
    with pytest.raises(RepoError, match="an image named 'Office-PC' already exists"):
        repo.start_image("Office-PC")


def test_a_leftover_in_another_case_is_cleared_like_one_in_the_same_case(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    (repo.path / "images" / "PC").mkdir()  # an interrupted capture: no manifest
    (repo.path / "images" / "PC" / "p1.idx").write_bytes(b"partial")
    repo.start_image("pc")
    d = repo.image_dir("pc")
    assert d.name == "pc" and not any(d.iterdir())
    assert [p.name for p in (repo.path / "images").iterdir()] == ["pc"]


def test_an_invalid_name_is_refused_before_anything_is_written(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    before = sorted(p.name for p in repo.path.rglob("*"))
    for bad in ("CON", "a:b", "pc."):
        with pytest.raises(UsageError):
            repo.start_image(bad)
    assert sorted(p.name for p in repo.path.rglob("*")) == before


def test_an_image_stored_under_an_older_name_still_reads_its_files(tmp_path):
    """Names valid before the FAT rules (a trailing dot, a Windows device name) are not new
    names any more, but the images already stored under them are still found."""
    repo = Repository.create(tmp_path / "repo")
    for old in ("con", "pc."):
        d = repo.image_dir(old)
        d.mkdir()
        (d / "verified.json").write_text(json.dumps({"ok": True}))
        assert repo.verified(old) is True


def test_a_repository_may_be_created_at_the_root_of_a_windows_formatted_drive(tmp_path):
    """Windows leaves these on every drive it has seen; they do not make the drive "not empty"."""
    stick, used = tmp_path / "stick", tmp_path / "used"
    for root in (stick, used):
        (root / "System Volume Information").mkdir(parents=True)
        (root / "$RECYCLE.BIN").mkdir()
    (used / "notes.txt").write_text("someone's file")
    assert (Repository.create(stick).path / "rescue-repo.json").is_file()
    with pytest.raises(RepoError, match="not empty"):
        Repository.create(used)


def test_no_repository_file_may_reach_the_fat32_limit():
    """An index is 33 bytes a chunk: even a 4 TB drive in 64 KiB chunks (the smallest a
    repository may use) stays far below 4 GiB; a local repository refuses anything larger."""
    from rescue.repo.index import Index

    assert Index.file_size(64 << 10, 4 * 10**12) < MAX_FILE // 2
    assert Index.file_size(4 << 20, 4 * 10**12) < 32 * 10**6

    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_FILE + 1

    with pytest.raises(OSError, match="more than a FAT32 drive holds in one file"):
        LocalStorage("/nonexistent").put("never-written", Huge())
