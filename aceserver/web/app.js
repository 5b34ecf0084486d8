// aceserver web page: served models, live metrics (hand-drawn SVG), jobs with a live energy plot, and a
// calculate form.
// Talks only to this server; no external scripts, fonts or styles.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const HISTORY = 150;                      // points kept per chart (5 min at 2 s)
const history = [];                       // {t, rate, atoms, p50, p90, p99}
let previous = null;                      // the last /metrics.json snapshot
let models = [];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function headers(extra = {}) {
  const token = $("token").value.trim();
  sessionStorage.setItem("aceserver-token", token);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.blob();
  if (!r.ok) {
    const msg = body && body.message ? `${body.kind}: ${body.message}` : `HTTP ${r.status}`;
    throw new Error(msg);
  }
  return body;
}

const fmt = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(digits);

// ---- models ------------------------------------------------------------------------------------
function errorTable(errors, units) {
  // errors: {set: {metric: {config_type: {E, F, V}}}}; units: {E: "eV/atom", F: "eV/Å", V: "eV/atom"}
  const u = units || {};
  const table = el("table", { class: "fit-errors" },
    el("thead", {}, el("tr", {}, el("th", {}, "set"), el("th", {}, "metric"), el("th", {}, "config type"),
      el("th", {}, `E (${u.E || "?"})`), el("th", {}, `F (${u.F || "?"})`), el("th", {}, `V (${u.V || "?"})`))));
  const body = el("tbody");
  for (const [set, metrics] of Object.entries(errors)) {
    for (const [metric, rows] of Object.entries(metrics || {})) {
      for (const [ct, v] of Object.entries(rows || {})) {
        body.append(el("tr", {}, el("td", {}, set), el("td", {}, metric), el("td", {}, ct),
          el("td", {}, fmt(v && v.E, 5)), el("td", {}, fmt(v && v.F, 4)), el("td", {}, fmt(v && v.V, 4))));
      }
    }
  }
  table.append(body);
  return table;
}

function modelCard(m, isDefault) {
  const facts = el("dl", { class: "facts" });
  const fact = (k, v, cls) => facts.append(el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v));
  fact("species", m.species.join(", "));
  fact("cutoff", `${fmt(m.rcut, 3)} Å`);
  if (m.cutoffs && typeof m.cutoffs === "object") {       // per species pair, where the format has them
    const pairs = Array.isArray(m.cutoffs) ? m.cutoffs.map((c) => JSON.stringify(c))
      : Object.entries(m.cutoffs).map(([k, v]) => `${k}: ${typeof v === "number" ? fmt(v, 3) + " Å" : JSON.stringify(v)}`);
    fact("cutoffs", pairs.join("; "));
  }
  fact("basis size", `${m.length_basis} functions`);
  fact("format", m.format || "aceserver-model (JSON)");
  fact("sha256", m.sha256, "mono sha");
  fact("committee", m.committee_size > 0 ? `${m.committee_size} members` : "none");
  fact("active set (γ)", m.gamma_available && m.active_set
    ? Object.entries(m.active_set).map(([el, n]) => `${el}: ${n} rows`).join(", ")
    : "none (build one with aceserver activeset)");
  const card = el("div", { class: "model", "data-model": m.name },
    el("h3", {}, m.name, isDefault ? el("span", { class: "muted" }, " (default)") : ""), facts);
  if (m.fit_errors) card.append(el("div", {}, "Fit errors:"), errorTable(m.fit_errors, m.fit_error_units));
  else card.append(el("p", { class: "muted" }, "No fit errors recorded in this model file."));
  const plots = el("div", { class: "plots" });
  card.append(plots);
  loadPlots(m.name, plots);
  return card;
}

async function loadPlots(name, into) {
  try {
    const list = await api(`/v1/models/${encodeURIComponent(name)}/plots`);
    for (const file of list.plots) {           // fetched with the token header, shown from a blob
      const blob = await api(`/v1/models/${encodeURIComponent(name)}/plots/${encodeURIComponent(file)}`);
      into.append(el("img", { src: URL.createObjectURL(blob), alt: `${name} ${file}`, title: file }));
    }
  } catch (e) {
    into.append(el("p", { class: "muted" }, `parity plots unavailable (${e.message})`));
  }
}

async function loadModels() {
  try {
    const list = await api("/v1/models");
    models = list.models;
    $("models-error").hidden = true;
    $("models").replaceChildren(...models.map((m) => modelCard(m, m.name === list.default)));
    const select = $("calc-model");
    select.replaceChildren(...models.map((m) => el("option", { value: m.name }, m.name)));
    select.value = list.default;
    if (!$("calc-xyz").value) $("calc-xyz").value = exampleXYZ(models.find((m) => m.name === list.default));
  } catch (e) {
    $("models-error").textContent = `cannot list models: ${e.message}`;
    $("models-error").hidden = false;
  }
}

function exampleXYZ(m) {
  // 8-atom diamond-cubic cell of the model's first species, slightly rattled (a = 5.43 Å)
  const s = m ? m.species[0] : "Si";
  const a = 5.43;
  const frac = [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]];
  const shift = [0.03, -0.02, 0.01];
  const lines = frac.map((f, i) => `${s} ${f.map((x, k) => (a * x + (i === 0 ? shift[k] : 0)).toFixed(5)).join(" ")}`);
  return `8\nLattice="${a} 0 0 0 ${a} 0 0 0 ${a}" Properties=species:S:1:pos:R:3 pbc="T T T"\n${lines.join("\n")}\n`;
}

// ---- live metrics ------------------------------------------------------------------------------
function drawLines(svg, series, unit) {
  const w = svg.clientWidth || 300, h = svg.clientHeight || 150, left = 44, bottom = 16, top = 8;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const ymax = Math.max(1, ...all) * 1.1;
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => left + (w - left - 4) * i / (n - 1);
  const y = (v) => top + (h - top - bottom) * (1 - v / ymax);
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const parts = [node("line", { x1: left, y1: y(0), x2: w - 4, y2: y(0), stroke: "#ccd" })];
  for (const frac of [0.5, 1]) {
    const v = ymax / 1.1 * frac;
    parts.push(node("text", { x: 2, y: y(v) + 3 }, `${v >= 100 ? v.toFixed(0) : v.toPrecision(2)} ${unit}`));
  }
  parts.push(node("text", { x: left, y: h - 3 }, `last ${Math.round(n * POLL_MS / 1000)} s`));
  for (const s of series) {
    const pts = s.values.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    if (pts.length) parts.push(node("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.5 }));
  }
  svg.replaceChildren(...parts);
}

function drawBars(svg, counts) {
  const w = svg.clientWidth || 300, h = svg.clientHeight || 150;
  const ns = "http://www.w3.org/2000/svg";
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 6);
  const max = Math.max(1, ...entries.map((e) => e[1]));
  svg.style.height = `${Math.max(40, 12 + entries.length * 22)}px`;
  const parts = [];
  if (!entries.length) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 8); t.setAttribute("y", 20); t.textContent = "no errors";
    parts.push(t);
  }
  entries.forEach(([kind, n], i) => {
    const yy = 8 + i * 22;
    const bar = document.createElementNS(ns, "rect");
    Object.entries({ x: 110, y: yy, width: Math.max(1, (w - 160) * n / max), height: 16, fill: "#b3261e" })
      .forEach(([k, v]) => bar.setAttribute(k, v));
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 4); label.setAttribute("y", yy + 12); label.textContent = kind;
    const value = document.createElementNS(ns, "text");
    value.setAttribute("x", 114 + (w - 160) * n / max); value.setAttribute("y", yy + 12); value.textContent = String(n);
    parts.push(bar, label, value);
  });
  svg.replaceChildren(...parts);
}

async function poll() {
  try {
    const r = await fetch("/metrics.json", { headers: headers() });   // behind the token, when there is one
    if (r.status === 401) {
      $("status").textContent = "token needed";
      $("status").className = "badge down";
      return;
    }
    const snap = await r.json();
    $("status").textContent = snap.ready ? "ready" : "starting";
    $("status").className = "badge " + (snap.ready ? "ready" : "");
    $("uptime").textContent = `up ${Math.round(snap.uptime_s)} s`;
    if (previous) {
      const dt = Math.max(1e-3, snap.time - previous.time);
      history.push({
        rate: (snap.calculate_requests - previous.calculate_requests) / dt,
        atoms: (snap.atoms - previous.atoms) / dt,
        p50: snap.latency_ms.p50 ?? null, p90: snap.latency_ms.p90 ?? null, p99: snap.latency_ms.p99 ?? null,
      });
      if (history.length > HISTORY) history.shift();
    }
    previous = snap;
    drawLines($("chart-rate"), [{ values: history.map((p) => p.rate), color: "#2462a8" }], "/s");
    drawLines($("chart-latency"), [
      { values: history.map((p) => p.p50), color: "#2462a8" },
      { values: history.map((p) => p.p90), color: "#c77700" },
      { values: history.map((p) => p.p99), color: "#b3261e" }], "ms");
    drawLines($("chart-atoms"), [{ values: history.map((p) => p.atoms), color: "#2f7d32" }], "/s");
    drawBars($("chart-errors"), snap.errors);
    $("totals").textContent = `${snap.calculate_requests} calculate requests, ${snap.structures} structures, ` +
      `${snap.atoms} atoms evaluated since start; ${Math.max(0, snap.in_flight - 1)} other requests in flight.`;
    const shas = Object.fromEntries(snap.models.map((m) => [m.name, m.sha256]));
    if (models.some((m) => shas[m.name] && shas[m.name] !== m.sha256)) loadModels();   // a hot swap happened
  } catch (e) {
    $("status").textContent = "unreachable";
    $("status").className = "badge down";
  }
}

// ---- jobs --------------------------------------------------------------------------------------
let watching = null;                      // {id, controller} of the job whose energies are plotted

async function pollJobs() {
  try {
    const r = await fetch("/v1/jobs?limit=20", { headers: headers() });
    const body = await r.json();
    if (!r.ok || !body.enabled) {
      $("jobs-note").textContent = r.ok ? "This server runs no jobs (start it with --jobs-dir DIR)." : `${body.kind}: ${body.message}`;
      $("jobs-table").hidden = true;
      return;
    }
    $("jobs-note").textContent = body.jobs.length ? "Click a job to plot its energies." : "No jobs yet (POST /v1/jobs).";
    $("jobs-table").hidden = !body.jobs.length;
    $("jobs-table").tBodies[0].replaceChildren(...body.jobs.map((j) => {
      const link = el("a", { href: "#" }, j.id);
      link.addEventListener("click", (e) => { e.preventDefault(); watchJob(j.id); });
      return el("tr", { "data-job": j.id }, el("td", {}, link), el("td", {}, j.kind), el("td", {}, j.model),
        el("td", { class: `state ${j.state}` }, j.state + (j.reason ? ` (${j.reason})` : "")),
        el("td", {}, `${j.step} / ${j.steps}`), el("td", {}, j.frames),
        el("td", {}, j.seconds_per_step ? fmt(1e3 * j.seconds_per_step, 3) : "–"));
    }));
  } catch (e) { /* the metrics poll reports an unreachable server */ }
}

function drawSeries(svg, xs, series, unit) {
  // lines against xs, each axis scaled to the data (energies are negative and vary little)
  const w = svg.clientWidth || 600, h = svg.clientHeight || 220, left = 80, bottom = 16, top = 8;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  if (!all.length || !xs.length) return;
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-9) { lo -= 1e-6; hi += 1e-6; }
  // xs: steps in the order the frames came (a relax_many job interleaves its structures' steps)
  const first = xs.reduce((a, b) => Math.min(a, b)), last = xs.reduce((a, b) => Math.max(a, b));
  const x0 = first, x1 = Math.max(last, x0 + 1);
  const x = (v) => left + (w - left - 4) * (v - x0) / (x1 - x0);
  const y = (v) => top + (h - top - bottom) * (1 - (v - lo) / (hi - lo));
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const parts = [node("text", { x: 2, y: y(hi) + 8 }, `${hi.toFixed(5)} ${unit}`),
                 node("text", { x: 2, y: y(lo) }, `${lo.toFixed(5)} ${unit}`),
                 node("text", { x: left, y: h - 3 }, `step ${x0}`),
                 node("text", { x: w - 80, y: h - 3 }, `step ${last}`)];
  for (const s of series) {
    const sx = s.xs || xs;      // a series with its own steps (one structure of a relax_many job)
    const pts = s.values.map((v, i) => (v === null ? null : `${x(sx[i]).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    if (pts.length) parts.push(node("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.5 }));
  }
  svg.replaceChildren(...parts);
}

async function watchJob(id) {
  // the job's NDJSON frame stream (fetch, so that the token header goes with it), plotted as it comes
  if (watching) watching.controller.abort();
  const controller = new AbortController();
  watching = { id, controller };
  const steps = [], epot = [], etot = [];
  const structures = new Map();   // relax_many: structure index -> its steps and E_pot per atom, one line each
  const palette = ["#2462a8", "#b3261e", "#2e7d32", "#8e24aa", "#ef6c00", "#00838f"];
  const svg = $("job-plot");
  svg.dataset.frames = "0";
  svg.replaceChildren();
  $("job-plot-title").textContent = `job ${id}`;
  $("job-plot-figure").hidden = false;
  try {
    const r = await fetch(`/v1/jobs/${encodeURIComponent(id)}/frames?format=ndjson`, { headers: headers(), signal: controller.signal });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const f = JSON.parse(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        const n = f.numbers.length;
        steps.push(f.step);
        epot.push(f.energy / n);
        etot.push(f.kinetic_energy === null ? null : (f.energy + f.kinetic_energy) / n);
        if (f.structure !== undefined && f.structure !== null) {
          if (!structures.has(f.structure)) structures.set(f.structure, { xs: [], values: [] });
          structures.get(f.structure).xs.push(f.step);
          structures.get(f.structure).values.push(f.energy / n);
        }
      }
      const series = structures.size
        ? [...structures.values()].map((t, i) => ({ xs: t.xs, values: t.values, color: palette[i % palette.length] }))
        : [{ values: epot, color: "#2462a8" }, { values: etot, color: "#b3261e" }];
      if (steps.length) drawSeries(svg, steps, series, "eV/atom");
      svg.dataset.frames = String(steps.length);
      svg.dataset.lastEnergy = String(epot[epot.length - 1]);
    }
    $("job-plot-title").textContent = `job ${id}: ${steps.length} frames (the job has ended)`;
  } catch (e) {
    if (e.name !== "AbortError") $("job-plot-title").textContent = `job ${id}: ${e.message}`;
  }
}

// ---- calculate ---------------------------------------------------------------------------------
async function calculate(event) {
  event.preventDefault();
  const name = $("calc-model").value;
  $("calc-submit").disabled = true;
  $("calc-error").hidden = true;
  // γ costs a matrix product per atom: asked for only where the model has an active set
  const model = models.find((m) => m.name === name);
  const withGamma = Boolean(model && model.gamma_available);
  const query = withGamma ? "?properties=energy,forces,stress,virial,energies,max_gamma" : "";
  try {
    const reply = await api(`/v1/models/${encodeURIComponent(name)}/calculate${query}`, {
      method: "POST", body: $("calc-xyz").value,
      headers: { "Content-Type": "chemical/x-extxyz", Accept: "application/json" },
    });
    const res = reply.results[0];
    const n = res.forces.length;
    $("calc-energy").textContent = res.energy.toFixed(6);
    $("calc-energy").dataset.value = String(res.energy);
    $("calc-energy-atom").textContent = (res.energy / n).toFixed(6);
    $("calc-natoms").textContent = String(n);
    $("calc-sha").textContent = reply.sha256;
    $("calc-stress").textContent = res.stress ? res.stress.map((s) => s.toExponential(4)).join("  ") : "– (not periodic in 3 directions)";
    const gamma = res.max_gamma;
    $("calc-gamma").textContent = (gamma === undefined || gamma === null) ? "– (the model has no active set)"
      : `${gamma.toFixed(3)} (${gamma <= 1 ? "interpolation" : gamma <= 5 ? "mild extrapolation" : "unreliable"})`;
    $("calc-gamma").dataset.value = (gamma === undefined || gamma === null) ? "" : String(gamma);
    const symbols = $("calc-xyz").value.trim().split("\n").slice(2, 2 + n).map((l) => l.trim().split(/\s+/)[0]);
    $("calc-forces").tBodies[0].replaceChildren(...res.forces.map((f, i) =>
      el("tr", {}, el("td", {}, i), el("td", {}, symbols[i] || ""), ...f.map((c) => el("td", {}, c.toFixed(5))))));
    $("calc-result").hidden = false;
  } catch (e) {
    $("calc-result").hidden = true;
    $("calc-error").textContent = e.message;
    $("calc-error").hidden = false;
  } finally {
    $("calc-submit").disabled = false;
  }
}

$("token").value = sessionStorage.getItem("aceserver-token") || "";
$("token").addEventListener("change", loadModels);
$("calc-form").addEventListener("submit", calculate);
loadModels();
poll();
setInterval(poll, POLL_MS);
pollJobs();
setInterval(pollJobs, POLL_MS);
