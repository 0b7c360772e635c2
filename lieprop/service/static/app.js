// The lieprop web page: molecules in, a table of values with units (and uncertainty) out, a 3D view of each
// molecule as the model saw it. Text goes to POST /v1/predict in small requests; files (and long pastes) go to a
// batch job (POST /v1/jobs, polled). Plain ES modules, no build step.

import { ApiError, apiKey, deleteJob, getJson, jobResults, postJson, setApiKey, startJob } from "./api.js";

const REQUEST_SIZE = 64;        // molecules per POST /v1/predict (the server's limit is at least this by default)
const DIRECT_LIMIT = 1000;      // longer pastes run as a batch job
const SHOWN_ROWS = 2000;        // rows of a job's results shown in the table (the download has them all)
const DEFAULT_PROPERTIES = ["homo", "lumo", "gap", "mu"];
const SYMBOLS = ["X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
  "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr"];

const $ = (id) => document.getElementById(id);
const state = { units: {}, results: [], properties: [], job: null, viewer: null };

// ---------------------------------------------------------------------------------------------- status and key

function say(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    $("api-key").focus();
    return "This server needs an API key: enter it in the “API key” field at the top.";
  }
  if (error instanceof ApiError) return `${error.code}: ${error.message}`;
  return `The request failed: ${error.message}`;
}

$("api-key").value = apiKey();
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  say("Key saved for this tab.");
  loadModel();
});
$("key-forget").addEventListener("click", () => {
  setApiKey("");
  $("api-key").value = "";
  say("Key forgotten.");
});

// ---------------------------------------------------------------------------------------------- model and properties

async function loadModel() {
  try {
    const [models, props] = await Promise.all([getJson("v1/models"), getJson("v1/properties")]);
    const card = models.models[0];
    const uncertainty = card.uncertainty ? ` Uncertainty: ${card.uncertainty}.` : "";
    $("model-info").textContent = `Model ${card.name} ${card.version} (${card.network}` +
      `${card.members > 1 ? `, ensemble of ${card.members}` : ""}).${uncertainty}`;
    const list = $("property-list");
    list.replaceChildren();
    for (const p of props.properties) {
      state.units[p.name] = p.unit;
      const label = document.createElement("label");
      label.title = p.description;
      const box = document.createElement("input");
      Object.assign(box, { type: "checkbox", name: "property", value: p.name,
                           checked: DEFAULT_PROPERTIES.includes(p.name) });
      label.append(box, ` ${p.name} (${p.unit})`);
      list.append(label);
    }
  } catch (error) {
    say(explain(error), true);
  }
}

function chosenProperties() {
  return [...document.querySelectorAll("input[name=property]:checked")].map((box) => box.value);
}

$("select-all").addEventListener("click", () => setAll(true));
$("select-none").addEventListener("click", () => setAll(false));
function setAll(on) {
  for (const box of document.querySelectorAll("input[name=property]")) box.checked = on;
}

// ---------------------------------------------------------------------------------------------- reading the text box

/** REST items from the text box: SMILES lines ("SMILES [id]"), XYZ frames or SDF records. */
function itemsFromText(text, kind) {
  if (kind === "smiles") {
    return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line && !line.startsWith("#"))
      .map((line) => {
        const [smiles, ...rest] = line.split(/\s+/);
        return rest.length ? { smiles, id: rest.join(" ") } : { smiles };
      });
  }
  if (kind === "sdf") {
    return text.split(/^\$\$\$\$[^\n]*$/m).filter((block) => block.trim())
      .map((block) => ({ sdf: `${block.replace(/^\r?\n/, "")}\n` }));
  }
  return splitXyz(text).map((xyz) => ({ xyz }));
}

function splitXyz(text) {
  const lines = text.replace(/\s+$/, "").split(/\r?\n/);
  const frames = [];
  let i = 0;
  while (i < lines.length) {
    if (!lines[i].trim()) { i += 1; continue; }
    const n = Number.parseInt(lines[i].trim(), 10);
    if (!Number.isFinite(n) || n < 0) { frames.push(lines.slice(i).join("\n")); break; }  // the server says why
    frames.push(`${lines.slice(i, i + n + 2).join("\n")}\n`);
    i += n + 2;
  }
  return frames;
}

function textAsFile(items, kind) {
  const body = kind === "smiles" ? items.map((m) => (m.id ? `${m.smiles} ${m.id}` : m.smiles)).join("\n")
    : items.map((m) => (kind === "sdf" ? `${m.sdf}$$$$` : m.xyz)).join("\n");
  const ext = { smiles: "smi", xyz: "xyz", sdf: "sdf" }[kind];
  return new File([`${body}\n`], `pasted.${ext}`, { type: "text/plain" });
}

// ---------------------------------------------------------------------------------------------- predicting

/** How the user's 3D geometries were relaxed (the REST option relaxed_with): the checkbox under the input. */
function relaxedWith() {
  return $("forcefield").checked ? "forcefield" : "dft";
}

$("predict-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const properties = chosenProperties();
  if (!properties.length) { say("Choose at least one property.", true); return; }
  const file = $("file").files[0];
  const kind = $("input-kind").value;
  $("predict").disabled = true;
  try {
    if (file) {
      await runJob(file, properties);
      return;
    }
    const items = itemsFromText($("molecules").value, kind);
    if (!items.length) { say("Paste molecules or choose a file first.", true); return; }
    if (items.length > DIRECT_LIMIT) {
      await runJob(textAsFile(items, kind), properties);
      return;
    }
    items.forEach((item, index) => { item.id ??= String(index); });
    const results = [];
    for (let start = 0; start < items.length; start += REQUEST_SIZE) {
      say(`Predicting ${Math.min(start + REQUEST_SIZE, items.length)} of ${items.length} molecules…`);
      const body = { molecules: items.slice(start, start + REQUEST_SIZE), properties, return_geometry: true,
                     relaxed_with: relaxedWith() };
      const answer = await postJson("v1/predict", body);
      results.push(...answer.results.map((r, k) => ({ ...r, index: start + k, smiles: body.molecules[k].smiles })));
    }
    show(results, properties);
  } catch (error) {
    say(explain(error), true);
  } finally {
    $("predict").disabled = false;
  }
});

function show(results, properties, total = results.length) {
  state.results = results;
  state.properties = properties;
  const failed = results.filter((r) => !r.ok).length;
  $("results").replaceChildren(resultTable(results.slice(0, SHOWN_ROWS), properties, total));
  $("download").disabled = !results.length;
  say(`${total} results: ${total - failed} predicted, ${failed} with errors.`);
  $("status").scrollIntoView({ block: "start" });
  const first = results.find((r) => r.ok && r.geometry);
  if (first) showMolecule(first);
}

// ---------------------------------------------------------------------------------------------- the table

function fmt(v, digits = 5) {
  return Math.abs(v) >= 1000 ? v.toFixed(2) : String(Number(v.toPrecision(digits)));
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text !== undefined) td.textContent = text;
  row.append(td);
  return td;
}

function resultTable(results, properties, total) {
  const table = document.createElement("table");
  const caption = table.createCaption();
  caption.textContent = results.length < total
    ? `The first ${results.length} of ${total} rows; the CSV has them all.` : `${total} molecules`;
  const head = table.createTHead().insertRow();
  const units = (name) => results.find((r) => r.ok && r.properties[name])?.properties[name].unit ?? state.units[name];
  for (const title of ["#", "id", "input", ...properties.map((p) => `${p} [${units(p)}]`), "warnings", "3D"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const r of results) {
    const row = body.insertRow();
    row.className = r.ok ? "ok" : "failed";
    row.dataset.id = r.id ?? "";
    cell(row, String((r.index ?? 0) + 1));
    cell(row, r.id ?? "");
    cell(row, r.smiles ?? r.provenance?.smiles ?? r.provenance?.source ?? "");
    if (!r.ok) {
      const td = cell(row, undefined, "error-text");
      td.colSpan = properties.length + 2;
      const code = document.createElement("code");
      code.className = "error-code";
      code.textContent = r.error.code;
      td.append(code, ` ${r.error.message}`);
      continue;
    }
    for (const p of properties) {
      const v = r.properties[p];
      const td = cell(row, undefined, "num");
      if (!v) continue;
      td.textContent = v.std !== undefined && v.std !== null ? `${fmt(v.value)} ± ${fmt(v.std, 2)}` : fmt(v.value);
      if (v.interval) {
        const span = document.createElement("span");
        span.className = "interval";
        span.textContent = `[${fmt(v.interval[0])}, ${fmt(v.interval[1])}]`;
        td.append(span);
      }
    }
    cell(row, r.warnings.join("; "), "warn");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "3D";
    button.setAttribute("aria-label", `Show molecule ${r.id ?? ""} in 3D`);
    button.addEventListener("click", () => showMolecule(r));
    cell(row).append(button);
  }
  return table;
}

// ---------------------------------------------------------------------------------------------- CSV, client-side

function csvField(value) {
  const text = value === undefined || value === null ? "" : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function resultsCsv(results, properties) {
  const has = (key) => results.some((r) => r.ok && properties.some((p) => r.properties[p]?.[key] != null));
  const withStd = has("std"), withInterval = has("interval");
  const header = ["index", "id", "smiles", "ok"];
  for (const p of properties) {
    const unit = state.units[p] ?? "";
    header.push(`${p} [${unit}]`);
    if (withStd) header.push(`${p}_std [${unit}]`);
    if (withInterval) header.push(`${p}_lower [${unit}]`, `${p}_upper [${unit}]`);
  }
  header.push("error", "error_message", "warnings");
  const lines = [header.map(csvField).join(",")];
  for (const r of results) {
    const row = [r.index, r.id, r.smiles ?? "", r.ok];
    for (const p of properties) {
      const v = r.ok ? r.properties[p] : undefined;
      row.push(v?.value);
      if (withStd) row.push(v?.std);
      if (withInterval) row.push(v?.interval?.[0], v?.interval?.[1]);
    }
    row.push(r.ok ? "" : r.error.code, r.ok ? "" : r.error.message, r.ok ? r.warnings.join("; ") : "");
    lines.push(row.map(csvField).join(","));
  }
  return `${lines.join("\n")}\n`;
}

function saveText(text, name) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

$("download").addEventListener("click", () => saveText(resultsCsv(state.results, state.properties),
                                                       "lieprop-results.csv"));

// ---------------------------------------------------------------------------------------------- batch jobs

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const FINISHED = ["succeeded", "failed", "cancelled"];

async function runJob(file, properties) {
  $("job-panel").hidden = false;
  $("job-results").hidden = true;
  $("job-cancel").disabled = false;
  $("job-state").textContent = `Uploading ${file.name} (${(file.size / 1024).toFixed(1)} kB)…`;
  let job = await startJob(file, properties, relaxedWith());
  state.job = job.id;
  while (!FINISHED.includes(job.state)) {
    showJob(job);
    await sleep(400);
    job = await getJson(`v1/jobs/${encodeURIComponent(job.id)}`);
  }
  showJob(job);
  $("job-cancel").disabled = true;
  if (job.state !== "succeeded") {
    say(job.state === "failed" ? `The job failed: ${job.error}` : "The job was cancelled.", job.state === "failed");
    return;
  }
  const link = $("job-results");
  link.href = `v1/jobs/${encodeURIComponent(job.id)}/results?format=csv`;
  link.download = `${file.name.replace(/\.[^.]*$/, "")}-lieprop.csv`;
  link.hidden = false;
  const lines = (await jobResults(job.id)).split("\n").filter((line) => line.trim());
  show(lines.slice(0, SHOWN_ROWS).map((line) => JSON.parse(line)), job.options.properties ?? properties,
       lines.length);
}

function showJob(job) {
  const progress = $("job-progress");
  const p = job.progress ?? {};
  if (job.state === "succeeded") progress.value = 1;
  else if (p.fraction != null) progress.value = p.fraction;
  else progress.removeAttribute("value");  // indeterminate until the input is counted
  const rows = p.rows_total != null ? `${p.rows_done} of ${p.rows_total}` : `${p.rows_done ?? 0}`;
  const failed = job.counts?.failed ? `, ${job.counts.failed} with errors` : "";
  $("job-state").textContent = `Job ${job.id}: ${job.state}, ${rows} rows done${failed}.`;
}

$("job-cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try {
    await deleteJob(state.job);
    $("job-state").textContent = `Job ${state.job}: cancelling…`;
  } catch (error) {
    say(explain(error), true);
  }
});

// A plain link works without a key; with one, fetch the CSV with the X-API-Key header instead.
$("job-results").addEventListener("click", async (event) => {
  if (!apiKey()) return;
  event.preventDefault();
  try {
    saveText(await jobResults(state.job, "csv"), $("job-results").download);
  } catch (error) {
    say(explain(error), true);
  }
});

// ---------------------------------------------------------------------------------------------- the 3D view

function provenanceText(r) {
  const source = r.provenance?.source ?? "input";
  const c = r.provenance?.conformer;
  if (!c) {
    const how = r.provenance?.relaxed_with === "forcefield" ? ", relaxed with a force field as you said" : "";
    return `${r.id ?? ""}: the geometry as given (${source}${how}).`;
  }
  const parts = [c.method, c.seed != null ? `seed ${c.seed}` : null,
                 c.force_field ? `force field ${c.force_field}` : "no force-field relaxation",
                 c.converged === false ? "not converged" : null].filter(Boolean);
  const averaged = c.averaged > 1 ? ` The values average over ${c.averaged} conformers; this is the lowest in energy.` : "";
  return `${r.id ?? ""}: lieprop's conformer from ${source} (${parts.join(", ")}).${averaged}`;
}

async function geometryOf(r) {
  if (r.geometry) return r.geometry;
  const smiles = r.smiles ?? r.provenance?.smiles;
  if (!smiles) return null;  // a job's XYZ / SDF rows: the results carry no geometry
  const answer = await postJson("v1/predict", { molecules: [{ smiles }], properties: [state.properties[0]],
                                                return_geometry: true });
  return answer.results[0].ok ? answer.results[0].geometry : null;
}

async function showMolecule(r) {
  const caption = $("viewer-caption");
  if (!window.$3Dmol) { caption.textContent = "The 3D viewer (3Dmol.js) did not load."; return; }
  let geometry;
  try {
    geometry = await geometryOf(r);
  } catch (error) {
    caption.textContent = explain(error);
    return;
  }
  if (!geometry) { caption.textContent = `${r.id ?? ""}: no geometry to show for this row.`; return; }
  const xyz = [String(geometry.numbers.length), r.id ?? "",
    ...geometry.numbers.map((z, i) => `${SYMBOLS[z] ?? "X"} ${geometry.positions[i].join(" ")}`)].join("\n");
  state.viewer ??= window.$3Dmol.createViewer($("viewer"), { backgroundColor: "white" });
  const viewer = state.viewer;
  viewer.clear();
  viewer.addModel(xyz, "xyz");
  viewer.setStyle({}, { stick: { radius: 0.14 }, sphere: { scale: 0.25 } });
  viewer.zoomTo();
  viewer.render();
  $("viewer").setAttribute("aria-label", `3D view of molecule ${r.id ?? ""}`);
  caption.textContent = provenanceText(r);
}

loadModel();
