// Speech playground: POST /v1/audio/speech and play the response while it streams in.
//
// How it starts playing early depends on what the browser can decode in pieces:
// * mp3 / aac where MediaSource takes them (Chromium): the chunks go straight into the <audio>
//   element through a SourceBuffer.
// * pcm / wav (every browser): the samples are scheduled on Web Audio as they arrive, played
//   through the <audio> element (a MediaStream), which gets the whole WAV file at the end.
// * anything else (opus, flac, or mp3 in Firefox): played once complete, and the page says so.
import { el, getKey, models, needKey, request, showError } from "./api.js";

const MEDIA = {
  mp3: "audio/mpeg",
  opus: "audio/ogg",
  aac: "audio/aac",
  flac: "audio/flac",
  wav: "audio/wav",
  pcm: "audio/pcm",
};
const PCM_RATE = 24000; // OpenAI's pcm: 24 kHz, 16-bit little-endian, mono

export function streamMode(format) {
  if (["mp3", "aac"].includes(format) && window.MediaSource?.isTypeSupported(MEDIA[format])) {
    return "source-buffer";
  }
  if (format === "pcm" || format === "wav") return "web-audio";
  return "whole";
}

const MODE_TEXT = {
  "source-buffer": "Plays as it streams (MediaSource).",
  "web-audio": "Plays as it streams (Web Audio).",
  whole: "This browser cannot play this format in pieces: it plays once complete. Choose wav or pcm (or mp3 in Chromium) to hear it stream.",
};

function once(target, name) {
  return new Promise((resolve) => target.addEventListener(name, resolve, { once: true }));
}

/** Feeds mp3/aac chunks into the <audio> element through MediaSource. */
class SourceBufferPlayer {
  constructor(audio, mime) {
    this.audio = audio;
    this.mime = mime;
    this.source = new MediaSource();
    this.url = URL.createObjectURL(this.source);
    audio.src = this.url;
    this.ready = once(this.source, "sourceopen").then(() => {
      this.buffer = this.source.addSourceBuffer(mime);
    });
    audio.play().catch(() => {});
  }

  async push(chunk) {
    await this.ready;
    this.buffer.appendBuffer(chunk);
    await once(this.buffer, "updateend");
  }

  async end() {
    await this.ready;
    if (this.source.readyState === "open") this.source.endOfStream();
  }
}

/** Schedules 16-bit PCM on Web Audio as it arrives; plays it through the <audio> element. */
class PcmPlayer {
  constructor(audio, format) {
    this.audio = audio;
    this.wav = format === "wav";
    this.header = new Uint8Array(0);
    this.rate = PCM_RATE;
    this.channels = 1;
    this.carry = null;
    this.first = null; // when the first samples play, on the context's clock
    this.reported = false;
    this.context = new AudioContext();
    this.sink = this.context.createMediaStreamDestination();
    this.next = 0;
    audio.srcObject = this.sink.stream;
    audio.play().catch(() => {});
  }

  /** WAV: strip the header (its fmt chunk gives rate and channels), keep the samples. */
  takeHeader(chunk) {
    const joined = new Uint8Array(this.header.length + chunk.length);
    joined.set(this.header);
    joined.set(chunk, this.header.length);
    const view = new DataView(joined.buffer);
    let offset = 12;
    while (offset + 8 <= joined.length) {
      const id = String.fromCharCode(...joined.subarray(offset, offset + 4));
      const size = view.getUint32(offset + 4, true);
      if (id === "fmt " && offset + 16 <= joined.length) {
        this.channels = view.getUint16(offset + 10, true);
        this.rate = view.getUint32(offset + 12, true);
      }
      if (id === "data") {
        this.wav = false;
        return joined.subarray(offset + 8);
      }
      offset += 8 + size + (size % 2);
    }
    this.header = joined;
    return new Uint8Array(0);
  }

  push(chunk) {
    let bytes = this.wav ? this.takeHeader(chunk) : chunk;
    if (this.carry) {
      const joined = new Uint8Array(this.carry.length + bytes.length);
      joined.set(this.carry);
      joined.set(bytes, this.carry.length);
      bytes = joined;
      this.carry = null;
    }
    const frame = 2 * this.channels;
    const usable = bytes.length - (bytes.length % frame);
    if (usable < bytes.length) this.carry = bytes.slice(usable);
    if (usable === 0) return;
    const samples = new DataView(bytes.buffer, bytes.byteOffset, usable);
    const frames = usable / frame;
    const buffer = this.context.createBuffer(this.channels, frames, this.rate);
    for (let c = 0; c < this.channels; c++) {
      const out = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = samples.getInt16((i * this.channels + c) * 2, true) / 32768;
    }
    const node = this.context.createBufferSource();
    node.buffer = buffer;
    node.connect(this.sink);
    const at = Math.max(this.next, this.context.currentTime + 0.05);
    node.start(at);
    this.first ??= at;
    // Only a running context sounds (see end); its clock starts when it does.
    if (!this.reported && this.context.state === "running" && this.onFirstAudio) {
      this.reported = true;
      this.onFirstAudio((this.first - this.context.currentTime) * 1000);
    }
    this.next = at + buffer.duration;
    this.lastNode = node;
  }

  /** Once the last scheduled samples have played, hand the element the complete file. A context
   * that never started (no sound device: Firefox then never runs it) played nothing and never
   * ends its nodes: the element plays the file instead. */
  async end(blob) {
    const played = this.context.state === "running";
    if (this.lastNode && played) await once(this.lastNode, "ended");
    this.context.close().catch(() => {}); // unawaited: a context that never started may never close
    this.audio.srcObject = null;
    this.audio.src = URL.createObjectURL(blob);
    if (!played) await this.audio.play().catch(() => {});
  }
}

/** A playable file for the whole response: pcm gets a WAV header so <audio> can read it. */
function playable(chunks, format) {
  if (format !== "pcm") return new Blob(chunks, { type: MEDIA[format] });
  const length = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => [...value].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + length, true);
  text(8, "WAVEfmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);
  header.setUint16(22, 1, true);
  header.setUint32(24, PCM_RATE, true);
  header.setUint32(28, PCM_RATE * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, length, true);
  return new Blob([header.buffer, ...chunks], { type: "audio/wav" });
}

export function initSpeech() {
  const $ = (id) => document.getElementById(id);
  const form = $("speech-form");
  const audio = $("speech-audio");
  const stats = $("speech-stats");
  const error = $("speech-error");
  const download = $("speech-download");
  let controller = null;
  let stopTiming = null; // ends the last request's wait for its first audio
  let loaded = false;

  async function loadModels() {
    const all = await models();
    const tts = all.filter((m) => m.features.includes("text-to-speech"));
    $("speech-model").replaceChildren(...tts.map((m) => el("option", { value: m.id, text: m.alias_of ? `${m.id} → ${m.alias_of}` : m.id })));
    if (tts.some((m) => m.id === "tts-1")) $("speech-model").value = "tts-1";
    fillVoices();
  }

  async function fillVoices() {
    const model = (await models()).find((m) => m.id === $("speech-model").value);
    const voices = (model && model.voices) || [];
    $("speech-voice").replaceChildren(...voices.map((v) => el("option", { value: v.id, text: v.name })));
  }

  function describeMode() {
    $("speech-mode").textContent = MODE_TEXT[streamMode($("speech-format").value)];
  }

  function showCount() {
    $("speech-count").textContent = `${$("speech-text").value.length} / 4096 characters`;
  }

  async function speak(event) {
    event.preventDefault();
    showError(error, null);
    if (needKey(error)) return;
    const format = $("speech-format").value;
    const mode = streamMode(format);
    const body = {
      model: $("speech-model").value,
      voice: $("speech-voice").value,
      input: $("speech-text").value,
      response_format: format,
      speed: Number($("speech-speed").value),
    };
    controller?.abort();
    controller = new AbortController();
    audio.pause();
    audio.removeAttribute("src");
    download.hidden = true;
    const started = performance.now();
    const times = {};
    const ms = (t) => `${Math.round(t)} ms`;
    const report = () => {
      const parts = [];
      if (times.firstByte !== undefined) parts.push(`first bytes ${ms(times.firstByte)}`);
      if (times.firstAudio !== undefined) parts.push(`first audio ${ms(times.firstAudio)}`);
      if (times.complete !== undefined) parts.push(`complete ${ms(times.complete)}`);
      stats.textContent = parts.join(" · ");
      for (const [name, value] of Object.entries(times)) stats.dataset[name] = String(Math.round(value));
    };
    delete stats.dataset.firstByte;
    delete stats.dataset.firstAudio;
    delete stats.dataset.complete;
    stats.textContent = "Synthesising…";
    // currentTime moving is what the listener hears; "playing" alone can precede sound. (A
    // MediaStream's clock runs from the start, so Web Audio reports when its first samples play.)
    // A whole file starts playing after the response is done, so this outlives the request.
    stopTiming?.();
    const onTime = () => {
      if (!audio.srcObject && audio.currentTime > 0 && times.firstAudio === undefined) {
        times.firstAudio = performance.now() - started;
        report();
        stopTiming();
      }
    };
    stopTiming = () => audio.removeEventListener("timeupdate", onTime);
    audio.addEventListener("timeupdate", onTime);
    const player =
      mode === "source-buffer" ? new SourceBufferPlayer(audio, MEDIA[format]) : mode === "web-audio" ? new PcmPlayer(audio, format) : null;
    if (player instanceof PcmPlayer) {
      player.onFirstAudio = (delay) => {
        times.firstAudio = performance.now() - started + delay;
        report();
      };
    }
    $("speech-submit").disabled = true;
    $("speech-stop").disabled = false;
    const chunks = [];
    try {
      const response = await request("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (times.firstByte === undefined) {
          times.firstByte = performance.now() - started;
          report();
        }
        chunks.push(value);
        if (player) await player.push(value);
      }
      times.complete = performance.now() - started;
      report();
      const blob = playable(chunks, format);
      download.href = URL.createObjectURL(new Blob(chunks, { type: MEDIA[format] }));
      download.download = `speech.${format}`;
      download.hidden = false;
      if (player) await player.end(blob);
      else {
        audio.src = URL.createObjectURL(blob);
        await audio.play().catch(() => {});
      }
    } catch (err) {
      stopTiming();
      if (err.name !== "AbortError") showError(error, err);
      stats.textContent = err.name === "AbortError" ? "Stopped." : "";
    } finally {
      $("speech-submit").disabled = false;
      $("speech-stop").disabled = true;
    }
  }

  form.addEventListener("submit", speak);
  $("speech-stop").addEventListener("click", () => {
    controller?.abort();
    audio.pause();
  });
  $("speech-model").addEventListener("change", fillVoices);
  $("speech-format").addEventListener("change", describeMode);
  $("speech-text").addEventListener("input", showCount);
  $("speech-speed").addEventListener("input", () => {
    $("speech-speed-out").textContent = `${Number($("speech-speed").value).toFixed(2)}×`;
  });
  showCount();
  describeMode();
  return {
    show() {
      if (!loaded) {
        loaded = true;
        loadModels().catch((err) => showError(error, err));
      }
      if (!getKey()) showError(error, null);
    },
  };
}
