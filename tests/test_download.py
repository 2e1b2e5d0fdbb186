"""`mt data multi30k` against a local mirror: whole files land in place, anything else leaves nothing."""
from __future__ import annotations

import functools
import gzip
import http.server
import threading

import pytest

from mt import download
from mt.cli import main
from mt.errors import MTError


def write_mirror(directory, short=None):
    """Gzipped files with Multi30k's names and line counts (tiny lines); ``short`` is cut to 10 lines."""
    for split, (upstream, lines) in download.SPLITS.items():
        for lang in download.LANGS:
            n = 10 if f"{split}.{lang}" == short else lines
            with gzip.open(directory / f"{upstream}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.writelines(f"{lang} {i}\n" for i in range(n))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """An http.server on 127.0.0.1 serving tmp_path/mirror; MT_MULTI30K_URL points at it."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(download.URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    yield root
    server.shutdown()
    server.server_close()


def test_downloads_every_file_with_its_line_count(mirror, tmp_path, capsys):
    write_mirror(mirror)
    main(["data", "multi30k", "--dir", str(tmp_path / "data")])
    target = tmp_path / "data" / "multi30k"
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(f"{s}.{l}" for s in ("train", "val", "test2016") for l in ("en", "de", "fr", "cs"))
    assert download.count_lines(target / "train.de") == 29000
    assert download.count_lines(target / "val.cs") == 1014
    lines = (target / "test2016.fr").read_text().splitlines()
    assert len(lines) == 1000 and lines[:2] == ["fr 0", "fr 1"]
    assert "is in" in capsys.readouterr().err
    main(["data", "multi30k", "--dir", str(tmp_path / "data")])  # a second run downloads nothing
    assert "already in" in capsys.readouterr().err


def test_default_root_is_mt_data_root(mirror, tmp_path, monkeypatch):
    write_mirror(mirror)
    monkeypatch.setenv("MT_DATA_ROOT", str(tmp_path / "root"))
    assert download.download_multi30k(log=lambda m: None) == tmp_path / "root" / "multi30k"
    assert download.count_lines(tmp_path / "root" / "multi30k" / "val.en") == 1014


def test_a_short_file_fails_and_writes_nothing(mirror, tmp_path):
    write_mirror(mirror, short="val.fr")
    with pytest.raises(MTError, match=r"val_?\w*\.fr\.gz has 10 lines, Multi30k's val.fr has 1014"):
        download.download_multi30k(tmp_path / "data", log=lambda m: None)
    assert list((tmp_path / "data" / "multi30k").iterdir()) == []  # no partial corpus, no temporary files


def test_unreachable_mirror_says_what_to_download_and_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(download.URL_ENV, "http://127.0.0.1:9/")  # the discard port: connection refused
    with pytest.raises(SystemExit) as exit_:
        main(["data", "multi30k", "--dir", str(tmp_path / "data")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot download http://127.0.0.1:9/train.en.gz")
    assert "test_2016_flickr.{en,de,fr,cs}.gz" in err and str(tmp_path / "data" / "multi30k") in err
    assert "MT_MULTI30K_URL" in err
    assert list((tmp_path / "data" / "multi30k").iterdir()) == []


def test_a_missing_file_on_the_mirror_is_an_error(mirror, tmp_path):
    write_mirror(mirror)
    (mirror / "train.cs.gz").unlink()
    with pytest.raises(MTError, match=r"cannot download .*train\.cs\.gz \(HTTP 404\)"):
        download.download_multi30k(tmp_path / "data", log=lambda m: None)
    assert not (tmp_path / "data" / "multi30k" / "train.en").exists()
