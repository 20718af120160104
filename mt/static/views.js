// The two attention views. Each is made once and redrawn with new data; `focus(side, index)`
// highlights one token (side "row": a query token, "col": a key token), or nothing (null).
import { colour, textColour } from "./attention.js";

const SVG = "http://www.w3.org/2000/svg";
const ROW_HEIGHT = 24;

function svgElement(name, attributes, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// Tokens in two columns (queries left, keys right) and a line per pair whose opacity is the
// weight, as in bertviz's head view. Hover or focus a token to see only its lines.
export function createLinesView(svg, onFocus) {
  let matrix = [], tokens = { row: [], col: [] }, lines = [];

  function draw(rows, cols, weights, names) {
    matrix = weights;
    svg.replaceChildren();
    const width = Math.max(svg.parentElement.clientWidth - 4, 320), column = Math.min(150, width * 0.33);
    const height = Math.max(rows.length, cols.length) * ROW_HEIGHT + 34;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svgElement("text", { x: column - 6, y: 14, "text-anchor": "end", class: "heading" }, svg).textContent = names.rowName;
    svgElement("text", { x: width - column + 6, y: 14, class: "heading" }, svg).textContent = names.colName;
    const y = (k) => 34 + k * ROW_HEIGHT + ROW_HEIGHT / 2;
    const linesGroup = svgElement("g", { class: "links" }, svg);
    lines = rows.map((_, r) => cols.map((_, c) => svgElement("line", {
      x1: column, y1: y(r), x2: width - column, y2: y(c), "stroke-opacity": weights[r][c].toFixed(3),
    }, linesGroup)));
    tokens = {
      row: rows.map((text, k) => token("row", k, text, column - 6, y(k), "end", column - 6)),
      col: cols.map((text, k) => token("col", k, text, width - column + 6, y(k), "start", column - 6)),
    };
  }

  function token(side, index, text, x, y, anchor, boxWidth) {
    const g = svgElement("g", { class: `token ${side}`, tabindex: 0, role: "button", "data-index": index,
      "aria-label": `${side === "row" ? "query" : "key"} token ${index}: ${text}` }, svg);
    const left = anchor === "end" ? x - boxWidth + 2 : x - 4;
    svgElement("rect", { x: left, y: y - ROW_HEIGHT / 2 + 2, width: boxWidth, height: ROW_HEIGHT - 4, rx: 4 }, g);
    svgElement("text", { x, y: y + 5, "text-anchor": anchor }, g).textContent = text;
    g.addEventListener("mouseenter", () => onFocus(side, index));
    g.addEventListener("mouseleave", () => onFocus(null));
    g.addEventListener("focus", () => onFocus(side, index));
    g.addEventListener("blur", () => onFocus(null));
    g.addEventListener("keydown", (event) => move(event, side, index));
    return g;
  }

  function move(event, side, index) {
    const other = side === "row" ? "col" : "row";
    const target = {
      ArrowDown: [side, index + 1], ArrowUp: [side, index - 1],
      ArrowRight: [other, index], ArrowLeft: [other, index],
    }[event.key];
    if (event.key === "Escape") event.target.blur();
    if (!target) return;
    event.preventDefault();
    const list = tokens[target[0]];
    list[Math.min(Math.max(target[1], 0), list.length - 1)].focus();
  }

  function focus(side, index) {
    svg.classList.toggle("focused", side !== null);
    for (const s of ["row", "col"]) {
      tokens[s].forEach((g, k) => {
        g.classList.toggle("active", s === side && k === index);
        // the other column's tokens are shaded by how much of the focused token's attention they share
        const w = side === null || s === side ? 0 : (side === "row" ? matrix[index][k] : matrix[k][index]);
        g.querySelector("rect").style.fillOpacity = w.toFixed(3);
      });
    }
    lines.forEach((row, r) => row.forEach((line, c) => {
      const on = side === null || (side === "row" ? r === index : c === index);
      line.classList.toggle("on", on && side !== null);
      line.style.display = on ? "" : "none";
    }));
  }

  return { draw, focus };
}

// One table per (layer, head), cells coloured by weight; a grid of small tables for many panels.
export function createHeatmapView(container, readout) {
  let cells = [];

  function draw(rows, cols, shown, aligned) {
    container.replaceChildren();
    container.style.gridTemplateColumns = `repeat(${shown.columns}, max-content)`;
    const small = shown.panels.length > 1;
    container.classList.toggle("grid", small);
    cells = shown.panels.map((panel) => table(rows, cols, panel, aligned, small));
  }

  function table(rows, cols, panel, aligned, small) {
    const figure = document.createElement("div");
    figure.className = "panel";
    const title = document.createElement("div");
    title.className = "panel-title";
    title.textContent = panel.title;
    const t = document.createElement("table");
    t.className = small ? "heatmap small" : "heatmap";
    t.setAttribute("aria-label", `${panel.title}: ${rows.length} rows by ${cols.length} columns`);
    const head = t.createTHead().insertRow();
    head.appendChild(document.createElement("th"));
    cols.forEach((text) => { const th = document.createElement("th"); th.className = "col"; th.textContent = small ? "" : text; head.appendChild(th); });
    const body = t.createTBody(), panelCells = [];
    rows.forEach((rowText, r) => {
      const tr = body.insertRow();
      const th = document.createElement("th");
      th.className = "row";
      th.textContent = small ? "" : rowText;
      tr.appendChild(th);
      panelCells.push(cols.map((colText, c) => cell(tr, panel, r, c, rowText, colText, aligned.has(`${r},${c}`), small)));
    });
    figure.append(title, t);
    container.appendChild(figure);
    return panelCells;
  }

  function cell(tr, panel, r, c, rowText, colText, isAligned, small) {
    const w = panel.matrix[r][c], td = tr.insertCell();
    td.className = isAligned ? "cell aligned" : "cell";
    td.style.background = colour(w);
    td.style.color = textColour(w);
    const text = `${rowText} → ${colText}: ${w.toFixed(3)} (${panel.title})${isAligned ? ", aligned words" : ""}`;
    td.title = text;
    if (!small) td.textContent = w >= 0.1 ? w.toFixed(1).replace(/^0/, "") : "";
    td.addEventListener("mouseenter", () => { readout.textContent = text; });
    return td;
  }

  function focus(side, index) {
    for (const panelCells of cells) {
      panelCells.forEach((row, r) => row.forEach((td, c) => {
        const on = side !== null && (side === "row" ? r === index : c === index);
        td.classList.toggle("focus", on);
        td.classList.toggle("dim", side !== null && !on);
      }));
    }
    container.querySelectorAll("table").forEach((t) => {
      t.querySelectorAll("th.row").forEach((th, r) => th.classList.toggle("focus", side === "row" && r === index));
      t.querySelectorAll("th.col").forEach((th, c) => th.classList.toggle("focus", side === "col" && c === index));
    });
  }

  return { draw, focus };
}
