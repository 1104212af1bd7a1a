"""Downloads against a local HTTP server on 127.0.0.1 serving generated archives; no other network."""
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from functools import partial

import pytest
import torch
from torchvision.datasets import MNIST

from datasets import download
from datasets.download import download_dataset, download_file, extract_archive
from datasets.oneclass import TORCHVISION_CLASSES, SemanticDataset
from tests.test_datasets_semantic import TRAIN_LABELS, mnist_raw_files

MEMBERS = {"toy/readme.txt": b"a tiny dataset\n", "toy/good/000.txt": b"0" * 1000, "toy/good/001.txt": b"1" * 10}


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server(tmp_path):
    """(base url, served folder, list of requested paths) of a server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, *args):  # once per answered request (an error is also logged by log_error)
            requested.append(self.path)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served, requested
    httpd.shutdown()
    httpd.server_close()


def tar_bytes(members, mode="w:gz"):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_archive_downloads_verifies_and_extracts(server, tmp_path):
    base_url, served, _ = server
    archive = tar_bytes(MEMBERS)
    (served / "toy.tar.gz").write_bytes(archive)
    dest = tmp_path / "downloads" / "toy.tar.gz"

    path = download_file(f"{base_url}/toy.tar.gz", dest, sha256=sha256(archive),
                         md5=hashlib.md5(archive).hexdigest())
    assert path == dest and dest.read_bytes() == archive
    assert leftovers(dest.parent) == ["toy.tar.gz"]  # no .part left

    out = extract_archive(dest, tmp_path / "extracted")
    for name, data in MEMBERS.items():
        assert (out / name).read_bytes() == data
    assert leftovers(tmp_path) == ["downloads", "extracted", "served"]  # no staging folder left


def flip_a_byte(data):
    corrupted = bytearray(data)
    corrupted[len(corrupted) // 2] ^= 0xFF
    return bytes(corrupted)


def test_corrupted_download_fails_checksum_and_leaves_nothing(server, tmp_path):
    base_url, served, _ = server
    archive = tar_bytes(MEMBERS)
    corrupted = flip_a_byte(archive)
    (served / "toy.tar.gz").write_bytes(corrupted)
    url = f"{base_url}/toy.tar.gz"

    with pytest.raises(ValueError) as error:
        download_file(url, tmp_path / "downloads" / "toy.tar.gz", sha256=sha256(archive))
    message = str(error.value)
    assert url in message and sha256(archive) in message and sha256(corrupted) in message
    assert leftovers(tmp_path / "downloads") == []


def test_http_404_names_the_url_and_the_manual_route(server, tmp_path):
    base_url, _, _ = server
    url = f"{base_url}/missing.tar.gz"
    dest = tmp_path / "downloads" / "missing.tar.gz"
    with pytest.raises(ConnectionError) as error:
        download_file(url, dest, sha256="0" * 64)
    message = str(error.value)
    assert url in message and "404" in message and "by hand" in message and str(dest) in message
    assert leftovers(tmp_path / "downloads") == []


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(ConnectionError, match="downloading http://127.0.0.1:9/x.zip failed.*by hand"):
        download_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip")


@pytest.mark.parametrize("suffix, make", [
    (".tar", partial(tar_bytes, mode="w")), (".tar.gz", tar_bytes),
    (".tar.xz", partial(tar_bytes, mode="w:xz")), (".zip", zip_bytes),
])
def test_extract_formats_and_archive_folder(tmp_path, suffix, make):
    archive = tmp_path / f"toy{suffix}"
    archive.write_bytes(make(MEMBERS))
    out = extract_archive(archive, tmp_path / "whole")
    assert (out / "toy" / "good" / "001.txt").read_bytes() == b"1" * 10
    out = extract_archive(archive, tmp_path / "inner", archive_folder="toy")
    assert leftovers(out) == ["good", "readme.txt"]
    with pytest.raises(FileExistsError):
        extract_archive(archive, tmp_path / "inner")


@pytest.mark.parametrize("suffix, make", [(".zip", zip_bytes), (".tar.gz", tar_bytes)])
def test_path_traversal_is_refused_before_writing(tmp_path, suffix, make):
    archive = tmp_path / "sub" / f"evil{suffix}"
    archive.parent.mkdir()
    archive.write_bytes(make({"ok.txt": b"fine", "../evil": b"gotcha"}))
    with pytest.raises(ValueError, match="path traversal") as error:
        extract_archive(archive, tmp_path / "sub" / "out")
    assert "../evil" in str(error.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sub" / "evil").exists()
    assert leftovers(tmp_path / "sub") == [archive.name]


def test_tar_symlink_out_of_the_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        archive.addfile(link)
    (tmp_path / "link.tar").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="path traversal"):
        extract_archive(tmp_path / "link.tar", tmp_path / "out")


def test_broken_archive_leaves_nothing_half_written(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(tar_bytes(MEMBERS)[:-40])
    with pytest.raises(ValueError, match="broken.tar.gz.*download it again"):
        extract_archive(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["broken.tar.gz"]


def test_download_dataset_is_idempotent_and_removes_the_archive(server, tmp_path, monkeypatch):
    base_url, served, requested = server
    archive = tar_bytes(MEMBERS)
    (served / "toy.tar.gz").write_bytes(archive)
    monkeypatch.setitem(download.ARCHIVES, "toy", {"urls": [f"{base_url}/toy.tar.gz"], "sha256": sha256(archive),
                                                   "archive_folder": "toy"})
    root = tmp_path / "data"
    out = download_dataset("toy", root / "Toy")
    assert out == root / "Toy" and (out / "good" / "000.txt").read_bytes() == b"0" * 1000
    assert leftovers(root) == ["Toy"]  # archive removed after extraction
    assert requested == ["/toy.tar.gz"]

    assert download_dataset("toy", root / "Toy") == out
    assert requested == ["/toy.tar.gz"]  # nothing fetched the second time
    with pytest.raises(ValueError, match="mvtec, visa, btad"):
        download_dataset("imagenet", root)


def test_archives_table_is_complete():
    assert set(download.ARCHIVES) == {"mvtec", "visa", "btad"}
    for info in download.ARCHIVES.values():
        assert info["urls"] and all(url.startswith("https://") for url in info["urls"])
        assert len({url.rsplit("/", 1)[-1] for url in info["urls"]}) == 1  # mirrors of one archive
        assert len(info["sha256"]) == 64
        int(info["sha256"], 16)
    mvtec = download.ARCHIVES["mvtec"]["urls"]
    assert mvtec[0] == ("https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
                        "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz")  # anomalib 2.7's, first
    assert "shares/38536/" in mvtec[1]  # the old share link, after


# ---------------------------------------------------------------- several URLs per archive


def test_first_url_404_then_the_second_one(server, tmp_path, capsys):
    base_url, served, requested = server
    archive = tar_bytes(MEMBERS)
    (served / "mirror").mkdir()
    (served / "mirror" / "toy.tar.gz").write_bytes(archive)
    dest = tmp_path / "downloads" / "toy.tar.gz"
    urls = [f"{base_url}/gone/toy.tar.gz", f"{base_url}/mirror/toy.tar.gz"]
    assert download_file(urls, dest, sha256=sha256(archive)) == dest
    assert dest.read_bytes() == archive and leftovers(dest.parent) == ["toy.tar.gz"]
    assert requested == ["/gone/toy.tar.gz", "/mirror/toy.tar.gz"]
    assert f"{urls[0]} failed (HTTP 404" in capsys.readouterr().err


def test_first_url_serving_a_corrupted_archive_then_the_second_one(server, tmp_path):
    base_url, served, requested = server
    archive = tar_bytes(MEMBERS)
    (served / "bad.tar.gz").write_bytes(flip_a_byte(archive))
    (served / "good.tar.gz").write_bytes(archive)
    dest = tmp_path / "downloads" / "toy.tar.gz"
    download_file([f"{base_url}/bad.tar.gz", f"{base_url}/good.tar.gz"], dest, sha256=sha256(archive))
    assert dest.read_bytes() == archive and leftovers(dest.parent) == ["toy.tar.gz"]
    assert requested == ["/bad.tar.gz", "/good.tar.gz"]


def test_every_url_failing_names_them_all_on_one_line(server, tmp_path):
    base_url, _, _ = server
    urls = [f"{base_url}/a/missing.tar.gz", "http://127.0.0.1:9/missing.tar.gz", f"{base_url}/b/missing.tar.gz"]
    dest = tmp_path / "downloads" / "missing.tar.gz"
    with pytest.raises(ConnectionError) as error:
        download_file(urls, dest, sha256="0" * 64)
    message = str(error.value)
    assert "\n" not in message and "failed from all 3 URLs" in message
    for index, url in enumerate(urls, start=1):
        assert f"[{index}] {url}: " in message
    assert message.count("HTTP 404") == 2 and "by hand" in message and str(dest) in message
    assert leftovers(tmp_path / "downloads") == []


def test_a_wrong_file_among_the_failures_is_a_value_error_saying_which(server, tmp_path):
    base_url, served, _ = server
    archive = tar_bytes(MEMBERS)
    (served / "other.tar.gz").write_bytes(archive + b"extra")
    urls = [f"{base_url}/missing.tar.gz", f"{base_url}/other.tar.gz"]
    with pytest.raises(ValueError) as error:
        download_file(urls, tmp_path / "toy.tar.gz", sha256=sha256(archive))
    message = str(error.value)
    assert f"[1] {urls[0]}: HTTP 404" in message
    assert f"[2] {urls[1]}: sha256 mismatch (expected {sha256(archive)}, got {sha256(archive + b'extra')})" in message
    assert "deleted" in message and leftovers(tmp_path) == ["served"]


def test_download_dataset_falls_back_to_the_next_url(server, tmp_path, monkeypatch):
    base_url, served, requested = server
    archive = tar_bytes(MEMBERS)
    (served / "toy.tar.gz").write_bytes(archive)
    monkeypatch.setitem(download.ARCHIVES, "toy", {"urls": [f"{base_url}/moved/toy.tar.gz", f"{base_url}/toy.tar.gz"],
                                                   "sha256": sha256(archive), "archive_folder": "toy"})
    out = download_dataset("toy", tmp_path / "data" / "Toy")
    assert (out / "good" / "001.txt").read_bytes() == b"1" * 10
    assert requested == ["/moved/toy.tar.gz", "/toy.tar.gz"] and leftovers(tmp_path / "data") == ["Toy"]


def test_torchvision_mnist_download_through_local_server(server, tmp_path, monkeypatch):
    base_url, served, requested = server
    resources = []
    for name, data in mnist_raw_files().items():
        gz = gzip.compress(data)
        (served / f"{name}.gz").write_bytes(gz)
        resources.append((f"{name}.gz", hashlib.md5(gz).hexdigest()))
    # torchvision downloads from MNIST.mirrors and checks the real files' md5s: point both at
    # the local copies.
    monkeypatch.setattr(MNIST, "mirrors", [f"{base_url}/"])
    monkeypatch.setattr(MNIST, "resources", resources)

    root = tmp_path / "data"
    train = SemanticDataset("mnist", root, "train", image_size=32, crop_size=28, download=True)
    assert torch.equal(train.targets, torch.as_tensor(TRAIN_LABELS))
    assert train[0]["image"].shape == (3, 28, 28)
    assert (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    assert any(path.endswith("train-images-idx3-ubyte.gz") for path in requested)


@pytest.mark.parametrize("name, attribute, url_tail, layout", [
    ("mnist", "mirrors", "nowhere/", "MNIST/raw"),
    ("cifar10", "url", "nowhere/cifar-10-python.tar.gz", "cifar-10-batches-py"),
])
def test_torchvision_download_failure_is_wrapped(server, tmp_path, monkeypatch, name, attribute, url_tail, layout):
    base_url, _, _ = server
    url = f"{base_url}/{url_tail}"
    monkeypatch.setattr(TORCHVISION_CLASSES[name], attribute, [url] if attribute == "mirrors" else url)
    with pytest.raises(ValueError) as error:
        SemanticDataset(name, tmp_path, "train", download=True)
    message = str(error.value)
    assert f"downloading {name} with torchvision failed" in message and "404" in message
    assert url in message and str(tmp_path / layout) in message
