"""Downloads against a real HTTP server on 127.0.0.1 serving small archives in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from imgcls.data.download import RemoteDataset, RemoteFile, download, load_builtin
from imgcls.errors import UserError


class _Server:
    """Serves `files` (name -> bytes); honours Range unless `ranges` is off; can cut the first transfer short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut_first = False
        self.log: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                body = server.files.get(name)
                rng = self.headers.get("Range")
                if body is None:
                    server.log.append((name, rng, 404))
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng and server.ranges else 0
                status = 206 if start else 200
                server.log.append((name, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if server.cut_first:
                    server.cut_first = False
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cifar10_archive(per_batch=3) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    members, labels = {}, []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        y = rng.integers(0, 10, per_batch, dtype=np.uint8)
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        members[f"cifar-10-batches-bin/{name}"] = np.concatenate([y[:, None], x], 1).tobytes()
        labels.append(y)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(names) + "\n\n").encode()
    return _tar(members), np.concatenate(labels)


def test_download_good_archive_and_cifar10_parse(server, tmp_path):
    archive, labels = _cifar10_archive()
    server.files["cifar-10-binary.tar.gz"] = archive
    remote = RemoteDataset(server.url, (RemoteFile("cifar-10-binary.tar.gz", _sha(archive), len(archive)),))
    arrays = load_builtin("cifar10", root=tmp_path, remote=remote)
    assert arrays.classes[:3] == ["airplane", "automobile", "bird"] and len(arrays.classes) == 10
    assert arrays.train_images.shape == (15, 3, 32, 32) and arrays.test_images.shape == (3, 3, 32, 32)
    assert arrays.train_targets.tolist() == labels[:15].tolist()
    assert arrays.test_targets.tolist() == labels[15:].tolist()
    # record layout: label byte, then 1024 R, 1024 G, 1024 B
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        raw = tar.extractfile("cifar-10-batches-bin/data_batch_1.bin").read()
    assert arrays.train_images[0, 1, 0, 0] == raw[1 + 1024]
    requests = len(server.log)
    again = load_builtin("cifar10", root=tmp_path, remote=remote)
    assert len(server.log) == requests  # parsed arrays reused, nothing fetched
    assert isinstance(again.train_images, np.memmap)


def test_corrupted_archive_is_a_clear_error(server, tmp_path):
    archive, _ = _cifar10_archive()
    server.files["cifar-10-binary.tar.gz"] = archive[:-10] + b"0123456789"
    remote = RemoteDataset(server.url, (RemoteFile("cifar-10-binary.tar.gz", _sha(archive), len(archive)),))
    with pytest.raises(UserError, match="SHA-256 mismatch") as info:
        load_builtin("cifar10", root=tmp_path, remote=remote)
    assert server.url in str(info.value)
    leftovers = [p.name for p in (tmp_path / "cifar10" / "downloads").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # the bad transfer was deleted: the next run starts clean


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    body = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    server.files["blob.bin"] = body
    server.cut_first = True
    out = download(server.url + "blob.bin", tmp_path / "blob.bin", _sha(body), len(body))
    assert out.read_bytes() == body
    assert server.log[0][2] == 200 and server.log[1][2] == 206
    assert server.log[1][1] == f"bytes={len(body) // 2}-"


def test_server_without_range_restarts_cleanly(server, tmp_path):
    body = bytes(range(256)) * 400
    server.files["blob.bin"] = body
    server.ranges = False
    (tmp_path / "blob.bin.part").write_bytes(body[:1000])  # left by an earlier, interrupted run
    out = download(server.url + "blob.bin", tmp_path / "blob.bin", _sha(body), len(body))
    assert out.read_bytes() == body and server.log[0][1] == "bytes=1000-" and server.log[0][2] == 200
    assert not (tmp_path / "blob.bin.part").exists()


def test_missing_file_and_dead_server(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download(server.url + "nothing.bin", tmp_path / "n.bin", "0" * 64)
    with pytest.raises(UserError, match="download failed after 1 attempts"):
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", "0" * 64, retries=0, timeout=2)


def _idx(data: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in data.shape)
    return gzip.compress(header + data.astype(np.uint8).tobytes())


def test_mnist_idx_and_cifar100_coarse(server, tmp_path):
    rng = np.random.default_rng(2)
    files = {}
    for prefix, n in (("train", 7), ("t10k", 4)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx(rng.integers(0, 256, (n, 28, 28)), 2051)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx(rng.integers(0, 10, n), 2049)
    server.files.update(files)
    remote = RemoteDataset(server.url, tuple(RemoteFile(k, _sha(v), len(v)) for k, v in files.items()))
    arrays = load_builtin("fashion-mnist", root=tmp_path, remote=remote)
    assert arrays.train_images.shape == (7, 1, 28, 28) and arrays.test_images.shape == (4, 1, 28, 28)
    assert arrays.classes[0] == "T-shirt/top"
    labels = np.frombuffer(gzip.decompress(files["train-labels-idx1-ubyte.gz"])[8:], np.uint8)
    assert arrays.train_targets.tolist() == labels.tolist()

    recs = []
    for _ in range(4):
        recs.append(bytes([rng.integers(0, 20), rng.integers(0, 100)]) + rng.integers(0, 256, 3072, np.uint8).tobytes())
    names = "\n".join(f"c{i}" for i in range(20)).encode(), "\n".join(f"f{i}" for i in range(100)).encode()
    archive = _tar(
        {
            "cifar-100-binary/train.bin": b"".join(recs[:3]),
            "cifar-100-binary/test.bin": recs[3],
            "cifar-100-binary/coarse_label_names.txt": names[0],
            "cifar-100-binary/fine_label_names.txt": names[1],
        }
    )
    server.files["cifar-100-binary.tar.gz"] = archive
    remote = RemoteDataset(server.url, (RemoteFile("cifar-100-binary.tar.gz", _sha(archive), len(archive)),))
    fine = load_builtin("cifar100", root=tmp_path, remote=remote)
    coarse = load_builtin("cifar100:coarse", root=tmp_path, remote=remote)
    assert len(fine.classes) == 100 and len(coarse.classes) == 20
    assert fine.train_targets.tolist() == [r[1] for r in recs[:3]]
    assert coarse.train_targets.tolist() == [r[0] for r in recs[:3]]


def test_published_prefix_and_no_digest(server, tmp_path):
    body = b"weights" * 1000
    server.files["w.bin"] = body
    assert download(server.url + "w.bin", tmp_path / "w.bin", _sha(body)[:10]).read_bytes() == body
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        download(server.url + "w.bin", tmp_path / "v.bin", "deadbeef")
    assert download(server.url + "w.bin", tmp_path / "u.bin").read_bytes() == body  # caller checks itself
    with pytest.raises(UserError, match="got 7000 bytes, expected 7001"):
        download(server.url + "w.bin", tmp_path / "t.bin", None, len(body) + 1)


def test_full_disk_during_a_download_is_one_line_without_retries(server, tmp_path):
    from tests.test_files import tmpfs

    body = np.random.default_rng(3).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    server.files["big.bin"] = body
    with tmpfs(tmp_path / "mnt", "1m") as disk:
        with pytest.raises(UserError, match="No space left on device") as info:
            download(server.url + "big.bin", disk / "big.bin", _sha(body), len(body))
        assert "big.bin.part" in str(info.value) and "\n" not in str(info.value)
        assert len(server.log) == 1  # a local write error is not retried
