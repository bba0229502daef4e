"""Published weights: the table, where copies are looked for, downloads from a real HTTP server on 127.0.0.1, the
offline messages (exact texts) and `imgcls weights list|path|verify`."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file
from tests.models.helpers import TinyNet, outputs, trained_tiny
from tests.support import free_port

import imgcls
from imgcls.cli import main
from imgcls.errors import UserError
from imgcls.models import published as P
from imgcls.models import weights as W


@pytest.fixture(autouse=True)
def _private_caches(monkeypatch, tmp_path):
    """Every place a copy is looked for points into this test's folder (nothing of the user's is read)."""
    monkeypatch.setenv(P.WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    monkeypatch.delenv(P.OLD_WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(P.URL_ENV, raising=False)


def test_every_listed_file_belongs_to_a_registered_model_and_is_well_formed():
    registered = set(imgcls.list_models())
    for model, source, entry in P.published_files():
        assert model in registered, (model, source)
        assert re.fullmatch(r"[0-9a-f]*", entry.sha256), (model, source)
        assert 0.8 < entry.crop_pct <= 1.0
        if source.startswith("torchvision"):
            assert entry.path == entry.file_name and entry.path.endswith(f"-{entry.sha256}.pth")
            assert len(entry.sha256) == 8
        else:
            assert entry.path == f"{entry.file_name.removesuffix('.safetensors')}/resolve/main/model.safetensors"
            assert len(entry.sha256) in (0, 64)
    names = [e.file_name for _, _, e in P.published_files()]
    assert len(names) == len(set(names))  # one local name per file


# ---- what imgcls can load instead: exact texts -------------------------------------------------------------------
def test_no_published_file_messages_say_what_can_be_loaded():
    with pytest.raises(UserError) as err:
        P.published_file("resnet18", "timm")
    assert str(err.value) == (
        "imgcls lists no timm weights for resnet18; it can load torchvision (resnet18-f37072fd.pth), a file of "
        "yours (--weights FILE) or none (--weights none)"
    )
    with pytest.raises(UserError) as err:
        P.published_file("resnet50", "timm")
    assert str(err.value) == (
        "imgcls lists no timm weights for resnet50; it can load torchvision (resnet50-11ad3fa6.pth), torchvision:v1 "
        "(resnet50-0676ba61.pth), a file of yours (--weights FILE) or none (--weights none)"
    )
    with pytest.raises(UserError) as err:
        P.published_file("googlenet", "torchvision")
    assert str(err.value) == (
        "imgcls lists no published weights for googlenet (torchvision's googlenet file is its batch-norm variant "
        "without LRN, not the 2014 network); give a file of this architecture (--weights FILE) or train from "
        "scratch (--weights none); `imgcls weights list` shows the files it knows"
    )
    with pytest.raises(UserError) as err:
        imgcls.create_model("lenet5", weights="torchvision")
    assert str(err.value) == (
        "imgcls lists no published weights for lenet5; give a file of this architecture (--weights FILE) or train "
        "from scratch (--weights none); `imgcls weights list` shows the files it knows"
    )
    with pytest.raises(UserError) as err:
        P.published_file("resnet50", "caffe")
    assert str(err.value) == "unknown weights source: caffe (use a file path, torchvision or timm)"
    assert P.published_file("resnet50", "torchvision:v1").path == "resnet50-0676ba61.pth"


def test_offline_download_error_says_what_to_do(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there: the connection is refused, as offline
    monkeypatch.setenv(P.URL_ENV, f"http://127.0.0.1:{port}/")
    with pytest.raises(UserError) as err:
        imgcls.create_model("resnet18", weights="torchvision")
    assert str(err.value) == (
        f"http://127.0.0.1:{port}/resnet18-f37072fd.pth: download failed after 4 attempts ([Errno 111] Connection "
        f"refused); run again to resume; to work offline, put resnet18-f37072fd.pth into {tmp_path / 'weights'} "
        "(or set $IMGCLS_WEIGHTS_DIR), or give a file with --weights FILE, or train from scratch with --weights none"
    )
    assert not (tmp_path / "weights" / "resnet18-f37072fd.pth").exists()


# ---- copies on disk ------------------------------------------------------------------------------------------------
def _tiny_file() -> tuple[TinyNet, bytes]:
    src = trained_tiny()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    return src, buf.getvalue()


@pytest.fixture
def published_tiny(monkeypatch):
    """A torchvision-style entry for the tiny model whose hash prefix is that of a real file."""
    src, body = _tiny_file()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    entry = P.PublishedFile(f"tiny-{prefix}.pth", f"tiny-{prefix}.pth", prefix)
    monkeypatch.setitem(P.PUBLISHED["torchvision"], "tiny", entry)
    return src, body, entry


@pytest.mark.parametrize("where", ["weights_dir", "torch_hub"])
def test_a_copy_put_by_hand_is_found_offline(published_tiny, tmp_path, monkeypatch, where):
    src, body, entry = published_tiny
    folder = tmp_path / "weights" if where == "weights_dir" else tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / entry.file_name).write_bytes(body)
    monkeypatch.setenv(P.URL_ENV, f"http://127.0.0.1:{free_port()}/")  # any download attempt would fail
    dst = TinyNet()
    report = W.load_weights(dst, "tiny", "torchvision")
    assert report.path == folder / entry.file_name
    torch.testing.assert_close(outputs(dst), outputs(src), rtol=0, atol=0)
    assert P.search_paths("tiny", "torchvision") == [
        tmp_path / "weights" / entry.file_name,
        tmp_path / "torch" / "hub" / "checkpoints" / entry.file_name,
    ]


def test_a_timm_file_in_the_hugging_face_cache_is_found(monkeypatch, tmp_path):
    src = trained_tiny()
    snapshot = tmp_path / "hf" / "models--timm--tiny.x_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(dict(src.state_dict()), str(snapshot / "model.safetensors"))
    digest = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setitem(P.PUBLISHED["timm"], "tiny", P._timm("tiny.x_in1k", digest))
    dst = TinyNet()
    assert W.load_weights(dst, "tiny", "timm").path == snapshot / "model.safetensors"
    torch.testing.assert_close(outputs(dst), outputs(src), rtol=0, atol=0)


def test_a_wrong_file_under_the_published_name_is_refused_not_replaced(published_tiny, tmp_path):
    _, _, entry = published_tiny
    (tmp_path / "weights").mkdir()
    wrong = tmp_path / "weights" / entry.file_name
    wrong.write_bytes(b"something else")
    digest = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(UserError) as err:
        W.load_weights(TinyNet(), "tiny", "torchvision")
    assert str(err.value) == (
        f"{wrong}: SHA-256 {digest} does not match the published {entry.sha256}; file refused (delete it, or put "
        f"the real {entry.file_name} there)"
    )
    assert wrong.read_bytes() == b"something else"


# ---- downloads against a real HTTP server on 127.0.0.1 -----------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    # Set per test by the `server` fixture (a fresh subclass each time).
    files: ClassVar[dict[str, bytes]]
    truncate: ClassVar[set[str]]
    requests: ClassVar[list[str]]

    def do_GET(self):
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)  # ranges are ignored: a resumed transfer restarts
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # An interrupted transfer: the connection closes after half of the announced bytes.
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "truncate": set(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _final_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".part", ".lock")))


def test_download_good_file_is_kept_and_loaded(server, published_tiny, monkeypatch, tmp_path):
    handler, url = server
    src, body, entry = published_tiny
    handler.files[f"/{entry.path}"] = body
    monkeypatch.setenv(P.URL_ENV, url)
    dst = TinyNet()
    report = W.load_weights(dst, "tiny", "torchvision")
    assert report.path == tmp_path / "weights" / entry.file_name
    assert report.path.read_bytes() == body
    torch.testing.assert_close(outputs(dst), outputs(src), rtol=0, atol=0)
    W.load_weights(TinyNet(), "tiny", "torchvision")  # second time from disk
    assert handler.requests == [f"/{entry.path}"]
    assert _final_files(tmp_path / "weights") == [entry.file_name]


def test_download_corrupted_file_is_refused_and_not_kept(server, published_tiny, tmp_path):
    handler, url = server
    _, body, entry = published_tiny
    corrupted = bytearray(body)
    corrupted[len(corrupted) // 2] ^= 0xFF
    handler.files[f"/{entry.path}"] = bytes(corrupted)
    with pytest.raises(UserError) as err:
        W.load_weights(TinyNet(), "tiny", "torchvision", base_url=url)
    got = hashlib.sha256(bytes(corrupted)).hexdigest()
    assert str(err.value).startswith(
        f"{url}{entry.path}: SHA-256 mismatch (expected {entry.sha256}…, got {got[:16]}…); the download was deleted"
    )
    assert str(err.value).endswith(
        f"put {entry.file_name} into {tmp_path / 'weights'} (or set $IMGCLS_WEIGHTS_DIR), "
        "or give a file with --weights FILE, or train from scratch with --weights none"
    )
    assert list((tmp_path / "weights").iterdir()) == []


def test_download_interrupted_transfers_leave_no_file_in_place(server, published_tiny, tmp_path):
    handler, url = server
    _, body, entry = published_tiny
    handler.files[f"/{entry.path}"] = body
    handler.truncate.add(f"/{entry.path}")
    with pytest.raises(UserError, match=r"download failed after 4 attempts .*to work offline, put tiny-"):
        W.load_weights(TinyNet(), "tiny", "torchvision", base_url=url)
    assert len(handler.requests) == 4  # retried
    assert _final_files(tmp_path / "weights") == []
    # The server recovers: the next attempt completes.
    handler.truncate.clear()
    W.load_weights(TinyNet(), "tiny", "torchvision", base_url=url)
    assert (tmp_path / "weights" / entry.file_name).read_bytes() == body


def test_download_missing_file_is_one_line(server, published_tiny, tmp_path):
    _, url = server
    _, _, entry = published_tiny
    with pytest.raises(UserError) as err:
        W.load_weights(TinyNet(), "tiny", "torchvision", base_url=url)
    assert str(err.value).startswith(f"{url}{entry.path}: HTTP 404 Not Found (check the address or the mirror); to ")
    assert "\n" not in str(err.value)


def test_unpinned_timm_file_records_its_hash_and_is_checked_later(server, monkeypatch, tmp_path):
    handler, url = server
    src = trained_tiny()
    path = tmp_path / "src.safetensors"
    save_file(dict(src.state_dict()), str(path))
    body = path.read_bytes()
    entry = P._timm("tiny.x_in1k")
    monkeypatch.setitem(P.PUBLISHED["timm"], "tiny", entry)
    handler.files[f"/{entry.path}"] = body
    got = P.fetch_published("tiny", "timm", base_url=url)
    assert got == tmp_path / "weights" / "tiny.x_in1k.safetensors"
    record = got.with_name(got.name + ".sha256")
    assert record.read_text().strip() == hashlib.sha256(body).hexdigest()
    dst = TinyNet()
    W.load_weights(dst, "tiny", "timm")
    torch.testing.assert_close(outputs(dst), outputs(src), rtol=0, atol=0)
    got.write_bytes(body[:-1] + b" ")  # changed after download
    with pytest.raises(UserError, match=r"does not match the published"):
        W.load_weights(TinyNet(), "tiny", "timm")


# ---- imgcls weights list | path | verify ---------------------------------------------------------------------------
def test_weights_list_shows_files_hashes_and_copies(published_tiny, tmp_path, capsys):
    _, body, entry = published_tiny
    assert main(["weights", "list", "resnet5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "source", "file", "SHA-256", "on", "disk"]
    assert lines[1].split() == ["resnet50", "torchvision", "resnet50-11ad3fa6.pth", "11ad3fa6", "-"]
    assert lines[2].split() == ["resnet50", "torchvision:v1", "resnet50-0676ba61.pth", "0676ba61", "-"]
    assert lines[3] == (
        f"looked for in {tmp_path / 'weights'} ($IMGCLS_WEIGHTS_DIR), then torchvision's and Hugging Face's own caches"
    )
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / entry.file_name).write_bytes(body)
    assert main(["weights", "list", "tiny", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["found"] == str(tmp_path / "weights" / entry.file_name) and row["sha256"] == entry.sha256
    assert row["looked_for"] == [str(p) for p in P.search_paths("tiny", "torchvision")]


def test_weights_path_prints_where_to_put_the_file(tmp_path, capsys):
    assert main(["weights", "path", "resnet50"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'weights' / 'resnet50-11ad3fa6.pth'}\n"
    assert main(["weights", "path", "inception_v4", "--all"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"-      {tmp_path / 'weights' / 'inception_v4.tf_in1k.safetensors'}",
        "url    https://huggingface.co/timm/inception_v4.tf_in1k/resolve/main/model.safetensors",
    ]
    assert main(["weights", "path", "googlenet"]) == 2
    assert capsys.readouterr().err.startswith("imgcls: error: imgcls lists no published weights for googlenet (")


def test_weights_verify_checks_copies_and_files(published_tiny, tmp_path, capsys):
    _, body, entry = published_tiny
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out.startswith("no published weights file is on disk")
    assert main(["weights", "verify", "tiny"]) == 1
    assert (
        capsys.readouterr().out
        == f"missing   tiny torchvision: put {entry.file_name} at {tmp_path / 'weights' / entry.file_name}\n"
    )
    (tmp_path / "weights").mkdir()
    good = tmp_path / "weights" / entry.file_name
    good.write_bytes(body)
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out == f"ok        tiny torchvision {good} sha256 {hashlib.sha256(body).hexdigest()}\n"
    # A downloaded file identified by its content under another name; a foreign file; a damaged copy.
    renamed = tmp_path / "download.bin"
    renamed.write_bytes(body)
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"x")
    assert main(["weights", "verify", str(renamed), str(foreign)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"ok        {renamed} is the torchvision file of tiny ({entry.file_name})",
        f"unknown   {foreign}: its SHA-256 matches no published file imgcls lists",
    ]
    good.write_bytes(body[:-1])
    assert main(["weights", "verify", "tiny"]) == 1
    assert capsys.readouterr().out.startswith(f"mismatch  {good}: SHA-256 ")
