"""A loopback stand-in for the HuggingFace hub's file endpoint, so tests run the real download code.

Serves HEAD/GET /<org>/<repo>/resolve/<rev>/<file> with ETag, X-Repo-Commit and Content-Length;
gated repos answer 401 without a bearer token. Binds 127.0.0.1 only and counts every request.
"""
import collections
import hashlib
import http.server
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, token="hf_test_token"):
        self.files = {}  # (repo_id, filename) -> local path
        self.gated = set()
        self.token = token
        self.requests = collections.Counter()  # (method, repo_id/filename) -> count
        self._server = None

    def add(self, repo_id, filename, path, gated=False):
        self.files[(repo_id, filename)] = path
        if gated:
            self.gated.add(repo_id)

    def gets(self, repo_id=None):
        return sum(n for (method, where), n in self.requests.items()
                   if method == "GET" and (repo_id is None or where.startswith(repo_id + "/")))

    @property
    def endpoint(self):
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def __enter__(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body):
                parts = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                hub.requests[(self.command, f"{repo_id}/{filename}")] += 1
                if repo_id in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to this model is restricted.")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not any(r == repo_id for r, _ in hub.files):
                    self.send_response(401)  # the hub answers unknown repos like private ones
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = hub.files.get((repo_id, filename))
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(path, "rb") as fh:
                    data = fh.read()
                self.send_response(200)
                sha256 = hashlib.sha256(data).hexdigest()
                self.send_header("ETag", f'"{sha256}"')
                self.send_header("X-Repo-Commit", sha256[:40])  # a changed file is a new commit, as on the hub
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def use_endpoint(monkeypatch, endpoint):
    """Point huggingface_hub at the fake hub for this test (it also reads HF_ENDPOINT at import)."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    if hasattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE"):
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
