"""The static results site, checked as a person would see it: rendered from a real one-epoch study and opened in
headless Chromium (skipped with a reason when Chromium is not installed; `.ci/chromium.sh` installs it)."""
from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from msabench.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    runs = root / "small"
    for protocol in ("modality-missing", "random-missing"):
        assert main(["run", "--method", "late-fusion", "--dataset", "synthetic-small", "--protocol", protocol,
                     "--seeds", "1111", "--epochs", "1", "--threads", "1", "--quiet", "--out", str(runs)]) == 0
    assert main(["run", "--method", "late-fusion", "--dataset", "synthetic-small", "--protocol", "modality-missing",
                 "--seeds", "1111", "--epochs", "1", "--threads", "1", "--quiet", "--out", str(runs),
                 "--set", "hidden=32", "--protocol-option", "mask_seed=3", "--tag", "h32"]) == 0
    assert main(["report", str(runs), "--out", str(root / "site"), "--reported", "hrlf-2024-table1"]) == 0
    return root / "site"


def test_regeneration_commands_plan_exactly_the_stored_runs(site):
    from msabench.cli import build_parser, build_request
    from msabench.report import study_provenance
    from msabench.runner import plan
    from msabench.store import ResultsStore

    runs = site.parent / "small"
    commands = study_provenance(runs)["commands"]
    assert len(commands) == 3  # one per configuration: two protocols, and the tagged variant
    assert any("--set hidden=32" in c and "--protocol-option mask_seed=3" in c and "--tag h32" in c
               for c in commands)
    keys = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["msabench", "run"]
        specs, _ = plan(build_request(build_parser().parse_args(argv[1:])))
        keys |= {s.key for s in specs}
    assert keys == ResultsStore(runs).keys()  # the commands recompute exactly the stored run ids


class Dom(HTMLParser):
    """Just enough of the DOM: elements with their attributes and the text inside each table body row."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[str, str]] = []  # (tbody class, row text)
        self._row: list[str] | None = None
        self._tbody = ""

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "tbody":
            self._tbody = a.get("class", "")
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append((self._tbody, " ".join(self._row)))
            self._row = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self._row.append(data.strip())

    def find(self, tag: str, **attrs) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(v in a.get(k, "").split() or a.get(k) == v
                                                                 for k, v in attrs.items())]


def parse(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


REMOTE = re.compile(r"^\s*(https?:)?//", re.I)


def remote_resources(dom: Dom) -> list[str]:
    """URLs the page would fetch (scripts, styles, images, frames, media) that are not local files."""
    found = [a.get("src", "") for t, a in dom.elements if t in ("script", "img", "iframe", "audio", "video",
                                                                 "source", "embed")]
    found += [a.get("href", "") for t, a in dom.elements if t == "link"]
    found += [a.get("data", "") for t, a in dom.elements if t == "object"]
    return [u for u in found if u and REMOTE.match(u)]


def test_site_files(site):
    index = parse((site / "index.html").read_text())
    assert [a["href"] for a in index.find("a") if a["href"] == "small.html"]
    assert (site / "methods" / "corrkd.html").exists() and (site / "methods" / "ef-lstm.html").exists()
    card = (site / "methods" / "corrkd.html").read_text()
    assert "<table>" in card or "<h1" in card  # rendered Markdown, not raw text
    study = (site / "small.html").read_text()
    dom = parse(study)
    assert len(dom.find("table", **{"class": "leaderboard"})) == 3  # modality-missing twice (mask seeds differ)
    images = [a["src"] for a in dom.find("img")]
    assert images and all((site / src).read_bytes()[:4] == b"\x89PNG" for src in images)
    assert any("curves-" in s for s in images) and any("training-" in s for s in images)
    assert "msabench run --method late-fusion --dataset synthetic-small --protocol modality-missing" in study
    assert "msabench report" in study
    for page in site.rglob("*.html"):
        assert remote_resources(parse(page.read_text())) == [], page


def _proxy() -> tuple[socket.socket, list[bytes]]:
    """A local listener posing as the browser's proxy: every network request would arrive here."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    seen: list[bytes] = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    seen.append(conn.recv(200) or b"(connection)")
                except OSError:
                    seen.append(b"(connection)")

    threading.Thread(target=serve, daemon=True).start()
    return server, seen


# the browser's own background traffic (clock, updates, accounts), which is not the page's
BROWSER_SERVICES = re.compile(r"(^|\.)(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)$")


def _host(request: bytes) -> str:
    first = request.split(b"\r\n", 1)[0].decode("latin-1").split()
    target = first[1] if len(first) > 1 else ""
    return re.sub(r"^[a-z]+://", "", target).split("/", 1)[0].rsplit(":", 1)[0]


def page_requests(seen: list[bytes]) -> list[str]:
    return [_host(r) for r in seen if not BROWSER_SERVICES.search(_host(r))]


def open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load (scripts run) and the hosts the page tried to reach through the network."""
    server, seen = _proxy()
    port = server.getsockname()[1]
    try:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", f"--user-data-dir={profile}",
             f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
             "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, page_requests(seen)


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                                              "chromium; or source .ci/chromium.sh)")


@needs_chromium
def test_the_request_check_sees_a_page_that_fetches_from_the_network(tmp_path):
    page = tmp_path / "remote.html"
    page.write_text('<html><body><img src="http://msabench-test.invalid/x.png"></body></html>')
    _, requests = open_in_chromium(page, tmp_path / "profile")
    assert requests == ["msabench-test.invalid"]


@needs_chromium
def test_study_page_in_headless_chromium(site, tmp_path):
    text, requests = open_in_chromium(site / "small.html", tmp_path / "profile")
    dom = parse(text)
    html = dom.find("html")[0]
    assert "js-ready" in html.get("class", "")  # the inline script ran under file://
    body = dom.find("body")[0]
    images = dom.find("img")
    assert images and body.get("data-images-loaded") == str(len(images))  # every figure decoded
    boards = dom.find("table", **{"class": "leaderboard"})
    assert len(boards) == 3
    measured = [text for cls, text in dom.rows if cls == "measured"]
    reported = [text for cls, text in dom.rows if cls == "reported"]
    assert any(text.startswith("late-fusion") for text in measured)
    assert any(text.startswith("HRLF ‡ (reported, hrlf-2024-table1)") and "0.8336" in text for text in reported)
    assert any(text.startswith("CorrKD ‡ (reported, hrlf-2024-table1)") and "0.7469" in text for text in reported)
    assert requests == [], f"the page made network requests: {requests}"
