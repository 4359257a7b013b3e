"""--model gist:ID[@REVISION] against a loopback HTTP server standing in for the GitHub gist API (never the internet)."""

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import assert_user_error, run_cli
from tierlab.models import load_model

EXPORT = Path(__file__).parent.parent / "assets" / "builder" / "graph"
GIST, OLD, NEW = "5f1e0c9d2b7a", "a" * 40, "b" * 40
TINY = ("--data", "demo", "--precision", "fp32", "--batch-size", "4", "--seq-len", "32", "--log-every", "5",
        "--eval-every", "0", "--no-plots", "--causal-mask")


def gist_json(revision: str, model_source: str) -> dict:
    """What GET /gists/ID[/REVISION] answers: the files with their content, newest revision first in history."""
    config = (EXPORT / "config.json").read_text()
    return {"id": GIST, "files": {
        "model.py": {"filename": "model.py", "content": model_source, "truncated": False, "raw_url": "unused"},
        "config.json": {"filename": "config.json", "content": config, "truncated": False, "raw_url": "unused"},
        "README.md": {"filename": "README.md", "content": "exported by Transformer Builder", "truncated": False}},
        "history": [{"version": NEW}, {"version": OLD}] if revision == NEW else [{"version": OLD}]}


class FakeGistAPI:
    """The two gist endpoints tierlab uses, for one gist with two revisions; counts the requests it served."""

    def __init__(self):
        source = (EXPORT / "model.py").read_text()
        self.answers = {f"/gists/{GIST}": gist_json(NEW, source), f"/gists/{GIST}/{NEW}": gist_json(NEW, source),
                        f"/gists/{GIST}/{OLD}": gist_json(OLD, source.replace("nn.GELU()", "nn.ReLU()"))}
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                api.requests.append(self.path)
                body = api.answers.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body or {"message": "Not Found"}).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(monkeypatch, tmp_path):
    server = FakeGistAPI()
    monkeypatch.setenv("TIERLAB_GIST_API", server.url)
    monkeypatch.setenv("TIERLAB_CACHE", str(tmp_path / "cache"))
    yield server
    server.stop()


def test_a_gist_trains_pinned_to_its_revision_and_is_used_offline_afterwards(api, tmp_path):
    trained = run_cli("train", "--model", f"gist:{GIST}", *TINY, "--max-steps", "5", "--name", "g", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_dir = tmp_path / "runs" / "g"
    assert json.loads((run_dir / "config.json").read_text())["model"] == f"gist:{GIST}@{NEW}"  # pinned
    cached = tmp_path / "cache" / "gists" / GIST / NEW
    assert sorted(p.name for p in cached.iterdir()) == ["config.json", "gist.json", "model.py"]  # no README
    info = json.loads((run_dir / "run.json").read_text())
    meta = json.loads((cached / "gist.json").read_text())
    assert info["model_sha256"] == meta["sha256"]["model.py"]
    assert info["model_config_sha256"] == meta["sha256"]["config.json"]

    api.stop()  # offline from here: the cache has exactly that code
    resumed = run_cli("train", "--resume", run_dir, "--max-steps", "8", "--allow-config-change", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    sampled = run_cli("sample", run_dir, "--prompt", "Hi", "--max-new-tokens", "5", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    exported = run_cli("export", run_dir, "--format", "safetensors", "--out", tmp_path / "exp", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr

    # The cache altered with its checksum file to match: the run's own record (run.json) still tells.
    model_py = cached / "model.py"
    model_py.write_text(model_py.read_text() + "\n# altered\n")
    meta["sha256"]["model.py"] = hashlib.sha256(model_py.read_bytes()).hexdigest()
    (cached / "gist.json").write_text(json.dumps(meta))
    altered = run_cli("sample", run_dir, "--prompt", "Hi", "--max-new-tokens", "5", cwd=tmp_path)
    assert_user_error(altered, "the cached gist was altered, and tierlab does not import it")

    # Its config.json alone altered the same way: a resume refuses it too (not a user's edit: a changed copy).
    model_py.write_text(model_py.read_text().replace("\n# altered\n", ""))
    config_json = cached / "config.json"
    config_json.write_text(config_json.read_text() + " ")
    meta["sha256"] = {name: hashlib.sha256((cached / name).read_bytes()).hexdigest() for name in meta["sha256"]}
    (cached / "gist.json").write_text(json.dumps(meta))
    refused = run_cli("train", "--resume", run_dir, "--max-steps", "9", "--allow-config-change", cwd=tmp_path)
    assert_user_error(refused, "config.json no longer hold(s) the code", "the cached gist was altered")


def test_an_older_revision_is_its_own_code(api, tmp_path):
    old = load_model(f"gist:{GIST}@{OLD}", {}, 256)
    new = load_model(f"gist:{GIST}@{NEW}", {}, 256)
    assert type(old.ffn_0[1]).__name__ == "ReLU" and type(new.ffn_0[1]).__name__ == "GELU"
    served = len(api.requests)
    load_model(f"gist:{GIST}@{OLD}", {}, 256)
    assert len(api.requests) == served  # a pinned revision in the cache needs no network


def test_no_network_is_one_plain_error_saying_how_to_download_by_hand(api, tmp_path, monkeypatch):
    api.stop()
    result = run_cli("train", "--model", f"gist:{GIST}", *TINY, "--max-steps", "2", cwd=tmp_path)
    assert_user_error(result, f"Cannot fetch gist {GIST}", f"https://gist.github.com/{GIST}",
                      "into a folder, and pass that folder: --model FOLDER")


def test_an_unknown_gist_and_a_malformed_spec_are_plain(api, tmp_path):
    assert_user_error(run_cli("validate", "--model", "gist:0000deadbeef", cwd=tmp_path), "answered 404: no such gist")
    assert_user_error(run_cli("validate", "--model", "gist:../../etc", cwd=tmp_path), "is not a gist spec")


def test_a_cached_file_that_changed_is_never_imported(api, tmp_path):
    load_model(f"gist:{GIST}@{NEW}", {}, 256)
    model_py = tmp_path / "cache" / "gists" / GIST / NEW / "model.py"
    model_py.write_text(model_py.read_text() + "\nimport os; os.environ['PWNED'] = '1'\n")
    result = run_cli("validate", "--model", f"gist:{GIST}@{NEW}", cwd=tmp_path)
    assert_user_error(result, "was changed since it was fetched", "tierlab does not import it")
    shutil.rmtree(model_py.parent)  # the fix it names: fetch again
    assert run_cli("validate", "--model", f"gist:{GIST}@{NEW}", "--causal-mask", "--no-doctor",
                   cwd=tmp_path).returncode == 0
