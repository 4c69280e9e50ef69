// Transcription and translation playground: upload or record, streamed text (stream=true SSE),
// then the chosen response format: raw output, and segments that seek the <audio> player.
import { el, models, needKey, readSse, request, showError } from "./api.js";

/** "00:01:02,500" or "01:02.500" → seconds. */
function clock(text) {
  const parts = text.trim().replace(",", ".").split(":").map(Number);
  return parts.reduce((total, part) => total * 60 + part, 0);
}

/** Segments from verbose_json, srt or vtt output; none from json or text. */
export function segmentsOf(format, raw) {
  if (format === "verbose_json") {
    return (JSON.parse(raw).segments || []).map((s) => ({ start: s.start, end: s.end, text: s.text.trim() }));
  }
  if (format !== "srt" && format !== "vtt") return [];
  const cues = [];
  for (const block of raw.replace(/\r/g, "").split(/\n\n+/)) {
    const lines = block.split("\n");
    const at = lines.findIndex((line) => line.includes("-->"));
    if (at < 0) continue;
    const [start, end] = lines[at].split("-->").map((part) => clock(part.split(" ").filter(Boolean)[0]));
    cues.push({ start, end, text: lines.slice(at + 1).join(" ").trim() });
  }
  return cues;
}

function stamp(seconds) {
  const m = Math.floor(seconds / 60);
  const s = (seconds - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

export function initStt() {
  const $ = (id) => document.getElementById(id);
  const error = $("stt-error");
  const audio = $("stt-audio");
  const text = $("stt-text");
  let recorded = null; // a File from the microphone, used when no file is picked
  let recorder = null;
  let controller = null;
  let loaded = false;

  async function loadModels() {
    const stt = (await models()).filter((m) => m.features.includes("speech-to-text"));
    $("stt-model").replaceChildren(...stt.map((m) => el("option", { value: m.id, text: m.alias_of ? `${m.id} → ${m.alias_of}` : m.id })));
    if (stt.some((m) => m.id === "whisper-1")) $("stt-model").value = "whisper-1";
    const languages = [...new Set(stt.flatMap((m) => m.languages || []))].sort();
    const names = new Intl.DisplayNames(["en"], { type: "language" });
    const label = (code) => {
      try {
        return `${names.of(code)} (${code})`;
      } catch {
        return code;
      }
    };
    $("stt-language").replaceChildren(el("option", { value: "", text: "auto-detect" }), ...languages.map((code) => el("option", { value: code, text: label(code) })));
  }

  function task() {
    return document.querySelector('input[name="task"]:checked').value;
  }

  function chosenFile() {
    return $("stt-file").files[0] || recorded;
  }

  function form(file, format, stream) {
    const data = new FormData();
    data.append("file", file, file.name);
    data.append("model", $("stt-model").value);
    data.append("response_format", format);
    const language = $("stt-language").value;
    if (language && task() === "transcriptions") data.append("language", language);
    if (format === "verbose_json") data.append("timestamp_granularities[]", "segment");
    if (stream) data.append("stream", "true");
    return data;
  }

  function showMeta(entries) {
    $("stt-meta").replaceChildren(...entries.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
  }

  function showSegments(segments) {
    $("stt-segments").replaceChildren(
      ...segments.map((segment) =>
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "segment",
              "data-start": String(segment.start),
              onclick: () => {
                audio.currentTime = segment.start;
                audio.play().catch(() => {});
              },
            },
            el("span", { class: "time", text: `${stamp(segment.start)}–${stamp(segment.end)}` }),
            el("span", { text: segment.text }),
          ),
        ),
      ),
    );
  }

  async function run(event) {
    event.preventDefault();
    showError(error, null);
    if (needKey(error)) return;
    const file = chosenFile();
    if (!file) {
      showError(error, "Choose a file or record something first.");
      return;
    }
    controller?.abort();
    controller = new AbortController();
    const signal = controller.signal;
    const path = `/v1/audio/${task()}`;
    const format = $("stt-format").value;
    const status = $("stt-status");
    text.textContent = "";
    $("stt-raw").textContent = "";
    showSegments([]);
    showMeta([]);
    $("stt-submit").disabled = true;
    $("stt-stop").disabled = false;
    const started = performance.now();
    const seconds = () => `${((performance.now() - started) / 1000).toFixed(1)} s`;
    try {
      if ($("stt-stream").checked) {
        status.textContent = "Streaming…";
        const response = await request(path, { method: "POST", body: form(file, "json", true), signal });
        await readSse(response, (event) => {
          if (event.type === "transcript.text.delta") text.textContent += event.delta;
          if (event.type === "transcript.text.done") {
            text.textContent = event.text;
            if (event.usage && event.usage.seconds !== undefined) showMeta([["Duration", `${event.usage.seconds} s`]]);
          }
        });
        status.textContent = `Text streamed in ${seconds()}; fetching ${format}…`;
      } else {
        status.textContent = "Transcribing…";
      }
      const response = await request(path, { method: "POST", body: form(file, format, false), signal });
      const raw = await response.text();
      $("stt-raw").textContent = format.endsWith("json") ? JSON.stringify(JSON.parse(raw), null, 2) : raw;
      if (format === "verbose_json") {
        const body = JSON.parse(raw);
        text.textContent = body.text;
        showMeta([
          ["Language", body.language],
          ["Duration", `${body.duration} s`],
          ["Task", body.task],
        ]);
      } else if (format === "json") {
        text.textContent = JSON.parse(raw).text;
      } else if (format === "text") {
        text.textContent = raw.trim();
      } else if (!$("stt-stream").checked) {
        text.textContent = segmentsOf(format, raw).map((s) => s.text).join(" ");
      }
      showSegments(segmentsOf(format, raw));
      status.textContent = `Done in ${seconds()}.`;
    } catch (err) {
      status.textContent = err.name === "AbortError" ? "Stopped." : "";
      if (err.name !== "AbortError") showError(error, err);
    } finally {
      $("stt-submit").disabled = false;
      $("stt-stop").disabled = true;
    }
  }

  function useFile(file) {
    if (!file) return;
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(file);
  }

  async function toggleRecording() {
    const state = $("stt-record-state");
    if (recorder && recorder.state === "recording") {
      recorder.stop();
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
      recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((t) => t.stop());
        const type = recorder.mimeType || "audio/webm";
        const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
        recorded = new File(chunks, `recording.${ext}`, { type });
        $("stt-file").value = "";
        useFile(recorded);
        $("stt-record").textContent = "● Record";
        state.textContent = `Recorded ${(recorded.size / 1024).toFixed(0)} KB: press Transcribe.`;
      });
      recorder.start();
      $("stt-record").textContent = "■ Stop recording";
      state.textContent = "Recording…";
    } catch (err) {
      showError(error, `Microphone unavailable: ${err.message}`);
    }
  }

  $("stt-form").addEventListener("submit", run);
  $("stt-stop").addEventListener("click", () => controller?.abort());
  $("stt-record").addEventListener("click", toggleRecording);
  $("stt-file").addEventListener("change", () => {
    recorded = null;
    useFile($("stt-file").files[0]);
  });
  for (const radio of document.querySelectorAll('input[name="task"]')) {
    radio.addEventListener("change", () => {
      $("stt-submit").textContent = task() === "translations" ? "Translate" : "Transcribe";
      $("stt-language").disabled = task() === "translations";
    });
  }
  if (!window.MediaRecorder) $("stt-record").hidden = true;
  return {
    show() {
      if (!loaded) {
        loaded = true;
        loadModels().catch((err) => showError(error, err));
      }
    },
  };
}
