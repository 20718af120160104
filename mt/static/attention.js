// Which attention weights to show, from the API's `attention` object: pure functions, no DOM.
// Weights are laid out as `mt attention --json` writes them: attention[kind][layer][head][query][key].

// rows are the queries (who looks), columns the keys (what is looked at)
export const KINDS = {
  cross: { rows: "target_tokens", cols: "source_tokens", rowName: "output", colName: "source" },
  encoder: { rows: "source_tokens", cols: "source_tokens", rowName: "source", colName: "source" },
  decoder: { rows: "target_tokens", cols: "decoder_input_tokens", rowName: "output", colName: "decoder input" },
};

export function labels(att, kind) {
  return { rows: att[KINDS[kind].rows], cols: att[KINDS[kind].cols] };
}

export function counts(att, kind) {
  const layers = att.attention[kind];
  return { layers: layers.length, heads: layers[0].length };
}

// layer: a number or "all"; head: a number, "mean" or "all". One panel per (layer, head) shown,
// layers down and heads across.
export function panels(att, kind, layer, head) {
  const { layers, heads } = counts(att, kind);
  const layerList = layer === "all" ? [...Array(layers).keys()] : [Number(layer)];
  const headList = head === "all" ? [...Array(heads).keys()] : [head === "mean" ? "mean" : Number(head)];
  const out = [];
  for (const l of layerList) {
    for (const h of headList) {
      const perHead = att.attention[kind][l];
      out.push({
        layer: l, head: h,
        title: `layer ${l}, ${h === "mean" ? "mean of heads" : `head ${h}`}`,
        matrix: h === "mean" ? mean(perHead) : perHead[h],
      });
    }
  }
  return { panels: out, columns: headList.length };
}

export function mean(matrices) {
  const rows = matrices[0].length, cols = matrices[0][0].length;
  const out = Array.from({ length: rows }, () => new Array(cols).fill(0));
  for (const m of matrices) {
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r][c] += m[r][c] / matrices.length;
  }
  return out;
}

// SentencePiece: a piece starting with '▁' starts a word; the first piece always does.
export function wordIds(pieces) {
  let word = -1;
  return pieces.map((p, k) => (k === 0 || p.startsWith("\u2581") ? ++word : word));
}

export function words(pieces) {
  const ids = wordIds(pieces), out = [];
  pieces.forEach((p, k) => { out[ids[k]] = (out[ids[k]] || "") + p; });
  return out.map((w) => w.replace(/\u2581/g, " ").trim());
}

// Alignments are word pairs [source word, target word]; mark every cross-attention cell
// (target piece, source piece) whose words are aligned. The final </s> tokens belong to no word.
export function alignedCells(att, alignments) {
  const src = wordIds(att.source_tokens.slice(0, -1)), trg = wordIds(att.target_tokens.slice(0, -1));
  const pairs = new Set((alignments || []).map(([i, j]) => `${i},${j}`));
  const cells = new Set();
  trg.forEach((j, r) => src.forEach((i, c) => { if (pairs.has(`${i},${j}`)) cells.add(`${r},${c}`); }));
  return cells;
}

export function alignedWords(att, alignments) {
  const src = words(att.source_tokens.slice(0, -1)), trg = words(att.target_tokens.slice(0, -1));
  return (alignments || []).map(([i, j]) => [src[i], trg[j]]);
}

// viridis: dark purple (0) to yellow (1), readable for colour-blind eyes and in grey
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];

export function colour(value) {
  const x = Math.min(Math.max(value, 0), 1) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(x), VIRIDIS.length - 2), t = x - k;
  const [a, b] = [VIRIDIS[k], VIRIDIS[k + 1]];
  return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(",")})`;
}

export function textColour(value) {
  return value > 0.6 ? "#111" : "#fff";
}
