"""`face3d report` (face3d_train.report): the page of a micro run, its
self-containment, the evaluation table, the bad-input errors, and the page in
headless Chromium (the 3D viewer draws the faces, no console error).

The browser test drives Chromium through the DevTools protocol over a pipe
(--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4), standard
library only, so it waits for model-viewer's own "loaded" state instead of
guessing a time budget; it skips when no `chromium` is on PATH (.ci/run
installs Debian's).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import micro_run

from face3d_jax.cli import main
from face3d_train import report as rp

K = 2  # viewer faces: not the default (3), so the test sees the argument used
EVAL_STEPS = (0, 1, 2)


def _eval_record(step: int) -> dict:
    return {"step": step, "eval/albedo_psnr": 10.0 + step,
            "eval/albedo_psnr_mean_baseline": 12.0, "eval/shape_error_mm": 5.0 - step,
            "eval/id_similarity": 0.1 * step, "eval/landmark_px": 3.0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return micro_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory):
    """A report of a copy of the micro run whose metrics.jsonl gained synthetic
    evaluations (the micro run evaluates nothing): (path, html text)."""
    work = tmp_path_factory.mktemp("report_eval") / "run"
    shutil.copytree(run_dir, work)
    with open(work / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(_eval_record(s)) + "\n" for s in EVAL_STEPS)
    (work / "done.json").write_text(json.dumps({"step": 2, "eval/albedo_psnr": 12.0}))
    out = rp.write_report(work, work.parent / "out" / "report.html", faces=K)
    return out, out.read_text(encoding="utf-8")


def test_page_is_self_contained(page):
    _, text = page
    # Nothing fetched from anywhere: every src/href of the markup (the inlined
    # script aside) is a data: URI or a fragment. The browser test checks the
    # requests the page makes.
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.DOTALL)
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), \
        [r[:60] for r in refs if not r.startswith(("data:", "#"))]
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
    assert len(scripts) == 1 and 'customElements.define("model-viewer"' in scripts[0]
    assert len(scripts[0]) > 500_000  # the whole UMD build, three.js included
    assert "sourceMappingURL" not in scripts[0]


def test_page_embeds_k_textured_glbs(page):
    import trimesh

    _, text = page
    uris = re.findall(r'src="data:model/gltf-binary;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == K
    assert text.count("<model-viewer ") == K
    for uri in uris:
        data = base64.b64decode(uri)
        # The glTF's JSON chunk: smooth normals are stored, or three.js shades flat.
        gltf = json.loads(data[20:20 + int.from_bytes(data[12:16], "little")])
        assert "NORMAL" in gltf["meshes"][0]["primitives"][0]["attributes"]
        mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
        extent = mesh.bounds[1] - mesh.bounds[0]
        assert 0.05 < extent.max() < 1.0  # a head in metres
        tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), np.float32)
        assert tex.ndim == 3 and tex.std() > 1.0  # the generated albedo, not a flat colour


def test_page_has_curves_table_and_grid(page):
    _, text = page
    # Curves: one PNG per group; the synthetic evaluations bring the eval groups.
    curves = re.findall(r'<img class="curve" alt="([^"]*)" src="data:image/png;base64,', text)
    assert "Shape error on held-out identities" in curves
    assert "Albedo PSNR against the true albedo" in curves
    assert any(c.startswith("Training: ") for c in curves)
    # The table: one row per evaluated step, the last checkpoint's marked.
    table = text.split("<h2>Evaluation on held-out identities</h2>")[1].split("<h2>")[0]
    assert re.findall(r"<tr[^>]*><th>(\d+)</th>", table) == [str(s) for s in EVAL_STEPS]
    assert '<tr class="mark"><th>2</th>' in table and "<th>albedo_psnr</th>" in table
    # Columns sorted by name: albedo_psnr, its baseline, id_similarity, landmark_px, shape_error_mm.
    assert "<tr><th>0</th><td>10</td><td>12</td><td>0</td><td>3</td><td>5</td></tr>" in table
    assert "done.json" in text and "<th>eval/albedo_psnr</th>" in text
    # The held-out grid: 4 identities x (crop, render, generated, true albedo),
    # upsampled from the micro run's 32 px / 16 px to at least 128 px.
    grid = text.split('<table class="grid">')[1].split("</table>")[0]
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', grid)
    assert len(imgs) == rp.HELD_OUT_COUNT * 4
    from PIL import Image

    sizes = {Image.open(io.BytesIO(base64.b64decode(u))).size for u in imgs}
    assert all(min(s) >= rp.MIN_IMAGE_PX for s in sizes), sizes


def test_eval_table_from_records():
    records = [{"step": 0, "train/shape/loss": 3.0},
               {"step": 10, "eval/a": 1.0, "eval/b": None},
               {"step": 20, "eval/a": 2.0, "eval/b": 5.0},
               {"step": 20, "eval/a": 2.5}]  # a resumed run logs step 20 again
    steps, names, values = rp.eval_table(records)
    assert steps == [10, 20] and names == ["eval/a", "eval/b"]
    assert values[0, 0] == 1.0 and math.isnan(values[0, 1])
    assert values[1].tolist() == [2.5, 5.0]  # the last record of a step wins, merged
    html = rp.eval_table_html(records, mark_step=20)
    assert '<tr class="mark"><th>20</th><td>2.5</td><td>5</td></tr>' in html
    assert "No evaluation" in rp.eval_table_html(records[:1])


def test_curve_groups_put_baselines_with_their_metric():
    names = ["eval/albedo_psnr", "eval/albedo_psnr_mean_baseline", "eval/id_similarity",
             "eval/id_similarity_mean_albedo", "eval/shape_error_mm", "eval/shape_error_now_mm",
             "eval/camera_scale", "eval/landmark_px", "eval/perceptual",
             "train/shape/loss", "train/pretrain/loss", "train/finite"]
    groups = dict(rp.curve_groups(names))
    members = lambda title: [m for _, _, ms in groups[title] for m in ms]
    assert members("Albedo PSNR against the true albedo") == names[:2]
    assert members("Identity similarity") == names[2:4]
    assert members("Shape error on held-out identities") == names[4:6]
    assert members("Camera and landmarks") == names[6:8]
    assert members("Held-out losses") == ["eval/perceptual"]
    titles = list(groups)
    assert titles.index("Training: pretrain") < titles.index("Training: shape")
    assert members("Training: run state") == ["train/finite"]


@pytest.mark.parametrize("case", ["no_workdir", "no_metrics", "no_checkpoint"])
def test_cli_bad_input_is_one_line(case, run_dir, tmp_path, capsys):
    work = tmp_path / "run"
    if case == "no_metrics":
        work.mkdir()
        (work / "config.json").write_text((run_dir / "config.json").read_text())
        named = "metrics.jsonl"
    elif case == "no_checkpoint":
        work.mkdir()
        for f in ("config.json", "metrics.jsonl"):
            (work / f).write_text((run_dir / f).read_text())
        named = "checkpoints"
    else:
        named = str(work)
    out = tmp_path / "report.html"
    assert main(["report", "--workdir", str(work), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("face3d: error:"), err
    assert named in err and str(work) in err
    assert not out.exists()


# -- the page in a browser ----------------------------------------------------

class _Chromium:
    """Headless Chromium driven over --remote-debugging-pipe. Every wait has a
    deadline, and `close` kills the process, so a test cannot hang on it."""

    def __init__(self, exe: str, profile: Path, log: Path, size=(1100, 900)):
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-dev-shm-usage", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                "about:blank"]
        # The shell moves the pipes to fds 3 and 4, where Chromium expects them
        # (no preexec_fn: this process runs JAX's threads). Its log goes to a
        # file: an unread stderr pipe would fill and stall the browser.
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "sh", *args],
                stdin=to_r, stdout=from_w, stderr=err)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params=None, session=None, timeout: float = 60.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(10)
        except (OSError, TimeoutError, EOFError, RuntimeError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._to_w, self._from_r):
            os.close(fd)


def _errors(events) -> list[str]:
    """Uncaught exceptions, console.error calls and error log entries."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", "")))
                                for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


_VIEWERS = "Array.from(document.querySelectorAll('model-viewer'))"


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no `chromium` on PATH (Debian: apt-get install chromium; .ci/run "
                           "installs it where it can)")
def test_viewer_draws_the_faces_in_chromium(page, tmp_path):
    from PIL import Image

    path, _ = page
    browser = _Chromium(shutil.which("chromium"), tmp_path / "profile",
                        tmp_path / "chromium.log")
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        target = next(t for t in targets if t["type"] == "page")
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                         "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": path.resolve().as_uri()}, session)
        # model-viewer's own signals: the glTF is parsed (loaded) and a frame
        # with the model in it has been drawn (modelIsVisible).
        state, deadline = None, time.monotonic() + 180
        while time.monotonic() < deadline:
            state = browser.evaluate(session, f"JSON.stringify({_VIEWERS}.map("
                                              "m => m.loaded && m.modelIsVisible))")
            if state and json.loads(state) == [True] * K:
                break
            time.sleep(0.5)
        assert state and json.loads(state) == [True] * K, f"viewers not shown: {state}"
        time.sleep(1.0)  # the loading bar fades out
        boxes = json.loads(browser.evaluate(
            session, f"JSON.stringify({_VIEWERS}.map(m => {{const r = m.getBoundingClientRect(); "
                     "return [r.x, r.y, r.width, r.height]}))"))
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
        events = list(browser.events)
    finally:
        browser.close()
    png = tmp_path / "screenshot.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    image = np.asarray(Image.open(png).convert("RGB"), np.int16)
    assert not _errors(events), _errors(events)
    # Self-contained: the page asked for nothing but itself and its data.
    urls = [e["params"]["request"]["url"] for e in events
            if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.split(":", 1)[0] in ("file", "data", "blob") for u in urls), \
        [u[:80] for u in urls if u.split(":", 1)[0] not in ("file", "data", "blob")]
    assert len(boxes) == K
    for x, y, w, h in boxes:
        # The viewers are the first thing on the page, VIEWER_PX squares.
        assert (w, h) == (rp.VIEWER_PX, rp.VIEWER_PX) and y < 200, (x, y, w, h)
        box = image[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2]
        drawn = np.abs(box - np.array(rp.VIEWER_BACKGROUND)).max(-1) > 12
        assert drawn.mean() > 0.15, f"viewer at {x, y} is mostly blank: {drawn.mean():.3f}"
        colours = box[drawn]
        assert colours.std(0).max() > 8.0  # shaded and textured, not one flat colour
