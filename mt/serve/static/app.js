// The mt serve page: translate as you type, alternatives, cross-attention heatmap.
// Every text from the user or the model goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], seq: 0, attention: null, keyRequired: false };

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function post(path, body) {
  if (state.keyRequired) body.api_key = $("api-key").value;
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function model() { return state.models[Number($("pair").value)]; }

async function init() {
  const [models, settings] = await Promise.all([
    fetch("mt/models").then((r) => r.json()), fetch("frontend/settings").then((r) => r.json()),
  ]);
  state.models = models;
  state.keyRequired = settings.keyRequired;
  $("key-box").hidden = !settings.keyRequired;
  if (settings.charLimit > 0) $("source").maxLength = settings.charLimit;
  models.forEach((m, i) => $("pair").append(el("option", `${m.source} → ${m.target}`, { value: String(i) })));
  $("pair").addEventListener("change", () => { fillPickers(); schedule(0); });
  fillPickers();
  let timer = null;
  function schedule(delay) { clearTimeout(timer); timer = setTimeout(translate, delay); }
  $("source").addEventListener("input", () => { $("count").textContent = String($("source").value.length); schedule(300); });
  for (const id of ["layer", "head"]) $(id).addEventListener("change", render);
  $("sentence").addEventListener("change", () => attention(state.seq));
  document.body.dataset.state = "idle";
}

function fillPickers() {
  const m = model();
  for (const [id, n] of [["layer", m.layers], ["head", m.heads]]) {
    const select = $(id);
    select.replaceChildren(el("option", "mean of all", { value: "" }));
    for (let i = 1; i <= n; i++) select.append(el("option", String(i), { value: String(i - 1) }));
  }
  $("source").lang = m.source;
  $("target").lang = m.target;
}

async function translate() {
  const seq = ++state.seq;
  const q = $("source").value;
  const m = model();
  document.body.dataset.state = "busy";
  if (!q.trim()) {
    $("target").textContent = "";
    $("alternatives-box").hidden = true;
    clearAttention();
    $("status").textContent = "";
    document.body.dataset.state = "idle";
    return;
  }
  $("status").textContent = "translating…";
  try {
    const wanted = Math.min(3, m.beamSize - 1);
    const data = await post("translate", { q, source: m.source, target: m.target, format: "text", alternatives: wanted });
    if (seq !== state.seq) return; // a newer request is under way
    $("target").textContent = data.translatedText;
    const alternatives = data.alternatives || [];
    $("alternatives").replaceChildren(...alternatives.map((a) => el("li", a)));
    $("alternatives-box").hidden = alternatives.length === 0;
    $("status").textContent = "";
    await attention(seq);
  } catch (error) {
    if (seq !== state.seq) return;
    $("status").textContent = `error: ${error.message}`;
    document.body.dataset.state = "error";
  }
}

async function attention(seq) {
  const m = model();
  const index = $("sentence-box").hidden ? 0 : Number($("sentence").value || 0);
  const data = await post("mt/attention", { q: $("source").value, source: m.source, target: m.target, sentence: index });
  if (seq !== state.seq) return;
  state.attention = data;
  const select = $("sentence");
  if (select.options.length !== data.sentences) {
    select.replaceChildren();
    for (let i = 0; i < data.sentences; i++) select.append(el("option", String(i + 1), { value: String(i) }));
  }
  select.value = String(data.sentence);
  $("sentence-box").hidden = data.sentences < 2;
  $("attention-note").textContent = data.note || "";  // e.g. drawn by torch for a CTranslate2 model
  $("attention-note").hidden = !data.note;
  render();
  document.body.dataset.source = data.text === undefined ? "" : $("source").value;
  document.body.dataset.state = "ready";
}

function clearAttention() {
  state.attention = null;
  $("source-pieces").replaceChildren();
  $("target-pieces").replaceChildren();
  $("heatmap").replaceChildren();
}

// The (target x source) matrix for the chosen layer and head; "" = the mean over them.
function matrix() {
  const w = state.attention.weights; // [layer][head][t][s]
  const layers = $("layer").value === "" ? w.map((_, i) => i) : [Number($("layer").value)];
  const heads = $("head").value === "" ? w[0].map((_, i) => i) : [Number($("head").value)];
  const T = state.attention.target.length, S = state.attention.source.length;
  const out = Array.from({ length: T }, () => new Array(S).fill(0));
  for (const l of layers) for (const h of heads) for (let t = 0; t < T; t++) for (let s = 0; s < S; s++) {
    out[t][s] += w[l][h][t][s] / (layers.length * heads.length);
  }
  return out;
}

function render() {
  if (!state.attention || !state.attention.weights.length) return clearAttention();
  const { source, target } = state.attention;
  const w = matrix();
  state.matrix = w;
  $("source-pieces").replaceChildren(...source.map((p, j) => el("span", p, { class: "piece", role: "listitem", "data-s": String(j) })));
  const targets = target.map((p, t) => {
    const span = el("span", p, { class: "piece", role: "listitem", tabindex: "0", "data-t": String(t) });
    span.addEventListener("mouseenter", () => highlight(t));
    span.addEventListener("focus", () => highlight(t));
    span.addEventListener("mouseleave", () => highlight(-1));
    span.addEventListener("blur", () => highlight(-1));
    span.addEventListener("keydown", (e) => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      const next = span.parentNode.children[t + step];
      if (step && next) { e.preventDefault(); next.focus(); }
    });
    return span;
  });
  $("target-pieces").replaceChildren(...targets);
  const head = el("tr");
  head.append(el("th", ""), ...source.map((p) => el("th", p, { scope: "col" })));
  const rows = target.map((p, t) => {
    const tr = el("tr", undefined, { "data-t": String(t) });
    tr.append(el("th", p, { scope: "row" }));
    for (let s = 0; s < source.length; s++) {
      const td = el("td", undefined, { title: `${p} → ${source[s]}: ${w[t][s].toFixed(3)}` });
      td.style.setProperty("--w", w[t][s].toFixed(3));
      tr.append(td);
    }
    tr.addEventListener("mouseenter", () => highlight(t));
    tr.addEventListener("mouseleave", () => highlight(-1));
    return tr;
  });
  const thead = el("thead"), tbody = el("tbody");
  thead.append(head);
  tbody.append(...rows);
  $("heatmap").replaceChildren(thead, tbody);
}

// Target piece t: its row of weights shades the source pieces; those with at least half of
// the row's largest weight are marked "looked" (t = -1 clears).
function highlight(t) {
  const sources = $("source-pieces").children;
  const row = t >= 0 ? state.matrix[t] : null;
  const top = row ? Math.max(...row) : 0;
  for (let s = 0; s < sources.length; s++) {
    const w = row ? row[s] / (top || 1) : 0;
    sources[s].style.setProperty("--w", w.toFixed(3));
    sources[s].classList.toggle("looked", row !== null && w >= 0.5);
  }
  for (const node of $("target-pieces").children) node.classList.toggle("active", Number(node.dataset.t) === t);
  for (const tr of $("heatmap").querySelectorAll("tbody tr")) tr.classList.toggle("active", Number(tr.dataset.t) === t);
}

init().catch((error) => { $("status").textContent = `error: ${error.message}`; });
