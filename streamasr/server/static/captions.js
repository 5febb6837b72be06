// Live captions: microphone -> AudioWorklet (16-bit PCM at the context's rate) -> WebSocket
// /v1/stream (protocol v1, docs/protocol.md) -> rolling captions, a state line and downloads.
"use strict";

const STREAM_PATH = "/v1/stream";
const END_TIMEOUT_MS = 15000; // after session.end, wait this long for session.ended
const MIN_RATE = 8000;
const MAX_RATE = 48000;

const el = (id) => document.getElementById(id);
const ui = {
  toggle: el("toggle"),
  status: el("status"),
  statusText: el("status-text"),
  captions: el("captions"),
  finals: el("finals"),
  stable: el("stable"),
  unstable: el("unstable"),
  txt: el("download-txt"),
  srt: el("download-srt"),
};

let run = null; // the current session: {ws, ctx, stream, node, ended, endTimer}
const finals = []; // {start, end, text} of every transcript.final, in order
const downloadUrls = {};

function setState(state, detail) {
  ui.status.dataset.state = state;
  ui.statusText.textContent = detail ? `${state}: ${detail}` : state;
  const active = state === "connecting" || state === "live" || state === "stopping";
  ui.toggle.textContent = active ? "Stop" : "Start";
  ui.toggle.setAttribute("aria-pressed", String(active));
  ui.toggle.disabled = state === "stopping";
}

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${location.host}${STREAM_PATH}${query}`;
}

// ------------------------------------------------------------------ captions
function clock(seconds, comma) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, w) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000);
  const m = Math.floor(ms / 60000) % 60;
  const s = Math.floor(ms / 1000) % 60;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${comma ? "," : "."}${pad(ms % 1000, 3)}`;
}

function showPartial(text, stableText) {
  const t = text.trim();
  let stable = (stableText || "").trim();
  if (!t.startsWith(stable)) stable = ""; // stable_text is a prefix; be safe if it is not
  ui.stable.textContent = stable;
  ui.unstable.textContent = t.slice(stable.length);
  scrollDown();
}

function addFinal(msg) {
  showPartial("", "");
  const text = msg.text.trim();
  if (!text) return;
  finals.push({ start: msg.start, end: msg.end, text });
  const p = document.createElement("p");
  p.className = "final";
  const time = document.createElement("time");
  time.textContent = clock(msg.start).slice(3, 8); // mm:ss
  time.dateTime = `PT${msg.start.toFixed(2)}S`;
  p.append(time, document.createTextNode(text));
  ui.finals.append(p);
  updateDownloads();
  scrollDown();
}

function scrollDown() {
  ui.captions.scrollTop = ui.captions.scrollHeight;
}

function updateDownloads() {
  const txt = finals
    .map((f) => `[${clock(f.start)} --> ${clock(f.end)}] ${f.text}`)
    .join("\n");
  const srt = finals
    .map((f, i) => `${i + 1}\n${clock(f.start, true)} --> ${clock(f.end, true)}\n${f.text}\n`)
    .join("\n");
  setDownload(ui.txt, "txt", txt + "\n", "text/plain");
  setDownload(ui.srt, "srt", srt, "application/x-subrip");
}

function setDownload(link, key, body, type) {
  if (downloadUrls[key]) URL.revokeObjectURL(downloadUrls[key]);
  downloadUrls[key] = URL.createObjectURL(new Blob([body], { type: `${type};charset=utf-8` }));
  link.href = downloadUrls[key];
  link.setAttribute("aria-disabled", "false");
}

// ------------------------------------------------------------------ session
async function openAudio() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  let ctx = new AudioContext();
  if (ctx.sampleRate < MIN_RATE || ctx.sampleRate > MAX_RATE) {
    await ctx.close(); // e.g. a 96 kHz device: ask the browser to resample to what the daemon takes
    ctx = new AudioContext({ sampleRate: MAX_RATE });
  }
  await ctx.audioWorklet.addModule("pcm-worklet.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-s16", { numberOfInputs: 1, numberOfOutputs: 1 });
  const mute = ctx.createGain(); // a path to the destination keeps the graph pulled; muted
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(ctx.destination);
  return { stream, ctx, node };
}

function closeAudio(r) {
  if (r.node) {
    r.node.port.onmessage = null;
    r.node.disconnect();
  }
  if (r.stream) r.stream.getTracks().forEach((t) => t.stop());
  if (r.ctx && r.ctx.state !== "closed") r.ctx.close();
}

async function start() {
  setState("connecting");
  const r = { ended: false };
  run = r;
  try {
    Object.assign(r, await openAudio());
  } catch (err) {
    closeAudio(r);
    run = null;
    setState("error", `microphone: ${err.message || err.name}`);
    return;
  }
  const ws = new WebSocket(streamUrl());
  r.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify({
      type: "session.start",
      version: 1,
      audio: { encoding: "pcm_s16le", sample_rate: r.ctx.sampleRate, channels: 1 },
      language: "en",
      partials: true,
      word_timestamps: true,
    }));
    r.node.port.onmessage = (event) => {
      if (ws.readyState === WebSocket.OPEN && !r.endSent) ws.send(event.data);
    };
  };
  ws.onmessage = (event) => onMessage(r, event.data);
  ws.onerror = () => {}; // the close event that follows carries what there is to say
  ws.onclose = (event) => onClose(r, event);
}

function onMessage(r, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  switch (msg.type) {
    case "session.started":
      if (!r.ending) setState("live", `${msg.audio.sample_rate} Hz`);
      ui.status.title = `model: ${msg.model}`; // a long path at times: kept off the line
      break;
    case "transcript.partial":
      showPartial(msg.text, msg.stable_text);
      break;
    case "transcript.final":
      addFinal(msg);
      break;
    case "error":
      r.error = `${msg.message} (${msg.code})`;
      if (msg.fatal) setState("error", r.error);
      break;
    case "session.ended":
      r.ended = true;
      finish(r, "stopped", `session ended (${msg.reason})`);
      break;
    default:
      break; // speech.started / speech.stopped, and message types of later versions
  }
}

function onClose(r, event) {
  if (r.ended) return;
  const why = r.error || (event.reason ? `${event.reason} (${event.code})` : `connection closed (${event.code})`);
  finish(r, r.ending && event.code === 1000 ? "stopped" : "error", why);
}

function finish(r, state, detail) {
  r.ended = true;
  clearTimeout(r.endTimer);
  closeAudio(r);
  if (r.ws && r.ws.readyState <= WebSocket.OPEN) r.ws.close(1000);
  showPartial("", "");
  if (run === r) run = null;
  setState(state, state === "stopped" && !r.error && r.ending ? "" : detail);
}

function stop() {
  const r = run;
  if (!r || r.ending) return;
  r.ending = true;
  setState("stopping", "waiting for the last words");
  if (!r.ws || r.ws.readyState !== WebSocket.OPEN) {
    finish(r, "stopped", "");
    return;
  }
  if (r.node) r.node.port.postMessage("flush"); // posts the last partial frame, then we end
  setTimeout(() => {
    if (r.ws.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify({ type: "session.end" }));
    r.endSent = true;
    closeAudio(r);
  }, 100);
  r.endTimer = setTimeout(() => finish(r, "error", "no session.ended from the server"), END_TIMEOUT_MS);
}

ui.toggle.addEventListener("click", () => (run ? stop() : start()));
setState("idle", "press Start and allow the microphone");
