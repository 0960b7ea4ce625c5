/* The explorer page: model selector, observation sliders, live pairplot, cards, CSV export.
 * Talks only to this server's /api endpoints; nothing is fetched from elsewhere. */
"use strict";

const state = { info: null, samples: null, shownX: null, controller: null, timer: null,
                updates: 0, inputs: [], retries: 0 };
const $ = id => document.getElementById(id);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind || "idle";
}

async function api(path, body, signal) {
  const opts = body === undefined ? { signal } : {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), signal };
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const d = data.detail;
    const err = new Error(typeof d === "string" ? d : JSON.stringify(d || resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function flatten(v) { return Array.isArray(v) ? v.flatMap(flatten) : [v]; }

function reshape(flat, shape) {
  if (shape.length === 0) return flat[0];
  if (shape.length === 1) return flat.slice();
  const step = flat.length / shape[0], out = [];
  for (let i = 0; i < shape[0]; i++) out.push(reshape(flat.slice(i * step, (i + 1) * step), shape.slice(1)));
  return out;
}

function indexLabel(i, shape) {
  if (shape.length <= 1) return `x[${i}]`;
  const idx = [];
  for (let k = shape.length - 1; k >= 0; k--) { idx.unshift(i % shape[k]); i = Math.floor(i / shape[k]); }
  return `x[${idx.join(",")}]`;
}

function buildInputs(info) {
  const box = $("inputs");
  box.replaceChildren();
  state.inputs = [];
  const size = info.x_shape.reduce((a, b) => a * b, 1);
  const range = info.x_range;
  const lo = range ? flatten(range.min) : new Array(size).fill(-3);
  const hi = range ? flatten(range.max) : new Array(size).fill(3);
  const focus = info.focus ? flatten(info.focus.x_o) : null;  // ABC / sequential: its x_o
  const def = focus && focus.length === size ? focus
    : range ? flatten(range.default) : new Array(size).fill(0);
  for (let i = 0; i < size; i++) {
    const row = document.createElement("div");
    row.className = "obs";
    const label = document.createElement("span");
    label.textContent = indexLabel(i, info.x_shape);
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", min: Math.min(lo[i], def[i]), max: Math.max(hi[i], def[i]), step: (hi[i] - lo[i]) / 200 || 0.01,
                            value: def[i] });
    slider.setAttribute("aria-label", label.textContent);
    const number = document.createElement("input");
    // full precision for a focus x_o: an ABC posterior answers exactly that observation
    Object.assign(number, { type: "number", step: "any", value: focus ? def[i] : +(+def[i]).toPrecision(5) });
    slider.addEventListener("input", () => { number.value = +(+slider.value).toPrecision(5); schedule(); });
    number.addEventListener("input", () => { if (number.value !== "") { slider.value = number.value; schedule(); } });
    row.append(label, slider, number);
    box.append(row);
    state.inputs.push({ slider, number, def: def[i] });
  }
}

function currentX() {
  return reshape(state.inputs.map(p => Number(p.number.value)), state.info.x_shape);
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(update, 60);
}

async function update() {
  if (!state.info) return;
  if (state.controller) state.controller.abort();  // a newer observation wins
  const controller = new AbortController();
  state.controller = controller;
  const seedText = $("seed").value.trim();
  const wanted = Math.max(1, Math.round(Number($("num").value) || 1000));
  const body = { x: currentX(), n: Math.min(wanted, state.info.max_samples || wanted),
                 seed: seedText === "" ? null : Number(seedText) };
  setStatus("sampling…", "loading");
  try {
    const t0 = performance.now();
    const data = await api(`api/models/${encodeURIComponent(state.info.name)}/sample`, body,
                           controller.signal);
    if (controller !== state.controller) return;
    state.samples = data.samples;
    state.shownX = body.x;
    state.updates += 1;
    state.retries = 0;
    render();
    renderSampling(data.mcmc, data.warnings || []);
    renderMisspecification(data.misspecification || null);
    setStatus(`${data.samples.length} samples in ${Math.round(performance.now() - t0)} ms`, "idle");
  } catch (err) {
    if (err.name === "AbortError") return;
    if (err.status === 503 && state.retries < 3) {  // busy server: try again shortly
      state.retries += 1;
      setStatus(`${err.message} (retry ${state.retries} of 3 in 1 s)`, "loading");
      clearTimeout(state.timer);
      state.timer = setTimeout(update, 1000);
      return;
    }
    state.retries = 0;
    setStatus(err.message, "error");
  }
}

/* Badge on the observation panel: do the detector's tests find the observation unlike the
   training simulations? (docs/trust.md) Hidden when the model has no detector. */
function renderMisspecification(m) {
  const box = $("misspecification");
  box.replaceChildren();
  box.hidden = !m;
  box.dataset.verdict = m ? m.verdict : "";
  if (!m) return;
  const badge = document.createElement("span");
  badge.id = "misspecification-badge";
  const bad = m.verdict === "misspecified";
  badge.className = bad ? "badge bad" : "badge ok";
  const fmt = v => (+v).toPrecision(2);
  badge.textContent = (bad ? "Unlike the training simulations" : "Like the training simulations") +
                      ` (density p ${fmt(m.density_p)} · MMD p ${fmt(m.mmd_p)})`;
  badge.title = `Misspecification tests at level ${m.alpha} (Bonferroni over the two tests). ` +
                (bad ? "The posterior for this observation cannot be trusted." :
                       "No rejection does not prove the simulator right.");
  box.append(badge);
}

/* MCMC diagnostics (R-hat, ESS) and the server's warnings about the shown samples. */
function renderSampling(mcmc, warnings) {
  const box = $("sampling");
  box.replaceChildren();
  box.dataset.warnings = String(warnings.length);
  box.dataset.maxRhat = mcmc && mcmc.max_rhat !== null ? String(mcmc.max_rhat) : "";
  box.dataset.minEss = mcmc && mcmc.min_ess !== null ? String(mcmc.min_ess) : "";
  box.hidden = !mcmc && !warnings.length;
  if (mcmc) {
    const badge = document.createElement("span");
    badge.id = "mcmc-badge";
    badge.className = warnings.length ? "badge bad" : "badge ok";
    const fmt = v => v === null ? "n/a" : (+v).toPrecision(3);
    badge.textContent = `MCMC (${mcmc.method}, ${mcmc.num_chains} chains): ` +
                        `max R-hat ${fmt(mcmc.max_rhat)} · min ESS ${fmt(mcmc.min_ess)}`;
    badge.title = "R-hat near 1 (below about 1.1) means the chains agree; ESS is the number of " +
                  "effectively independent draws";
    box.append(badge);
  }
  if (warnings.length) {
    const list = document.createElement("ul");
    list.id = "warnings";
    for (const w of warnings) {
      const li = document.createElement("li");
      li.textContent = w;
      list.append(li);
    }
    box.append(list);
  }
}

function hashSamples(samples) {
  let h = 0x811c9dc5;
  const text = samples.map(r => r.join(",")).join(";");
  for (let i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 0x01000193); }
  return (h >>> 0).toString(16);
}

function render() {
  const info = state.info, samples = state.samples, canvas = $("pairplot");
  drawPairplot(canvas, samples, info.param_names, info.prior, 10);
  canvas.dataset.sampleCount = String(samples.length);
  canvas.dataset.sampleHash = hashSamples(samples);
  canvas.dataset.updates = String(state.updates);
  canvas.dataset.x = JSON.stringify(state.shownX);
  $("download").disabled = false;
  renderSummary(info.param_names, samples);
}

function renderSummary(names, samples) {
  const n = samples.length, rows = [["parameter", "mean", "std", "5%", "95%"]];
  names.forEach((name, j) => {
    const col = samples.map(s => s[j]).sort((a, b) => a - b);
    const mean = col.reduce((a, b) => a + b, 0) / n;
    const std = Math.sqrt(col.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, n - 1));
    const q = p => col[Math.min(n - 1, Math.floor(p * n))];
    rows.push([name, mean, std, q(0.05), q(0.95)].map(v => typeof v === "number" ? v.toPrecision(3) : v));
  });
  $("summary").replaceChildren(...rows.map((r, i) => {
    const tr = document.createElement("tr");
    r.forEach(v => { const c = document.createElement(i ? "td" : "th"); c.textContent = v; tr.append(c); });
    return tr;
  }));
}

function valueNode(v) {
  if (v === null) return document.createTextNode("—");
  if (Array.isArray(v)) {
    const flat = flatten(v), shown = flat.slice(0, 8).map(x => typeof x === "number" ? +x.toPrecision(4)
      : x === null ? "—" : x);
    return document.createTextNode(`[${shown.join(", ")}${flat.length > 8 ? `, … (${flat.length})` : ""}]`);
  }
  if (typeof v === "object") return table(v);
  return document.createTextNode(typeof v === "number" ? String(+v.toPrecision(5)) : String(v));
}

function table(obj) {
  const t = document.createElement("table");
  for (const [k, v] of Object.entries(obj)) {
    const tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    th.textContent = k;
    td.append(valueNode(v));
    tr.append(th, td);
    t.append(tr);
  }
  return t;
}

function renderCards(info) {
  // the server sends an unbounded side of the prior as null
  const bound = (values, inf) => values.map(v => v === null ? inf : v);
  $("model-card").replaceChildren(table({
    problem: info.problem, method: info.method_label || info.method, parameters: info.param_names.join(", "),
    "prior low": bound(info.prior.low, "-∞"), "prior high": bound(info.prior.high, "∞"),
    "x shape": info.x_shape,
    training: info.history }));
  const diag = info.diagnostics || {};
  if (Object.keys(diag).length) $("diagnostics").replaceChildren(table(diag));
  else {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No diagnostics were saved with this model.";
    $("diagnostics").replaceChildren(p);
  }
}

async function loadModel(name) {
  setStatus("loading model…", "loading");
  try {
    state.info = await api(`api/models/${encodeURIComponent(name)}`);
  } catch (err) { setStatus(err.message, "error"); return; }
  $("num").max = state.info.max_samples;  // a server started with a smaller --max-samples:
  if (Number($("num").value) > state.info.max_samples) $("num").value = state.info.max_samples;
  buildInputs(state.info);
  renderCards(state.info);
  state.samples = null;
  await update();
}

function parseObservation(text, fileName) {
  const trimmed = text.trim();
  let values;
  if (/\.json$/i.test(fileName) || trimmed.startsWith("[") || trimmed.startsWith("{")) {
    let data = JSON.parse(trimmed);
    if (data && !Array.isArray(data) && typeof data === "object") data = data.x ?? data.observation;
    values = flatten(data ?? []).map(Number);
  } else {
    values = null;
    for (const line of trimmed.split(/\r?\n/)) {
      const cells = line.split(/[,;\t ]+/).filter(c => c !== "");
      if (cells.length && cells.every(c => c.trim() !== "" && !isNaN(Number(c)))) { values = cells.map(Number); break; }
    }
    values = values || [];
  }
  const size = state.inputs.length;
  if (values.length !== size) {
    throw new Error(`${fileName}: found ${values.length} numbers, but this model's observation has ${size} ` +
                    `(shape [${state.info.x_shape}]). Give one observation per file (CSV: first numeric row).`);
  }
  if (!values.every(Number.isFinite)) throw new Error(`${fileName}: the observation contains non-numbers or NaN.`);
  return values;
}

function setObservation(values) {
  values.forEach((v, i) => { state.inputs[i].number.value = v; state.inputs[i].slider.value = v; });
  update();
}

/* One CSV header cell: quoted when it holds a separator, quote or line break (RFC 4180), so a
   parameter name from the model file cannot add columns or rows; and, as every CSV writer of
   sbi-core does (sbi_core/display.py spreadsheet_safe), prefixed with ' when it starts with
   = + - @ tab, carriage return or ', so a spreadsheet shows it as text, never runs it as a
   formula. Only names pass here; numbers are written as they are. */
function csvText(text) {
  const s = String(text);
  return /^[=+\-@\t\r']/.test(s) ? `'${s}` : s;
}

function csvCell(text) {
  const s = csvText(text);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCSV() {
  const names = state.info.param_names;
  const lines = [names.map(csvCell).join(",")].concat(state.samples.map(r => r.join(",")));
  const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${state.info.name}_samples.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function init() {
  $("num").addEventListener("input", schedule);
  $("seed").addEventListener("input", schedule);
  $("reset").addEventListener("click", () => setObservation(state.inputs.map(p => p.def)));
  $("download").addEventListener("click", downloadCSV);
  $("model").addEventListener("change", e => loadModel(e.target.value));
  $("file").addEventListener("change", async e => {
    const file = e.target.files[0];
    if (!file) return;
    try { setObservation(parseObservation(await file.text(), file.name)); }
    catch (err) { setStatus(err.message, "error"); }
    e.target.value = "";
  });
  window.addEventListener("resize", () => { if (state.samples) render(); });
  let listing;
  try { listing = await api("api/models"); } catch (err) { setStatus(err.message, "error"); return; }
  const select = $("model");
  for (const m of listing.models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    const method = m.method_label || m.method;
    opt.textContent = m.problem ? `${m.name} (${m.problem}, ${method})` : m.name;
    select.append(opt);
  }
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && listing.models.some(m => m.name === wanted)) select.value = wanted;
  await loadModel(select.value);
}

init();
