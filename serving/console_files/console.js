// The tokenreel console: the library, one video (its tokens' fates, a question answered as it
// streams, what layer K kept), and the indexing runs. Everything comes from the HTTP API with
// the key asked once and kept for the tab (sessionStorage). Plain script, no build step.
"use strict";

const KEY_STORAGE = "tokenreel.apiKey";
const PAGE_SIZE = 20;
// The colours of jobs/visualize/render.py (the PNG figures), so both pictures read the same.
const COLOURS = {
  kept: "rgb(0, 200, 0)",
  merged: "rgb(160, 32, 240)",
  dropped: "rgb(230, 0, 0)",
  question: "rgb(255, 191, 0)",
};
const KEPT = 0, MERGED = 1, DROPPED = 2;
const FATE_COLOURS = [COLOURS.kept, COLOURS.merged, COLOURS.dropped];
const DARKEN = 0.35; // brightness left to the cells layer K did not keep (as render.py)
const PANEL_WIDTH = 160, GAP = 4, MAX_COLUMNS = 8;
// A panel is never taller than this: a long video's preview strip is squeezed to tiny panels
// whose rounded sizes may distort the aspect; with at most FRAME_PAGE panels the figure is then
// at most 8 rows of this height, well inside a canvas's limits (32,767 px a side in Chromium).
const MAX_PANEL_HEIGHT = 2 * PANEL_WIDTH;
// Frames drawn at a time, each page fetched on its own (the API's maximum window is 64 frames),
// so a video of hours is drawn one bounded window after another, never all of it at once.
const FRAME_PAGE = 64;

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
const library = { search: "", status: "", offset: 0, total: 0 };
const strips = new Map(); // video id -> Promise<ImageBitmap | null>
let currentVideo = null;
let servedModel = null;

class AuthError extends Error {}

const $ = (id) => document.getElementById(id);

function show(view) {
  for (const name of ["key-view", "library-view", "video-view", "runs-view"]) {
    $(name).hidden = name !== view;
  }
  $("nav").hidden = view === "key-view";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const refused = Boolean(apiKey);
    forgetKey();
    showKeyPrompt(refused ? "The key was refused." : "");
    throw new AuthError("unauthorized");
  }
  return response;
}

async function getJson(path) {
  const response = await api(path);
  const body = await response.json();
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function forgetKey() {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORAGE);
  strips.clear();
}

function showKeyPrompt(message) {
  show("key-view");
  $("key-error").textContent = message;
  $("key-input").value = "";
  $("key-input").focus();
}

function reportError(error) {
  if (error instanceof AuthError) return;
  $("error").textContent = String(error.message || error);
}

// -- formatting ---------------------------------------------------------------------------------

function text(tag, content, className) {
  const element = document.createElement(tag);
  if (content !== undefined && content !== null) element.textContent = String(content);
  if (className) element.className = className;
  return element;
}

function formatBytes(count) {
  if (count === null || count === undefined) return "-";
  const units = ["B", "KB", "MB", "GB"];
  let value = count, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${String(Math.round(seconds % 60)).padStart(2, "0")}`;
}

function formatTokens(info) {
  if (info.visual_tokens === null || info.visual_tokens === undefined) return "-";
  const into = info.tokens_in === null || info.tokens_in === undefined ? "?" : info.tokens_in;
  return `${into} \u2192 ${info.visual_tokens}`;
}

// -- frame strips (the preview made at indexing) --------------------------------------------------

function frameStrip(videoId) {
  if (!strips.has(videoId)) {
    const load = api(`/v1/videos/${encodeURIComponent(videoId)}/thumbnail`)
      .then((response) => (response.ok ? response.blob().then(createImageBitmap) : null))
      .catch((error) => { if (error instanceof AuthError) throw error; return null; });
    strips.set(videoId, load);
  }
  return strips.get(videoId);
}

async function drawThumbnail(canvas, info) {
  const strip = await frameStrip(info.video_id);
  if (!strip || !info.frames) return;
  const frameWidth = strip.width / info.frames;
  canvas.width = Math.round(frameWidth);
  canvas.height = strip.height;
  canvas.getContext("2d").drawImage(strip, 0, 0, frameWidth, strip.height, 0, 0, frameWidth, strip.height);
}

// -- library ------------------------------------------------------------------------------------

async function showLibrary() {
  show("library-view");
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: library.offset });
  if (library.status) params.set("status", library.status);
  if (library.search) params.set("search", library.search);
  const listing = await getJson(`/v1/videos?${params}`);
  library.total = listing.total;
  const body = $("videos").tBodies[0];
  body.replaceChildren();
  for (const info of listing.data) {
    const status = info.status;
    const row = document.createElement("tr");
    row.dataset.videoId = info.video_id;
    row.dataset.status = status;
    const thumb = document.createElement("canvas");
    thumb.className = "thumb";
    thumb.width = 64;
    thumb.height = 48;
    const link = text("a", info.video_id);
    link.href = `#/video/${encodeURIComponent(info.video_id)}`;
    const cells = [
      thumb, link, text("span", status, `status status-${status}`),
      formatSeconds(info.duration_s), formatTokens(info), formatBytes(info.bytes), info.error || "",
    ];
    cells.forEach((cell, i) => {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      if (i >= 3 && i <= 5) td.className = "num";
      if (i === 6) td.className = "reason";
      row.append(td);
    });
    body.append(row);
    if (info.status === "indexed") drawThumbnail(thumb, info).catch(reportError);
  }
  const last = Math.min(library.offset + listing.data.length, listing.total);
  $("page-info").textContent = listing.total
    ? `${library.offset + 1}\u2013${last} of ${listing.total}` : "no videos";
  $("prev-page").disabled = library.offset === 0;
  $("next-page").disabled = last >= listing.total;
}

// -- one video: the fates of its tokens ----------------------------------------------------------

// The panels of the view's window of frames (view.frame_start onwards), MAX_COLUMNS a row.
function figureLayout(view, strip) {
  const [, rows, cols] = view.grid;
  let aspect = rows / cols;
  if (strip && view.frames) aspect = strip.height / (strip.width / view.frames);
  const frames = view.frame_count;
  const columns = Math.min(MAX_COLUMNS, frames);
  const panelHeight = Math.min(MAX_PANEL_HEIGHT, Math.max(8, Math.round(PANEL_WIDTH * aspect)));
  const cellSide = Math.min(Math.floor(PANEL_WIDTH / cols), Math.floor(panelHeight / rows));
  return {
    frames, frameStart: view.frame_start, stepStart: view.step_start, columns,
    perStep: view.frames_per_step, grid: view.grid,
    panelWidth: PANEL_WIDTH, panelHeight, gap: GAP,
    line: Math.max(2, Math.floor(cellSide / 8)),
    width: GAP + columns * (PANEL_WIDTH + GAP),
    height: GAP + Math.ceil(frames / columns) * (panelHeight + GAP),
  };
}

function panelOrigin(layout, frame) {
  const row = Math.floor(frame / layout.columns), col = frame % layout.columns;
  return [layout.gap + col * (layout.panelWidth + layout.gap),
    layout.gap + row * (layout.panelHeight + layout.gap)];
}

// (x0, y0, x1, y1), inclusive, of token (h, w) on the panel of the window's `frame`-th frame
// (render.py's patch_box).
function cellBox(layout, frame, h, w) {
  const [ox, oy] = panelOrigin(layout, frame);
  const [, rows, cols] = layout.grid;
  return [
    ox + Math.floor((w * layout.panelWidth) / cols),
    oy + Math.floor((h * layout.panelHeight) / rows),
    ox + Math.floor(((w + 1) * layout.panelWidth) / cols) - 1,
    oy + Math.floor(((h + 1) * layout.panelHeight) / rows) - 1,
  ];
}

function outline(context, box, colour, line) {
  const [x0, y0, x1, y1] = [box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1];
  const width = x1 - x0 + 1, height = y1 - y0 + 1;
  context.fillStyle = colour;
  context.fillRect(x0, y0, width, line);
  context.fillRect(x0, y1 - line + 1, width, line);
  context.fillRect(x0, y0, line, height);
  context.fillRect(x1 - line + 1, y0, line, height);
}

function prepareCanvas(canvas, layout) {
  canvas.width = layout.width;
  canvas.height = layout.height;
  canvas.dataset.layout = JSON.stringify({
    frames: layout.frames, frameStart: layout.frameStart, columns: layout.columns,
    perStep: layout.perStep, grid: layout.grid,
    panelWidth: layout.panelWidth, panelHeight: layout.panelHeight, gap: layout.gap,
    line: layout.line,
  });
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, layout.width, layout.height);
  return context;
}

function drawPanels(context, layout, strip, view) {
  // The strip has one panel per sampled frame; when the panels are grid steps, grey.
  const fromStrip = strip && view.frames === view.frames_total;
  const frameWidth = fromStrip ? strip.width / view.frames : 0;
  for (let f = 0; f < layout.frames; f += 1) {
    const [x, y] = panelOrigin(layout, f);
    if (fromStrip) {
      context.drawImage(strip, (layout.frameStart + f) * frameWidth, 0, frameWidth, strip.height,
        x, y, layout.panelWidth, layout.panelHeight);
    } else {
      context.fillStyle = "#888";
      context.fillRect(x, y, layout.panelWidth, layout.panelHeight);
    }
  }
}

// The kind of each row the view lists (view.rows: the rows its window needs).
function rowKinds(view) {
  return new Map(view.rows.map((row, j) => [row, view.kind[j]]));
}

// Each original token's fate in the outer stage, for the window's grid steps in (t, h, w)
// raster order (as view.assignment).
function fates(view) {
  const kinds = rowKinds(view);
  return view.assignment.map((row) =>
    row < 0 ? DROPPED : kinds.get(row) === 1 ? MERGED : KEPT);
}

// visit(frame in the window, index in view.assignment, h, w) for every token cell drawn.
function forEachCell(layout, visit) {
  const [, rows, cols] = layout.grid;
  for (let f = 0; f < layout.frames; f += 1) {
    const t = Math.floor((layout.frameStart + f) / layout.perStep) - layout.stepStart;
    for (let h = 0; h < rows; h += 1) {
      for (let w = 0; w < cols; w += 1) visit(f, (t * rows + h) * cols + w, h, w);
    }
  }
}

function drawOuterStage(canvas, view, strip) {
  const layout = figureLayout(view, strip);
  const context = prepareCanvas(canvas, layout);
  drawPanels(context, layout, strip, view);
  if (!view.assignment) return;
  const fate = fates(view);
  forEachCell(layout, (f, cell, h, w) => {
    outline(context, cellBox(layout, f, h, w), FATE_COLOURS[fate[cell]], layout.line);
  });
  context.fillStyle = COLOURS.merged;
  const end = layout.frameStart + layout.frames;
  view.index.forEach(([t, h, w], j) => {
    if (view.kind[j] !== 1) return;
    // The centre's frames that are in the window (a cluster may be centred outside it).
    const first = Math.max(t * layout.perStep, layout.frameStart);
    for (let g = first; g < Math.min((t + 1) * layout.perStep, end); g += 1) {
      const [x0, y0, x1, y1] = cellBox(layout, g - layout.frameStart, h, w);
      const radius = Math.max(1.5, Math.min(x1 - x0, y1 - y0) / 6);
      context.beginPath();
      context.arc((x0 + x1) / 2, (y0 + y1) / 2, radius, 0, 2 * Math.PI);
      context.fill();
    }
  });
}

function drawKeptAtLayerK(canvas, view, strip, keptRows) {
  const layout = figureLayout(view, strip);
  const context = prepareCanvas(canvas, layout);
  drawPanels(context, layout, strip, view);
  if (!view.assignment) return;
  const kept = new Set(keptRows);
  const keptCells = [];
  context.fillStyle = `rgba(0, 0, 0, ${1 - DARKEN})`;
  forEachCell(layout, (f, cell, h, w) => {
    const row = view.assignment[cell];
    const box = cellBox(layout, f, h, w);
    if (row >= 0 && kept.has(row)) keptCells.push(box);
    else context.fillRect(box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1);
  });
  for (const box of keptCells) outline(context, box, COLOURS.question, layout.line);
}

async function showVideo(videoId) {
  show("video-view");
  currentVideo = null;
  $("answer").textContent = "";
  $("answer").dataset.chunks = "0";
  $("ask-error").textContent = "";
  $("answer-figures").hidden = true;
  $("fig-s2-block").hidden = true;
  $("frame-controls").hidden = true;
  $("video-title").textContent = videoId;
  const id = encodeURIComponent(videoId);
  const info = await getJson(`/v1/videos/${id}`);
  const facts = {
    status: info.status === "interrupted" ? "interrupted (a rerun of the indexing job resumes it)" : info.status,
    reason: info.error, model: info.model_id,
    "tokens in \u2192 kept": formatTokens(info), bytes: formatBytes(info.bytes),
    duration: formatSeconds(info.duration_s), frames: info.frames,
  };
  const canvas = $("fig-s3");
  canvas.width = canvas.height = 0;
  if (info.status === "indexed") {
    // kept: the rows layer K kept for the last question (Fig. S2), redrawn on every window.
    const video = { id: videoId, view: null, strip: await frameStrip(videoId), kept: null };
    currentVideo = video;
    await showFrames(video, 0);
    if (video !== currentVideo) return; // another video was opened meanwhile
    const view = video.view;
    facts.method = `${view.method} at r = ${view.retention_ratio}`;
    facts["kept share"] = `${((100 * view.kept_count) / view.original_count).toFixed(1)} %`;
  }
  renderFacts($("video-facts"), facts);
  $("ask").disabled = currentVideo === null;
}

// Fetch and draw the window of FRAME_PAGE frames from `frameStart` (Figs. S3 and, after a
// question, S2), with "frames X-Y of Z" and the previous/next buttons.
async function showFrames(video, frameStart) {
  video.pending = frameStart;
  const params = new URLSearchParams({ frame_start: frameStart, frame_count: FRAME_PAGE });
  const view = await getJson(`/v1/videos/${encodeURIComponent(video.id)}/tokens?${params}`);
  // A later page (or another video) was asked for meanwhile: its answer draws, not this one.
  if (video !== currentVideo || video.pending !== frameStart) return;
  video.view = view;
  drawOuterStage($("fig-s3"), view, video.strip);
  if (video.kept) drawKeptAtLayerK($("fig-s2"), view, video.strip, video.kept);
  const last = view.frame_start + view.frame_count;
  $("frame-info").textContent = `frames ${view.frame_start + 1}\u2013${last} of ${view.frames_total}`;
  $("prev-frames").disabled = view.frame_start === 0;
  $("next-frames").disabled = last >= view.frames_total;
  $("frame-controls").hidden = false;
}

function renderFacts(list, facts) {
  list.replaceChildren();
  for (const [name, value] of Object.entries(facts)) {
    if (value === null || value === undefined || value === "") continue;
    list.append(text("dt", name), text("dd", value));
  }
}

// -- asking: the answer streams in (OpenAI-compatible SSE) ----------------------------------------

async function modelName() {
  if (!servedModel) servedModel = (await getJson("/v1/models")).data[0].id;
  return servedModel;
}

async function ask(question) {
  const video = currentVideo;
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.chunks = "0";
  answer.dataset.done = "false";
  $("ask-error").textContent = "";
  const response = await api("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      model: await modelName(),
      video_id: video.id,
      messages: [{ role: "user", content: question }],
      stream: true,
      include_kept_visual: true,
    }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", figures = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.tokenreel) figures = chunk.tokenreel;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer.textContent += delta.content;
          answer.dataset.chunks = String(Number(answer.dataset.chunks) + 1);
        }
      }
    }
  }
  answer.dataset.done = "true";
  if (figures) showAnswerFigures(figures, video);
}

function showAnswerFigures(figures, video) {
  const t = figures.tokens, flops = figures.flops, s = figures.timings;
  const rows = {
    "visual tokens": `${t.original_visual} in the video \u2192 ${t.visual_in} into the LLM \u2192 ` +
      `${t.visual_after_merge} after layer ${figures.merge.layer}`,
    "prompt / generated tokens": `${t.prompt} / ${t.completion}`,
    "FLOPs ratio": `${(100 * flops.ratio_visual_only).toFixed(2)} % (visual only), ` +
      `${(100 * flops.ratio_with_text).toFixed(2)} % (with text)`,
    timings: `queue ${s.queue_s.toFixed(3)} s, load ${s.load_s.toFixed(3)} s, ` +
      `prefill ${s.prefill_s.toFixed(3)} s, decode ${s.decode_s.toFixed(3)} s, ` +
      `total ${s.total_s.toFixed(3)} s`,
  };
  const body = $("answer-figures").tBodies[0];
  body.replaceChildren();
  for (const [name, value] of Object.entries(rows)) {
    const row = document.createElement("tr");
    row.append(text("th", name), text("td", value));
    body.append(row);
  }
  $("answer-figures").hidden = false;
  video.kept = figures.kept_visual || null;
  if (video !== currentVideo) return;
  $("fig-s2-block").hidden = video.kept === null;
  if (video.kept) drawKeptAtLayerK($("fig-s2"), video.view, video.strip, video.kept);
}

// -- runs ---------------------------------------------------------------------------------------

async function showRuns() {
  show("runs-view");
  const runs = await getJson("/v1/runs?limit=50");
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const run of runs.data) {
    const row = document.createElement("tr");
    row.dataset.runId = run.run_id;
    const settings = Object.entries(run.settings)
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    const cells = [
      run.run_id.slice(0, 12), text("span", run.state, `status status-${run.state}`),
      run.started_at.slice(0, 19).replace("T", " "),
      run.finished_at ? run.finished_at.slice(0, 19).replace("T", " ") : "-",
      run.counts.indexed || 0, run.counts.failed || 0, settings,
    ];
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      row.append(td);
    }
    body.append(row);
  }
}

// -- routing and start-up -------------------------------------------------------------------------

async function route() {
  $("error").textContent = "";
  const hash = location.hash || "#/library";
  try {
    if (hash.startsWith("#/video/")) await showVideo(decodeURIComponent(hash.slice(8)));
    else if (hash === "#/runs") await showRuns();
    else await showLibrary();
    document.body.dataset.ready = hash;
  } catch (error) {
    reportError(error);
  }
}

async function start() {
  // One call that needs the key (when the service has one) tells whether we may go on.
  try {
    const probe = await api("/v1/runs?limit=1");
    if (!probe.ok) throw new Error(`the service answered ${probe.status}`);
  } catch (error) {
    reportError(error);
    return;
  }
  route();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  start();
});
$("forget-key").addEventListener("click", () => { forgetKey(); showKeyPrompt(""); });
$("search").addEventListener("change", () => {
  library.search = $("search").value.trim();
  library.offset = 0;
  showLibrary().catch(reportError);
});
$("status-filter").addEventListener("change", () => {
  library.status = $("status-filter").value;
  library.offset = 0;
  showLibrary().catch(reportError);
});
$("prev-page").addEventListener("click", () => {
  library.offset = Math.max(0, library.offset - PAGE_SIZE);
  showLibrary().catch(reportError);
});
$("next-page").addEventListener("click", () => {
  library.offset += PAGE_SIZE;
  showLibrary().catch(reportError);
});
$("prev-frames").addEventListener("click", () => {
  const video = currentVideo;
  if (video) showFrames(video, Math.max(0, video.view.frame_start - FRAME_PAGE)).catch(reportError);
});
$("next-frames").addEventListener("click", () => {
  const video = currentVideo;
  if (video) showFrames(video, video.view.frame_start + video.view.frame_count).catch(reportError);
});
$("ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (currentVideo && question) {
    ask(question).catch((error) => {
      if (!(error instanceof AuthError)) $("ask-error").textContent = String(error.message);
    });
  }
});
window.addEventListener("hashchange", route);
start();
