// Live captions: microphone -> AudioWorklet (16-bit PCM at the context's rate) -> WebSocket
// /v1/stream (protocol v1, docs/protocol.md) -> rolling captions, a state line and downloads.
// A connection lost while live (a daemon restart, a network drop) is retried with backoff; the
// microphone stays open meanwhile. The new connection resumes the session (docs/protocol.md,
// "Resume"): the last minute of audio is kept and what the daemon lacks is sent again, so the
// transcript goes on where it was; a daemon that cannot resume it gets a new session.
"use strict";

const STREAM_PATH = "/v1/stream";
const MODELS_PATH = "/v1/models"; // the model and the languages it speaks
const LANGUAGE_KEY = "streamasr.language"; // the chosen language, kept across visits
const END_TIMEOUT_MS = 15000; // after session.end, wait this long for session.ended
const MIN_RATE = 8000;
const MAX_RATE = 48000;
const RETRY_FIRST_MS = 500; // the first reconnect comes this soon; each next one waits twice as
const RETRY_MAX_MS = 8000; // long, up to this (plus up to 20% at random, so that many pages do
// not all knock at once on a restarted daemon)
// close codes after which the same session.start could succeed later: going away, abnormal
// closure (no close frame: the daemon died, or never answered), internal error, service
// restart, try again later (busy, or still warming up), bad gateway. Protocol errors
// (1007, 1008, 1009) would only fail again.
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 1014]);
const KEEP_AUDIO_S = 60; // audio kept to send again after a resume

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
  language: el("language"),
  detected: el("detected"),
};

let run = null; // the running captions: {conn, ctx, stream, node, attempt, ending, ...}
const finals = []; // {start, end, text} of every transcript.final, in order
const downloadUrls = {};

function setState(state, detail) {
  ui.status.dataset.state = state;
  ui.statusText.textContent = detail ? `${state}: ${detail}` : state;
  const active = ["connecting", "live", "reconnecting", "stopping"].includes(state);
  ui.language.disabled = active; // a session keeps the language it started with
  ui.toggle.textContent = active ? "Stop" : "Start";
  ui.toggle.setAttribute("aria-pressed", String(active));
  ui.toggle.disabled = state === "stopping";
}

function tokenQuery() {
  const token = new URLSearchParams(location.search).get("token");
  return token ? `?token=${encodeURIComponent(token)}` : "";
}

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${STREAM_PATH}${tokenQuery()}`;
}

// ------------------------------------------------------------------ languages
function languageName(code) {
  try {
    const name = new Intl.DisplayNames([navigator.language || "en"], { type: "language" }).of(code);
    return name && name !== code ? `${name} (${code})` : code;
  } catch {
    return code;
  }
}

// Fill the selector with the languages of the loaded model; "auto" is always first. A model
// that speaks one language, or takes any (GLM-ASR, Tiny Audio), offers auto only.
// The choice kept from an earlier visit wins; else the daemon's default (`serve --language`).
async function loadLanguages() {
  let model = null;
  try {
    const reply = await fetch(`${MODELS_PATH}${tokenQuery()}`, { cache: "no-store" });
    if (reply.ok) model = (await reply.json()).data[0];
  } catch {
    return; // the daemon is not up yet: auto it is
  }
  const languages = model && model.languages;
  if (!Array.isArray(languages) || languages.length < 2) return;
  const options = languages
    .map((code) => ({ code, name: languageName(code) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  for (const { code, name } of options) ui.language.add(new Option(name, code));
  const offered = (code) => code === "auto" || languages.includes(code);
  const saved = localStorage.getItem(LANGUAGE_KEY);
  if (offered(saved)) ui.language.value = saved;
  else if (offered(model.language)) ui.language.value = model.language;
}

function showLanguage(code, probability) {
  if (!code) return;
  const sure = probability == null ? "" : ` ${Math.round(probability * 100)}%`;
  ui.detected.textContent = `${ui.language.value === "auto" ? "detected" : "language"}: ${languageName(code)}${sure}`;
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

function addFinal(msg, offset) {
  showPartial("", "");
  const text = msg.text.trim();
  if (!text) return;
  const start = msg.start + offset; // on the clock of the whole run, across reconnects
  finals.push({ start, end: msg.end + offset, text });
  const p = document.createElement("p");
  p.className = "final";
  const time = document.createElement("time");
  time.textContent = clock(start).slice(3, 8); // mm:ss
  time.dateTime = `PT${start.toFixed(2)}S`;
  p.append(time);
  if (msg.language) {
    p.lang = msg.language; // the right fonts and line breaking for its script
    const badge = document.createElement("span");
    badge.className = "lang";
    badge.textContent = msg.language;
    badge.title = languageName(msg.language);
    p.append(badge);
  }
  p.append(document.createTextNode(text));
  showLanguage(msg.language, msg.language_probability);
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
  const r = { attempt: 0 };
  run = r;
  try {
    Object.assign(r, await openAudio());
  } catch (err) {
    closeAudio(r);
    run = null;
    setState("error", `microphone: ${err.message || err.name}`);
    return;
  }
  if (run !== r) { // stopped while the microphone was being opened
    closeAudio(r);
    return;
  }
  r.t0 = r.ctx.currentTime;
  r.audio = { chunks: [], start: 0, end: 0 }; // PCM of the session: byte offsets on its clock
  r.resume = null; // {sessionId, token, lastSeq, offset} once a session has started
  r.node.port.onmessage = (event) => {
    keepAudio(r, event.data);
    const conn = r.conn;
    if (conn && conn.streaming && conn.ws.readyState === WebSocket.OPEN && !r.endSent) {
      conn.ws.send(event.data);
    }
  };
  connect(r);
}

function keepAudio(r, buffer) {
  const a = r.audio;
  a.chunks.push(buffer);
  a.end += buffer.byteLength;
  const keep = KEEP_AUDIO_S * r.ctx.sampleRate * 2;
  while (a.chunks.length > 1 && a.end - a.start - a.chunks[0].byteLength >= keep) {
    a.start += a.chunks.shift().byteLength;
  }
}

// The kept audio from `t` (seconds on the session's clock) on; what is no longer kept is lost.
function audioFrom(r, t) {
  const a = r.audio;
  let offset = Math.round(t * r.ctx.sampleRate) * 2;
  const out = [];
  let lost = 0;
  if (offset < a.start) {
    lost = (a.start - offset) / 2 / r.ctx.sampleRate;
    a.end -= a.start - offset; // the session's clock goes on from t
    a.start = offset;
  }
  let at = a.start;
  for (const chunk of a.chunks) {
    const next = at + chunk.byteLength;
    if (next > offset) out.push(offset > at ? chunk.slice(offset - at) : chunk);
    at = next;
  }
  return { out, lost };
}

function startMessage(r) {
  return JSON.stringify({
    type: "session.start",
    version: 1,
    audio: { encoding: "pcm_s16le", sample_rate: r.ctx.sampleRate, channels: 1 },
    language: ui.language.value,
    partials: true,
    word_timestamps: true,
  });
}

// A new session on `conn`: its clock starts now.
function startSession(r, conn) {
  // place the session's clock on the run's: audio sent while no connection was open is lost
  conn.offset = r.ctx.currentTime - r.t0;
  r.audio = { chunks: [], start: 0, end: 0 };
  r.resume = null;
  conn.streaming = true;
  conn.ws.send(startMessage(r));
}

// One WebSocket session of the run; `conn` holds what belongs to this connection only.
function connect(r) {
  const ws = new WebSocket(streamUrl());
  // streaming: audio goes out as it comes (after session.start, or once session.resumed said
  // from where)
  const conn = { ws, ended: false, error: null, offset: 0, streaming: false };
  r.conn = conn;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    if (!r.resume) {
      startSession(r, conn);
      return;
    }
    conn.offset = r.resume.offset;
    ws.send(JSON.stringify({
      type: "session.resume",
      session_id: r.resume.sessionId,
      resume_token: r.resume.token,
      last_seq: r.resume.lastSeq,
    }));
  };
  ws.onmessage = (event) => onMessage(r, conn, event.data);
  ws.onerror = () => {}; // the close event that follows carries what there is to say
  ws.onclose = (event) => onClose(r, conn, event);
}

function onMessage(r, conn, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return;
  }
  if (msg.type === "session.started") {
    r.resume = { sessionId: msg.session_id, token: null, lastSeq: 0, offset: conn.offset };
  }
  if (r.resume && typeof msg.seq === "number") r.resume.lastSeq = msg.seq;
  if (r.resume && typeof msg.resume_token === "string") r.resume.token = msg.resume_token;
  switch (msg.type) {
    case "session.started":
      r.attempt = 0; // a working connection: the next loss starts the backoff afresh
      if (!r.ending) setState("live", `${msg.audio.sample_rate} Hz`);
      ui.status.title = `model: ${msg.model}`; // a long path at times: kept off the line
      break;
    case "session.resumed": {
      r.attempt = 0;
      const { out, lost } = audioFrom(r, msg.t);
      for (const chunk of out) conn.ws.send(chunk);
      conn.streaming = true;
      const detail = lost > 0 ? `resumed; ${lost.toFixed(1)} s of audio lost` : "resumed";
      if (!r.ending) setState("live", detail);
      break;
    }
    case "transcript.partial":
      showPartial(msg.text, msg.stable_text);
      showLanguage(msg.language, msg.language_probability);
      break;
    case "transcript.final":
      addFinal(msg, conn.offset);
      break;
    case "error":
      if (msg.code === "resume_failed") { // another daemon, without the secret: start anew
        startSession(r, conn);
        break;
      }
      // a fatal error is followed by the close, which decides whether to retry; the others
      // rejected one frame and the session goes on
      if (msg.fatal) conn.error = `${msg.message} (${msg.code})`;
      break;
    case "session.ended":
      conn.ended = true;
      if (msg.reason !== "shutdown") r.resume = null; // over: a new session follows
      if (r.ending) finish(r, "stopped", `session ended (${msg.reason})`);
      // else the server ended it (a restart: "shutdown"; "idle"; "max_length"): its close
      // follows, and the captions go on with a new session
      break;
    default:
      break; // speech.started / speech.stopped, and message types of later versions
  }
}

function onClose(r, conn, event) {
  if (run !== r || r.conn !== conn || r.finished) return;
  const why = conn.error || (event.reason ? `${event.reason} (${event.code})` : `connection closed (${event.code})`);
  if (r.ending) {
    finish(r, conn.ended || event.code === 1000 ? "stopped" : "error", why);
  } else if (conn.ended || RETRY_CODES.has(event.code)) {
    retry(r, why);
  } else {
    finish(r, "error", why);
  }
}

function retry(r, why) {
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** r.attempt) * (1 + 0.2 * Math.random());
  r.attempt += 1;
  showPartial("", "");
  setState("reconnecting", `${why}; attempt ${r.attempt} in ${(delay / 1000).toFixed(1)} s`);
  r.retryTimer = setTimeout(() => {
    if (run === r && !r.ending) connect(r);
  }, delay);
}

function finish(r, state, detail) {
  r.finished = true;
  clearTimeout(r.endTimer);
  clearTimeout(r.retryTimer);
  closeAudio(r);
  const ws = r.conn && r.conn.ws;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  showPartial("", "");
  if (run === r) run = null;
  const error = r.conn && r.conn.error;
  setState(state, state === "stopped" && !error && r.ending ? "" : detail);
}

function stop() {
  const r = run;
  if (!r || r.ending) return;
  r.ending = true;
  setState("stopping", "waiting for the last words");
  const ws = r.conn && r.conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    finish(r, "stopped", ""); // also ends a pending reconnect
    return;
  }
  if (r.node) r.node.port.postMessage("flush"); // posts the last partial frame, then we end
  setTimeout(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "session.end" }));
    r.endSent = true;
    closeAudio(r);
  }, 100);
  r.endTimer = setTimeout(() => finish(r, "error", "no session.ended from the server"), END_TIMEOUT_MS);
}

ui.toggle.addEventListener("click", () => (run ? stop() : start()));
ui.language.addEventListener("change", () => localStorage.setItem(LANGUAGE_KEY, ui.language.value));
loadLanguages();
setState("idle", "press Start and allow the microphone");
