// defectlite inspection page: send each dropped or picked image to /v1/predict; for a classifier show its
// class and probability bars ("uncertain" answers marked for a person), for a detector draw its boxes over the
// image; on request the Grad-CAM overlay from /v1/explain. No build step, no libraries.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let model = null;
let modelReady = null;

async function errorText(resp) {
  try {
    const body = await resp.json();
    const files = (body.files || []).map((f) => f.detail).join("; ");
    return files || body.detail || `HTTP ${resp.status}`;
  } catch (_) {
    return `HTTP ${resp.status}`;
  }
}

function formWith(file, extra = {}) {
  const form = new FormData();
  form.append("files", file, file.name);
  for (const [k, v] of Object.entries(extra)) form.append(k, v);
  return form;
}

function showError(card, message) {
  const el = $(".error", card);
  el.textContent = message;
  el.hidden = false;
  card.classList.add("failed");
}

const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"];

function showDetections(card, result, img) {
  // boxes are in the pixels of the original image: scale them to the thumbnail as drawn
  const canvas = $(".boxes", card);
  const draw = () => {
    const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
    const dx = (img.clientWidth - img.naturalWidth * scale) / 2, dy = (img.clientHeight - img.naturalHeight * scale) / 2;
    canvas.width = img.clientWidth;
    canvas.height = img.clientHeight;
    const ctx = canvas.getContext("2d");
    ctx.lineWidth = 2;
    ctx.font = "11px system-ui, sans-serif";
    for (const b of result.boxes) {
      const [x1, y1, x2, y2] = b.box.map((v, i) => (i % 2 ? v * scale + dy : v * scale + dx));
      ctx.strokeStyle = ctx.fillStyle = PALETTE[b.index % PALETTE.length];
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillText(`${b.class} ${b.score.toFixed(2)}`, x1 + 2, Math.max(y1 - 3, 10));
    }
  };
  if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  canvas.hidden = false;
  $(".label", card).textContent = result.boxes.length ? `${result.boxes.length} defect(s)` : "no defect found";
  const list = $(".bars", card);
  for (const b of result.boxes) {
    const li = document.createElement("li");
    li.dataset.class = b.class;
    li.textContent = `${b.class} ${(100 * b.score).toFixed(1)} % at [${b.box.map((v) => v.toFixed(0)).join(", ")}]`;
    list.append(li);
  }
}

function showPrediction(card, result) {
  if (result.boxes) {
    showDetections(card, result, $(".thumb", card));
    $(".meta", card).textContent = `model ${result.latency_ms.toFixed(1)} ms (batch of ${result.batch_size})`;
    card.dataset.state = "done";
    return;
  }
  if (result.uncertain) {
    card.classList.add("uncertain");
    const top = result.top.map((t) => `${t.class} ${(100 * t.probability).toFixed(1)} %`).join(", ");
    $(".label", card).textContent = "uncertain: send to a person";
    $(".label", card).title = `most probable: ${top}`;
  } else {
    $(".label", card).textContent = result.class;
  }
  $(".prob", card).textContent = `${(100 * result.probability).toFixed(1)} %`;
  const bars = $(".bars", card);
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const li = document.createElement("li");
    li.dataset.class = name;
    if (name === (result.top ? result.top[0].class : result.class)) li.classList.add("top");
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.textContent = `${(100 * p).toFixed(1)} %`;
    li.append(label, bar, pct);
    bars.append(li);
  }
  $(".meta", card).textContent = `model ${result.latency_ms.toFixed(1)} ms (batch of ${result.batch_size})`;
  card.dataset.state = "done";
}

async function explain(card, file, button) {
  button.disabled = true;
  button.textContent = "Computing Grad-CAM…";
  try {
    const resp = await fetch("/v1/explain", { method: "POST", body: formWith(file) });
    if (!resp.ok) throw new Error(await errorText(resp));
    const img = $(".cam", card);
    img.src = URL.createObjectURL(await resp.blob());
    img.title = `Grad-CAM for ${decodeURIComponent(resp.headers.get("X-Defectlite-Class") || "")}`;
    img.hidden = false;
    button.textContent = "Grad-CAM shown";
  } catch (e) {
    showError(card, `Grad-CAM failed: ${e.message}`);
    button.textContent = "Show Grad-CAM";
    button.disabled = false;
  }
}

async function classify(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.file = file.name;
  card.dataset.state = "pending";
  $(".name", card).textContent = file.name;
  $(".thumb", card).src = URL.createObjectURL(file);
  $(".label", card).textContent = "…";
  const button = $(".explain", card);
  button.disabled = !(model && model.explain);
  if (model && !model.explain) button.title = model.explain_detail;
  button.addEventListener("click", () => explain(card, file, button));
  $("#results").prepend(card);
  try {
    const resp = await fetch("/v1/predict", { method: "POST", body: formWith(file) });
    if (!resp.ok) throw new Error(await errorText(resp));
    showPrediction(card, (await resp.json()).results[0]);
  } catch (e) {
    $(".label", card).textContent = "error";
    card.dataset.state = "error";
    button.disabled = true;
    showError(card, e.message);
  }
}

async function handle(files) {
  const list = Array.from(files);
  await modelReady;
  $("#status").textContent = `classifying ${list.length} image(s)…`;
  await Promise.all(list.map(classify));
  $("#status").textContent = `${list.length} image(s) done`;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/model");
    model = await resp.json();
    const size = model.input_size.join(" x ");
    const cam = model.explain ? "Grad-CAM available" : "Grad-CAM unavailable";
    const task = model.view === "boxes" ? "detector" : "classifier"; // the runtime says how answers look
    $("#model-info").textContent =
      `${model.model} (${task}) · ${model.classes.length} classes (${model.classes.join(", ")}) · input ${size} · ${cam}`;
  } catch (e) {
    $("#model-info").textContent = `could not read /v1/model: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("#drop");
  const picker = $("#picker");
  picker.addEventListener("change", () => handle(picker.files).then(() => { picker.value = ""; }));
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => handle(e.dataTransfer.files));
  modelReady = loadModel();
});
