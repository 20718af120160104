// The page: type a sentence, get its translation from POST /v1/translate, see its attention.
import { KINDS, alignedCells, alignedWords, counts, labels, mean, panels } from "./attention.js";
import { createHeatmapView, createLinesView } from "./views.js";

const $ = (id) => document.getElementById(id);
const PAUSE_MS = 600; // translate when typing pauses this long

const state = { info: null, result: null, sent: 0, timer: null };
const linesView = createLinesView($("lines"), focus);
const heatmapView = createHeatmapView($("heatmaps"), $("readout"));

function focus(side = null, index = null) {
  linesView.focus(side, index);
  heatmapView.focus(side, index);
}

async function loadInfo() {
  const response = await fetch("/v1/info");
  const info = await response.json();
  state.info = info;
  const m = info.model;
  $("languages").textContent = `${info.source_language} → ${info.target_language}`;
  $("source-language").textContent = `(${info.source_language})`;
  $("target-language").textContent = `(${info.target_language})`;
  $("model-info").textContent = `${info.checkpoint.file}, step ${info.checkpoint.step}: ` +
    `${m.encoder_layers}+${m.decoder_layers} layers, d_model ${m.d_model}, ${m.heads} heads, on ${info.device}`;
  $("beam").value = info.decoding.beam;
  $("beam").max = info.limits.max_beam;
  fillSelects(m.decoder_layers, m.heads);
}

function option(select, value, text, selected = false) {
  const o = new Option(text, value, selected, selected);
  select.add(o);
}

// layers counted from 0, the last chosen by default (as `mt attention`); heads: the mean by default
function fillSelects(layers, heads) {
  const layer = $("layer"), head = $("head");
  const keepLayer = layer.value, keepHead = head.value;
  layer.replaceChildren();
  for (let l = 0; l < layers; l++) option(layer, l, `${l}`, l === layers - 1);
  option(layer, "all", "all");
  if (keepLayer && [...layer.options].some((o) => o.value === keepLayer)) layer.value = keepLayer;
  if (head.options.length) return;
  option(head, "mean", "mean of heads", true);
  for (let h = 0; h < heads; h++) option(head, h, `${h}`);
  option(head, "all", "all (grid)");
  if (keepHead) head.value = keepHead;
}

async function translate() {
  clearTimeout(state.timer);
  const text = $("source").value;
  if (!text.trim()) { show(null); return; }
  const id = ++state.sent;
  $("status").textContent = "translating…";
  try {
    const response = await fetch("/v1/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: [text], beam: Number($("beam").value) || undefined, alignments: true, attention: true }),
    });
    const body = await response.json();
    if (id !== state.sent) return; // a newer request was sent meanwhile
    if (!response.ok) { $("status").textContent = `error: ${body.error}`; return; }
    $("status").textContent = "";
    show(body.results[0]);
  } catch (error) {
    if (id === state.sent) $("status").textContent = `no answer from the server (${error.message})`;
  }
}

function show(result) {
  state.result = result;
  $("translation").textContent = result ? result.translation : "";
  if (!result || !result.attention) {
    $("details").textContent = "";
    $("lines").replaceChildren();
    $("heatmaps").replaceChildren();
    return;
  }
  const pairs = alignedWords(result.attention, result.alignments).map(([s, t]) => `${s}→${t}`);
  $("details").textContent = `score ${result.score.toFixed(3)} · alignments: ${pairs.join("  ") || "none"}`;
  draw();
}

function draw() {
  const result = state.result;
  if (!result || !result.attention) return;
  const att = result.attention, kind = $("kind").value;
  const { layers, heads } = counts(att, kind);
  fillSelects(layers, heads);
  const { rows, cols } = labels(att, kind);
  const shown = panels(att, kind, $("layer").value, $("head").value);
  const aligned = kind === "cross" ? alignedCells(att, result.alignments) : new Set();
  const names = KINDS[kind];
  const single = shown.panels.length === 1;
  linesView.draw(rows, cols, single ? shown.panels[0].matrix : mean(shown.panels.map((p) => p.matrix)), names);
  $("lines-caption").textContent = `${kind} attention, ${single ? shown.panels[0].title : "mean of the panels shown"}: ` +
    `${names.rowName} (left) looks at ${names.colName} (right)`;
  heatmapView.draw(rows, cols, shown, aligned);
  $("heatmap-caption").textContent = `${names.rowName} down, ${names.colName} across` +
    (single ? "" : `: ${shown.panels.length} panels, layers down, heads across`);
}

$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter") { event.preventDefault(); translate(); }
});
$("source").addEventListener("input", () => {
  clearTimeout(state.timer);
  state.timer = setTimeout(translate, PAUSE_MS);
});
$("beam").addEventListener("change", translate);
for (const id of ["kind", "layer", "head"]) $(id).addEventListener("change", draw);
window.addEventListener("resize", draw);

loadInfo().catch((error) => { $("model-info").textContent = `cannot reach the server: ${error.message}`; });
