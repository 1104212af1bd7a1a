"""Download a dataset archive with a checksum, and extract it without leaving half-written files.

An archive has a list of URLs (its current one first, older mirrors after), tried in order, each
checked against the one digest. A download streams into `<dest>.part` and is renamed to `<dest>`
only once its checksum matches;
an extraction unpacks into a temporary folder beside its destination and is moved into place
only once every member is out. `download_dataset` removes the archive after a successful
extraction (MVTec AD alone is 4.9 GB).
"""
import hashlib
import lzma
import os
import posixpath
import secrets
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

# urls (tried in order, each checked against the one sha256), sha256, and the archive's own top
# folder that becomes the dataset folder (None: the archive's top level is the dataset). URLs and
# sha256 digests are those of anomalib's DownloadInfo (openvinotoolkit/anomalib); archive layouts
# follow its prepare_data.
ARCHIVES = {
    "mvtec": {
        "urls": [
            # anomalib 2.7, src/anomalib/data/datamodules/image/mvtecad.py: MVTec's current share link
            "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
            "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
            # the older share link, same archive: .../image/mvtecad.py @ 95369eeacd40932006bcf9fe5cc572d5ebd42298
            # (and .../image/mvtec.py @ 1b98f56ad486d1c0c9437b7a713a6fa0ddcc0135)
            "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
            "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz",
        ],
        "sha256": "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        "archive_folder": None,
    },
    # src/anomalib/data/datamodules/image/visa.py @ afecf6e2353d730d4e62923fadfbe38adc0e5a67
    # (raw layout: <class>/Data/..., split_csv/1cls.csv; datasets/visa.py prepares it)
    "visa": {
        "urls": ["https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"],
        "sha256": "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        "archive_folder": None,
    },
    # src/anomalib/data/datamodules/image/btech.py @ 6f0a80ab534d3a24116149f888dd7ae23b854115
    "btad": {
        "urls": ["https://avires.dimi.uniud.it/papers/btad/btad.zip"],
        "sha256": "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        "archive_folder": "BTech_Dataset_transformed",
    },
}

CHUNK_BYTES = 1 << 20


def file_digest(path, algorithm="sha256"):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_error(expected, path):
    """None if every expected digest ({algorithm: hex}) matches the file, else what differs."""
    for algorithm, hex_digest in expected.items():
        actual = file_digest(path, algorithm)
        if actual != hex_digest.lower():
            return f"{algorithm} mismatch (expected {hex_digest.lower()}, got {actual})"
    return None


def _stream_to_file(url, path, desc):
    request = urllib.request.Request(url, headers={"User-Agent": "anomaly-detection-suite"})
    with urllib.request.urlopen(request, timeout=60) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))


def _why_failed(err):
    """A download failure in a few words, or None for an exception that is not one (e.g. Ctrl-C)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, OSError):  # URLError (refused, DNS, no route), timeout, disk full
        return str(getattr(err, "reason", err))
    return None


def _all_failed(dest, failures):
    """The one-line error once every URL failed: ValueError if one served a wrong file, else ConnectionError."""
    if len(failures) == 1:
        (url, why, _), = failures
        head, by_hand = f"downloading {url} failed: {why}", "download it by hand"
    else:
        tried = "; ".join(f"[{i}] {url}: {why}" for i, (url, why, _) in enumerate(failures, start=1))
        head = f"downloading {dest.name} failed from all {len(failures)} URLs: {tried}"
        by_hand = "download it by hand from one of them"
    wrong_file = any(mismatch for _, _, mismatch in failures)
    message = f"{head}; {'the wrong download was deleted; ' if wrong_file else ''}{by_hand} and put it at {dest}"
    return ValueError(message) if wrong_file else ConnectionError(message)


def download_file(urls, dest_path, sha256=None, md5=None):
    """Download to `dest_path` from `urls` (one URL, or a list of mirrors tried in order), through
    `<dest_path>.part`: the file appears only once its checksum matches. A URL that fails or serves
    a file with another checksum is followed by the next; when all fail, one error names every URL
    and how it failed (ValueError if one served a wrong file, else ConnectionError). An existing
    file with the right checksum is kept without downloading."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("download_file needs at least one URL")
    dest = Path(dest_path)
    part = dest.with_name(dest.name + ".part")
    expected = {name: digest for name, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if dest.is_file() and _checksum_error(expected, dest) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    failures = []  # (url, why, served a wrong file)
    for index, url in enumerate(urls):
        try:
            _stream_to_file(url, part, desc=dest.name)
        except BaseException as err:  # an interrupted or failed download leaves no .part behind
            part.unlink(missing_ok=True)
            why = _why_failed(err)
            if why is None:
                raise
            failures.append((url, why, False))
        else:
            mismatch = _checksum_error(expected, part)
            if mismatch is None:
                os.replace(part, dest)
                return dest
            part.unlink()
            failures.append((url, mismatch, True))
        if index + 1 < len(urls):
            print(f"downloading {url} failed ({failures[-1][1]}); trying {urls[index + 1]}", file=sys.stderr)
    raise _all_failed(dest, failures)


def _archive_kind(path):
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")):
        return "tar"
    raise ValueError(f"cannot extract {path}: unknown archive type (expected .tar, .tar.gz, .tar.xz or .zip)")


def _escapes(member_name):
    """True if an archive member name would land outside the extraction folder."""
    name = member_name.replace("\\", "/")
    normalised = posixpath.normpath(name)
    return (name.startswith("/") or normalised == ".." or normalised.startswith("../")
            or ":" in name.split("/")[0])  # a Windows drive letter


def _refuse_escaping(archive_path, names):
    bad = [name for name in names if _escapes(name)]
    if bad:
        raise ValueError(f"refusing to extract {archive_path}: member(s) {', '.join(map(repr, bad[:3]))} "
                         "would be written outside the destination folder (path traversal)")


def _tar_member_names(archive_path, member):
    """The paths a tar member writes or points to (a symlink's target is relative to its folder)."""
    if member.issym():
        return [member.name, posixpath.join(posixpath.dirname(member.name), member.linkname)]
    if member.islnk():
        return [member.name, member.linkname]
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"refusing to extract {archive_path}: member {member.name!r} is a device or fifo")
    return [member.name]


def extract_archive(archive_path, out_dir, archive_folder=None):
    """Unpack a .tar, .tar.gz, .tar.xz or .zip so that its contents (or only its `archive_folder`)
    become `out_dir`. An archive with a member that would escape `out_dir` is refused, and neither
    a refused nor a broken archive leaves `out_dir` or a temporary folder behind."""
    archive_path, out_dir = Path(archive_path), Path(out_dir)
    kind = _archive_kind(archive_path)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"cannot extract {archive_path} into {out_dir}: it already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Beside out_dir (same filesystem, so the final rename is atomic); mkdir honours the umask.
    staging = out_dir.parent / f".{out_dir.name}.extracting-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        try:
            if kind == "zip":
                with zipfile.ZipFile(archive_path) as archive:
                    _refuse_escaping(archive_path, archive.namelist())
                    archive.extractall(staging)
            else:
                # One pass, member by member: listing a .tar.xz first would decompress it twice.
                # A refused member stops here and the staging folder is removed.
                with tarfile.open(archive_path) as archive:
                    for member in archive:
                        _refuse_escaping(archive_path, _tar_member_names(archive_path, member))
                        archive.extract(member, staging, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error) as err:
            raise ValueError(f"cannot extract {archive_path}: {err}; the archive is probably incomplete or "
                             "corrupted, delete it and download it again") from None
        source = staging / archive_folder if archive_folder else staging
        if not source.is_dir():
            raise ValueError(f"{archive_path} has no top folder {archive_folder!r}; found "
                             f"{sorted(p.name for p in staging.iterdir())[:5]}")
        os.replace(source, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def download_dataset(name, dest):
    """Fetch ARCHIVES[name] and extract it so that `dest` is the dataset folder; nothing happens if
    `dest` is already there and not empty. The archive (saved beside `dest`) is removed afterwards."""
    if name not in ARCHIVES:
        raise ValueError(f"no download for {name!r}; known: {', '.join(ARCHIVES)}")
    info = ARCHIVES[name]
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    archive_path = dest.parent / info["urls"][0].rsplit("/", 1)[-1]
    download_file(info["urls"], archive_path, sha256=info["sha256"])
    extract_archive(archive_path, dest, archive_folder=info["archive_folder"])
    archive_path.unlink()
    return dest
