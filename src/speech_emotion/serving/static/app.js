// speech-emotion web page: pick, drop or record audio, POST it to /predict, draw the probabilities.
// Plain JavaScript, no build step. Microphone recordings (WebM/Ogg Opus from MediaRecorder) are
// decoded by the browser and sent as 16 kHz mono 16-bit WAV, which every server accepts.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = {
  neutral: "#8a94a6", calm: "#2a9d8f", happy: "#e9b10a", sad: "#3b6fd6", angry: "#d64541",
  fearful: "#8e5bd0", fear: "#8e5bd0", disgust: "#4f9d3a", disgusted: "#4f9d3a", surprised: "#ef7d22", surprise: "#ef7d22",
};
let limits = null;
let recorder = null;
let recordTimer = null;

function colorOf(name) {
  if (COLORS[name]) return COLORS[name];
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 50%)`;
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

async function loadInfo() {
  try {
    const [model, health] = await Promise.all([fetch("model").then((r) => r.json()), fetch("health").then((r) => r.json())]);
    limits = health.limits;
    const test = model.metrics && model.metrics.test;
    const score = test && test.uar !== undefined ? ` · test UAR ${percent(test.uar)} on held-out speakers` : "";
    $("model-line").textContent = `model ${model.name} · ${model.classes.length} classes: ${model.classes.join(", ")}${score}`;
    const mb = (limits.max_bytes / 1e6).toFixed(limits.max_bytes < 1e6 ? 2 : 0);
    $("limits-line").textContent = `${limits.formats.join(", ").toUpperCase()} · up to ${mb} MB and ${limits.max_duration} s`;
    $("file").accept = ["audio/*", ...limits.formats.map((f) => `.${f}`)].join(",");
  } catch (error) {
    $("model-line").textContent = `cannot reach the server: ${error}`;
  }
}

function setState(state, message) {
  $("result").dataset.state = state;
  $("status").textContent = message || "";
  $("status").hidden = !message;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("summary").hidden = true;
  $("bars").replaceChildren();
  $("segments").hidden = true;
  delete $("result").dataset.label;
  setState("error", "");
}

function render(result) {
  $("error").hidden = true;
  $("label").textContent = result.label;
  $("label").style.color = colorOf(result.label);
  $("result").dataset.label = result.label;
  $("clip-line").textContent = `${$("result").dataset.source} · ${result.duration.toFixed(2)} s · model ${result.model}`;
  $("summary").hidden = false;
  const rows = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  $("bars").replaceChildren(...rows.map(([name, p]) => {
    const row = document.createElement("div");
    row.className = name === result.label ? "bar top" : "bar";
    row.dataset.class = name;
    row.dataset.probability = String(p);
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = percent(p);
    fill.style.background = colorOf(name);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    row.append(label, track, value);
    return row;
  }));
  const segments = result.segments || [];
  $("segments").replaceChildren(...segments.map((s) => {
    const cell = document.createElement("div");
    cell.style.background = colorOf(s.label);
    cell.title = `${s.start.toFixed(1)}–${s.end.toFixed(1)} s: ${s.label} (${percent(s.probabilities[s.label])})`;
    cell.textContent = s.label;
    return cell;
  }));
  $("segments").hidden = segments.length === 0;
  setState("done", "");
}

async function send(blob, filename) {
  $("result").dataset.source = filename;
  if (limits && blob.size > limits.max_bytes) {
    showError(`${filename}: ${blob.size} bytes, more than this server's limit of ${limits.max_bytes} bytes; send a shorter clip`);
    return;
  }
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  $("error").hidden = true;
  setState("loading", `analysing ${filename}…`);
  const form = new FormData();
  form.append("file", blob, filename);
  const url = $("timeline").checked ? "predict?timeline=1" : "predict";
  try {
    const response = await fetch(url, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: "bad_response", detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      showError(`${response.status} ${body.error}: ${body.detail}`);
      return;
    }
    render(body);
  } catch (error) {
    showError(`request failed: ${error}`);
  }
}

// -- microphone ------------------------------------------------------------------------------

async function toWav(blob) {
  // Decode whatever MediaRecorder made (WebM/Ogg Opus), resample to 16 kHz mono, encode PCM WAV.
  const context = new AudioContext();
  const decoded = await context.decodeAudioData(await blob.arrayBuffer());
  context.close();
  const rate = 16000;
  const offline = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * rate)), rate);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const samples = (await offline.startRendering()).getChannelData(0);
  const bytes = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, s) => [...s].forEach((ch, i) => bytes.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  bytes.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  bytes.setUint32(16, 16, true);
  bytes.setUint16(20, 1, true); // PCM
  bytes.setUint16(22, 1, true); // mono
  bytes.setUint32(24, rate, true);
  bytes.setUint32(28, 2 * rate, true);
  bytes.setUint16(32, 2, true);
  bytes.setUint16(34, 16, true);
  text(36, "data");
  bytes.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => bytes.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Blob([bytes], { type: "audio/wav" });
}

async function startRecording() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(`microphone unavailable: ${error.message || error}`);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    clearInterval(recordTimer);
    $("record").classList.remove("on");
    $("record").setAttribute("aria-pressed", "false");
    $("record").textContent = "● Record";
    $("record-status").textContent = "";
    const recorded = new Blob(chunks, { type: recorder.mimeType });
    try {
      await send(await toWav(recorded), "recording.wav");
    } catch (error) {
      // The browser could not decode its own recording: let the server say what it got.
      await send(recorded, `recording.${recorded.type.includes("ogg") ? "ogg" : "webm"}`);
    }
  };
  recorder.start();
  const started = Date.now();
  const maxSeconds = limits ? limits.max_duration : 120;
  $("record").classList.add("on");
  $("record").setAttribute("aria-pressed", "true");
  $("record").textContent = "■ Stop";
  recordTimer = setInterval(() => {
    const seconds = (Date.now() - started) / 1000;
    $("record-status").textContent = `recording ${seconds.toFixed(1)} s`;
    if (seconds >= maxSeconds - 0.5) recorder.stop();
  }, 100);
}

function setupRecording() {
  const button = $("record");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    button.disabled = true;
    button.title = "Recording needs a browser with MediaRecorder and a secure page (https or localhost).";
    return;
  }
  button.addEventListener("click", () => (recorder && recorder.state === "recording" ? recorder.stop() : startRecording()));
}

// -- files -----------------------------------------------------------------------------------

function setupFiles() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) send(file, file.name);
  });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => {
    const file = event.dataTransfer.files[0];
    if (file) send(file, file.name);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
}

setupFiles();
setupRecording();
loadInfo();
