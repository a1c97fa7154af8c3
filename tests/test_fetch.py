from pathlib import Path

import pytest

from seq2seq.data import fetch
from seq2seq.data.fetch import FetchError, cache_dir, fetch_deb, fetch_pypi_file, sha256_of


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_failed_command_names_package_and_command():
    with pytest.raises(FetchError) as err:
        fetch._run(["false"], "PyPI package demo==1.0")
    assert "PyPI package demo==1.0" in str(err.value) and "`false`" in str(err.value)
    with pytest.raises(FetchError, match="no-such-binary"):
        fetch._run(["no-such-binary-here"], "Debian package demo")


def test_cached_file_with_right_hash_is_not_fetched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    target = tmp_path / "pypi" / "demo-1.0.tar.gz"
    target.parent.mkdir()
    target.write_bytes(b"demo")
    monkeypatch.setattr(fetch, "_run", lambda *a, **k: pytest.fail("fetched again"))
    assert fetch_pypi_file("demo==1.0", "demo-1.0.tar.gz", sha256_of(target), sdist=True) == target


def test_checksum_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))

    def fake_pip(cmd, what, env=None, cwd=None):
        Path(cmd[cmd.index("-d") + 1], "demo-1.0.tar.gz").write_bytes(b"tampered")

    monkeypatch.setattr(fetch, "_run", fake_pip)
    with pytest.raises(FetchError, match="demo-1.0.tar.gz has sha256 .* expected 00"):
        fetch_pypi_file("demo==1.0", "demo-1.0.tar.gz", "00" * 32, sdist=True)
    assert not (tmp_path / "pypi" / "demo-1.0.tar.gz").exists()


def test_missing_apt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(FetchError, match="needs apt-get and dpkg-deb"):
        fetch_deb("fonts-noto-color-emoji")


@pytest.mark.network
def test_unknown_package_fails_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    with pytest.raises(FetchError, match="seq2seq-no-such-package==0.0.1"):
        fetch_pypi_file("seq2seq-no-such-package==0.0.1", "x.tar.gz", "00" * 32, sdist=True)
