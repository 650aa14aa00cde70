"""The wizard's repository screen finds Clonezilla image directories beside repositories and
marks them (issue 17): the search (rescue.hw.discover) over a real directory tree, and the
screen over what the engine hands it."""

from unittest import mock

from helpers import render

from rescue.engine import RepoInfo
from rescue.hw.discover import Place, clonezilla_dirs, locations, repo_dirs
from rescue.tui import controllers, views


def clonezilla_image(path, disk="sda"):
    path.mkdir(parents=True)
    (path / "disk").write_text(f"{disk}\n")
    (path / "parts").write_text(f"{disk}1 {disk}2\n")
    (path / f"{disk}-pt.sf").write_text("label: gpt\n")


def test_clonezilla_directories_are_found_beside_repositories(tmp_path):
    clonezilla_image(tmp_path / "2024-05-01-img")
    clonezilla_image(tmp_path / "deeper" / "2023-img")  # two levels down: not searched
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "rescue-repo.json").write_text("{}")
    (tmp_path / "not-an-image").mkdir()
    (tmp_path / "not-an-image" / "disk").write_text("sda\n")  # no table dump beside it
    assert clonezilla_dirs(str(tmp_path)) == [str(tmp_path / "2024-05-01-img")]
    assert repo_dirs(str(tmp_path)) == [str(tmp_path / "repo")]
    assert clonezilla_dirs(str(tmp_path / "2024-05-01-img")) == [str(tmp_path / "2024-05-01-img")]

    place = Place(
        "/dev/sdb1", "sdb", "exfat", "USB", 1 << 30, 1 << 29, str(tmp_path), True, True,
        repo_dirs(str(tmp_path)), clonezilla=clonezilla_dirs(str(tmp_path)),
    )  # fmt: skip
    found = {loc.path: loc.clonezilla for loc in locations([place])}
    assert found == {str(tmp_path / "repo"): False, str(tmp_path / "2024-05-01-img"): True}


def test_the_repository_screen_marks_clonezilla_images():
    c = mock.create_autospec(controllers.RepoStep, instance=True)
    v = views.RepoView(
        c,
        [
            RepoInfo("/run/rescue/repos/sdb1/rescue", "sdb"),
            RepoInfo("/run/rescue/repos/sdb1/2024-05-01-img", "sdb", True, True),
        ],
    )
    lines = render(v)
    assert all(len(line) <= 80 for line in lines)
    cz = next(line for line in lines if "2024-05-01-img" in line)
    repo = next(line for line in lines if "sdb1/rescue" in line)
    assert "(on sdb)  Clonezilla image" in cz and "Clonezilla" not in repo
