// Quicksilver playground: streams a completion over SSE and paints the diffusion canvas.
//
// The request is a POST, so the stream is read with fetch() + ReadableStream rather than
// EventSource.  With "diffusing": true the server interleaves draft frames (empty text, an extra
// "draft" field holding the whole generated region, null where a position is still masked) with
// ordinary append-only text chunks; see docs/serving.md for the contract.  A model without drafts
// (an AR twin, or diffusing off) simply has its text appended.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "quicksilver.apiKey";
  const SETTINGS_STORE = "quicksilver.settings";
  const MASK_GLYPH = "·";
  // A tiny model on a fast machine sends drafts far quicker than a screen refreshes; frames are
  // painted one per animation frame so the fill-in stays visible, and a backlog past this many
  // frames is thinned (every other frame dropped, the newest kept) so the canvas stays within about
  // half a second of the stream while still showing the order in which positions filled in.
  const MAX_BACKLOG = 30;
  const SETTING_IDS = ["mode", "max-tokens", "temperature", "diffusing", "steps", "block-length",
                       "commit", "threshold", "cache"];

  const ui = {
    model: $("model-name"), mode: $("mode"), maxTokens: $("max-tokens"), temperature: $("temperature"),
    diffusing: $("diffusing"), steps: $("steps"), blockLength: $("block-length"), commit: $("commit"),
    threshold: $("threshold"), cache: $("cache"), apiKey: $("api-key"), prompt: $("prompt"),
    suffix: $("suffix"), generate: $("generate"), stop: $("stop"), error: $("error"),
    status: $("status"), stepsCount: $("steps-count"), tokenCount: $("token-count"),
    tps: $("tokens-per-second"), tpf: $("tokens-per-step"), ttft: $("ttft"), canvas: $("canvas"),
    schema: $("schema"), editBox: $("edit-box"), editLines: $("edit-lines"),
  };

  let modelId = null;
  let run = null; // the generation in flight, see start()

  // -- settings ------------------------------------------------------------------------------------

  function loadSettings() {
    ui.apiKey.value = localStorage.getItem(KEY_STORE) || "";
    try {
      const saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
      for (const id of SETTING_IDS) {
        const el = $(id);
        if (!(id in saved)) continue;
        if (el.type === "checkbox") el.checked = !!saved[id];
        else el.value = saved[id];
      }
    } catch (_) { /* a corrupt entry just means defaults */ }
    syncControls();
  }

  function saveSettings() {
    const saved = {};
    for (const id of SETTING_IDS) {
      const el = $(id);
      saved[id] = el.type === "checkbox" ? el.checked : el.value;
    }
    localStorage.setItem(SETTINGS_STORE, JSON.stringify(saved));
  }

  function syncControls() {
    ui.threshold.disabled = ui.commit.value !== "threshold";
    ui.suffix.disabled = ui.mode.value !== "completion";
    ui.schema.disabled = ui.mode.value === "edit";
    ui.editBox.hidden = ui.mode.value !== "edit";
  }

  // Character span of 1-based inclusive lines "L1:L2" (the last line's newline stays), or of the
  // lines the textarea selection touches.
  function lineSpan(text) {
    const lines = text.split("\n");
    let lo, hi;
    const raw = ui.editLines.value.trim();
    if (raw) {
      const m = raw.match(/^(\d+)(?::(\d+))?$/);
      if (!m) throw new Error("Lines to regenerate: write L1:L2, e.g. 2:3.");
      lo = Number(m[1]); hi = Number(m[2] || m[1]);
    } else {
      const a = ui.prompt.selectionStart, b = ui.prompt.selectionEnd;
      if (a === b) throw new Error("Choose lines to regenerate: select them in the text or write L1:L2.");
      lo = text.slice(0, a).split("\n").length;
      hi = text.slice(0, Math.max(a, b - 1)).split("\n").length;
    }
    if (lo < 1 || hi < lo || hi > lines.length) throw new Error(`Lines ${lo}:${hi} are outside the text (1 to ${lines.length}).`);
    let start = 0;
    for (let i = 0; i < lo - 1; i++) start += lines[i].length + 1;
    let end = start;
    for (let i = lo - 1; i < hi; i++) end += lines[i].length + (i < hi - 1 ? 1 : 0);
    return { start, end };
  }

  function authHeaders() {
    const key = ui.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function intField(el, name, { min = 1, optional = false } = {}) {
    const raw = el.value.trim();
    if (raw === "" && optional) return undefined;
    const v = Number(raw);
    if (!Number.isInteger(v) || v < min) throw new Error(`${name} must be a whole number of at least ${min}.`);
    return v;
  }

  function numberField(el, name, lo, hi) {
    const v = Number(el.value.trim());
    if (el.value.trim() === "" || !Number.isFinite(v) || v < lo || v > hi) {
      throw new Error(`${name} must be a number from ${lo} to ${hi}.`);
    }
    return v;
  }

  // The request body; only the knobs the user set are sent, the rest is the model's default.
  function buildRequest() {
    const chat = ui.mode.value === "chat";
    const edit = ui.mode.value === "edit";
    const body = {
      stream: true,
      max_tokens: intField(ui.maxTokens, "Max tokens"),
      temperature: numberField(ui.temperature, "Temperature", 0, 2),
      diffusing: ui.diffusing.checked,
    };
    if (modelId) body.model = modelId;
    const steps = intField(ui.steps, "Steps", { optional: true });
    if (steps !== undefined) body.steps = steps;
    const block = intField(ui.blockLength, "Block length", { optional: true });
    if (block !== undefined) body.block_length = block;
    if (ui.commit.value) body.commit = ui.commit.value;
    if (ui.commit.value === "threshold") body.threshold = numberField(ui.threshold, "Threshold", 0, 1);
    if (ui.cache.value) body.cache = ui.cache.value;
    const prompt = ui.prompt.value;
    if (!prompt.trim()) throw new Error("Write a prompt first.");
    let suffix = "";
    if (edit) {
      const { start, end } = lineSpan(prompt);
      body.input = prompt;
      body.spans = [{ start, end, max_tokens: body.max_tokens }];
      delete body.max_tokens;
      return { url: "/v1/edits", body, chat: false, edit: true, prompt: "", suffix: "" };
    }
    const schema = ui.schema.value.trim();
    if (schema) {
      let parsed;
      try { parsed = JSON.parse(schema); } catch (e) { throw new Error(`The JSON schema is not JSON: ${e.message}`); }
      body.response_format = { type: "json_schema", json_schema: { name: "playground", schema: parsed } };
    }
    if (chat) {
      body.messages = [{ role: "user", content: prompt }];
    } else {
      body.prompt = prompt;
      suffix = ui.suffix.value;
      if (suffix) body.suffix = suffix;
    }
    return { url: chat ? "/v1/chat/completions" : "/v1/completions", body, chat, prompt, suffix };
  }

  // -- the canvas ----------------------------------------------------------------------------------

  function span(cls, text) {
    const el = document.createElement("span");
    if (cls) el.className = cls;
    el.textContent = text;
    return el;
  }

  // Lays out [prompt][generated region][suffix]; prompt and suffix are dim context (completion mode).
  function resetCanvas(req) {
    ui.canvas.textContent = "";
    if (!req.chat && !req.edit) ui.canvas.append(span("ctx prompt", req.prompt));
    const region = span("region", "");
    region.setAttribute("data-testid", "region");
    ui.canvas.append(region);
    if (req.suffix) ui.canvas.append(span("ctx suffix", req.suffix));
    return region;
  }

  // Paints one draft: one span per position, reused between frames so that only positions that
  // changed are touched and a newly committed one can be highlighted.
  function paintDraft(r, draft) {
    const tokens = draft.tokens || [];
    if (!r.cells) { r.region.textContent = ""; r.cells = []; }
    while (r.cells.length < tokens.length) {
      const cell = span("tok mask", MASK_GLYPH);
      cell.dataset.masked = "1";
      r.region.append(cell);
      r.cells.push(cell);
    }
    while (r.cells.length > tokens.length) r.cells.pop().remove();
    let committed = 0;
    tokens.forEach((tok, i) => {
      const cell = r.cells[i];
      if (tok === null || tok === undefined) {
        if (cell.dataset.masked !== "1") {
          cell.className = "tok mask"; cell.textContent = MASK_GLYPH; cell.dataset.masked = "1";
        }
        return;
      }
      committed += 1;
      if (cell.dataset.masked === "1" || cell.textContent !== tok) {
        cell.className = "tok fresh";
        cell.textContent = tok;
        cell.dataset.masked = "0";
      }
    });
    r.paintedStep = draft.step;
    ui.stepsCount.textContent = String(draft.step);
    ui.tokenCount.textContent = String(committed);
    ui.canvas.dataset.step = String(draft.step);
    const secs = (performance.now() - r.t0) / 1000;
    if (secs > 0 && committed > 0) ui.tps.textContent = (committed / secs).toFixed(1);
  }

  function paintText(r, piece) {
    // Without drafts (an AR model, or diffusing off) the text simply grows, the new piece highlighted.
    r.region.append(span("piece fresh", piece));
  }

  function pump(r) {
    r.rafPending = false;
    if (r !== run) return;
    while (r.frames.length > MAX_BACKLOG) {
      const last = r.frames.length - 1;
      r.frames = r.frames.filter((_, i) => i % 2 === 1 || i === last);
    }
    const frame = r.frames.shift();
    if (frame) paintDraft(r, frame);
    if (r.frames.length) schedule(r);
    else if (r.ended) finish(r);
  }

  function schedule(r) {
    if (!r.rafPending) { r.rafPending = true; requestAnimationFrame(() => pump(r)); }
  }

  // -- status --------------------------------------------------------------------------------------

  function setState(state, label) {
    ui.status.dataset.state = state;
    ui.status.textContent = label || state;
    const busy = state === "generating";
    ui.generate.disabled = busy;
    ui.stop.disabled = !busy;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = false;
  }

  function finish(r) {
    if (r.finished) return;
    r.finished = true;
    // The canvas ends as exactly the text the API returned (stop sequences and end of text cut).
    r.region.textContent = r.text;
    r.cells = null;
    const st = r.stats;
    if (st) {
      ui.stepsCount.textContent = String(st.nfe);
      ui.tokenCount.textContent = String(st.generated_tokens);
      ui.tps.textContent = st.seconds > 0 ? (st.generated_tokens / st.seconds).toFixed(1) : "–";
      ui.tpf.textContent = Number(st.tokens_per_forward).toFixed(2);
    }
    if (r.error) { setState("error"); showError(r.error); }
    else if (r.aborted) setState("stopped");
    else setState("done", r.finishReason ? `done (${r.finishReason})` : "done");
    if (run === r) run = null;
  }

  // -- the stream ----------------------------------------------------------------------------------

  function onChunk(r, chunk) {
    if (chunk.error) {
      r.error = chunk.error.message || "The server reported an error.";
      return;
    }
    for (const choice of chunk.choices || []) {
      if (choice.index !== 0) continue;
      const piece = r.req.chat ? (choice.delta && choice.delta.content) : choice.text;
      if (piece) {
        if (r.firstTokenAt === null) {
          r.firstTokenAt = performance.now();
          ui.ttft.textContent = `${Math.round(r.firstTokenAt - r.t0)} ms`;
        }
        r.text += piece;
        r.pieces += 1;
        if (!r.sawDraft) {
          paintText(r, piece);
          // Live estimate for a stream without drafts (about one piece per token for an AR model);
          // the server's exact figures replace it when the stream ends.
          ui.tokenCount.textContent = String(r.pieces);
          const secs = (performance.now() - r.t0) / 1000;
          if (secs > 0) ui.tps.textContent = (r.pieces / secs).toFixed(1);
        }
      }
      if (choice.finish_reason) r.finishReason = choice.finish_reason;
    }
    if (chunk.stats) r.stats = chunk.stats;
    if (chunk.draft && chunk.draft.index === 0) {
      r.sawDraft = true;
      r.frames.push(chunk.draft);
      schedule(r);
    }
  }

  // Splits the SSE byte stream into events and hands each JSON payload to onChunk.
  async function readStream(r, response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // Normalized on the whole buffer, so a CRLF split across two reads is still caught.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue; // a comment (keep-alive ping) or an empty event
        if (data === "[DONE]") { r.sawDone = true; return; }
        try { onChunk(r, JSON.parse(data)); } catch (e) { r.error = `Unreadable stream frame: ${e.message}`; return; }
        if (r.error) return;
      }
    }
    if (!r.sawDone && !r.error) r.error = "The stream ended before [DONE].";
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
    } catch (_) { /* not JSON */ }
    return `${response.status} ${response.statusText || "error"}`;
  }

  async function start() {
    if (run) return;
    ui.error.hidden = true;
    let req;
    try { req = buildRequest(); } catch (e) { showError(e.message); return; }
    saveSettings();
    const r = {
      req, controller: new AbortController(), t0: performance.now(), firstTokenAt: null, text: "", pieces: 0,
      frames: [], cells: null, sawDraft: false, sawDone: false, ended: false, finished: false,
      rafPending: false, stats: null, finishReason: null, error: null, aborted: false,
    };
    run = r;
    r.region = resetCanvas(req);
    for (const el of [ui.stepsCount, ui.tokenCount]) el.textContent = "0";
    for (const el of [ui.tps, ui.tpf, ui.ttft]) el.textContent = "–";
    setState("generating", "generating…");
    try {
      const response = await fetch(req.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
        body: JSON.stringify(req.body),
        signal: r.controller.signal,
      });
      if (!response.ok) r.error = await errorMessage(response);
      else await readStream(r, response);
    } catch (e) {
      if (e.name === "AbortError") r.aborted = true;
      else r.error = `Request failed: ${e.message}`;
    }
    r.ended = true;
    if (r.error || r.aborted || !r.frames.length) finish(r);
    else schedule(r); // finish() runs once the last queued draft is painted
  }

  function stop() {
    if (run) { run.aborted = true; run.controller.abort(); }
  }

  async function loadModel() {
    try {
      const response = await fetch("/v1/models", { headers: authHeaders() });
      if (!response.ok) { ui.model.textContent = response.status === 401 ? "(API key needed)" : "?"; return; }
      const body = await response.json();
      modelId = body.data && body.data.length ? body.data[0].id : null;
      ui.model.textContent = modelId || "?";
    } catch (_) {
      ui.model.textContent = "(server unreachable)";
    }
  }

  // -- wiring --------------------------------------------------------------------------------------

  loadSettings();
  ui.generate.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.commit.addEventListener("change", syncControls);
  ui.mode.addEventListener("change", syncControls);
  ui.apiKey.addEventListener("change", () => {
    const key = ui.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    loadModel();
  });
  for (const el of [ui.prompt, ui.suffix]) {
    el.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); start(); }
    });
  }
  loadModel();
})();
