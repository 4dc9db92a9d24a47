// The eightys dashboard: one JSON state a second over Server-Sent Events
// (/_eightys/events), drawn with a small canvas line chart of our own (no
// library, nothing fetched from elsewhere: the page works offline).
"use strict";

const COLORS = ["#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#d69e2e", "#718096"];
const POINTS = 120;  // two minutes of history

class LineChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.series = [];
  }
  push(values) {
    values.forEach((v, i) => {
      if (!this.series[i]) this.series[i] = [];
      this.series[i].push(v);
      if (this.series[i].length > POINTS) this.series[i].shift();
    });
    this.draw();
  }
  draw() {
    const c = this.canvas, ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    c.width = w * ratio; c.height = h * ratio;
    const g = c.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, w, h);
    let max = 0;
    for (const s of this.series) for (const v of s) max = Math.max(max, v);
    max = niceMax(max);
    const left = 48, bottom = h - 18, top = 6, right = w - 6;
    g.strokeStyle = "#e2e8f0"; g.fillStyle = "#718096"; g.font = "11px system-ui, sans-serif";
    g.textAlign = "right"; g.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const y = bottom - (bottom - top) * k / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
      g.fillText(format(max * k / 4), left - 6, y);
    }
    g.textAlign = "left"; g.textBaseline = "alphabetic";
    g.fillText(`last ${POINTS} s`, left, h - 4);
    this.series.forEach((s, i) => {
      g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 2; g.beginPath();
      s.forEach((v, j) => {
        const x = right - (s.length - 1 - j) * (right - left) / (POINTS - 1);
        const y = bottom - (max ? v / max : 0) * (bottom - top);
        if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
    this.legend.innerHTML = "";
    this.series.forEach((s, i) => {
      const span = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = COLORS[i % COLORS.length];
      span.append(dot, `worker ${i}: ${format(s[s.length - 1] || 0)}`);
      this.legend.append(span);
    });
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function format(v) {
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(v >= 1 ? 1 : 2);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function time(t) { return new Date(t * 1000).toLocaleTimeString(); }

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.append(td); }

const charts = {
  rps: new LineChart(document.getElementById("rps"), document.getElementById("legend-rps")),
  latency: new LineChart(document.getElementById("latency"), document.getElementById("legend-latency")),
};

function show(state) {
  if (!state.workers) return;
  window.eightysState = state;  // for tests and the curious
  charts.rps.push(state.workers.map(w => w.rps));
  charts.latency.push(state.workers.map(w => w.latency_ms));
  document.getElementById("total-rps").textContent =
    format(state.workers.reduce((sum, w) => sum + w.rps, 0));
  document.getElementById("uptime").textContent = state.uptime;
  const body = document.querySelector("#workers tbody");
  body.innerHTML = "";
  for (const w of state.workers) {
    const row = document.createElement("tr");
    row.dataset.worker = w.id;
    for (const v of [w.id, w.pids.join(" ") || "-", format(w.rps), w.latency_ms.toFixed(3), w.requests,
                     w.errors_5xx, w.lua_errors, w.open_http, w.open_ws, bytes(w.rss), w.lag_ms.toFixed(1),
                     w.restarts]) cell(row, v);
    body.append(row);
  }
  const reloads = document.getElementById("reloads");
  if (state.reloads.length) {
    reloads.innerHTML = "";
    for (const r of state.reloads.slice().reverse()) {
      const li = document.createElement("li");
      const mark = document.createElement("span");
      mark.className = r.ok ? "ok" : "failed";
      mark.textContent = r.ok ? "ok" : "failed";
      li.append(`${time(r.time)} ${r.kind}: `, mark);
      if (r.error) { const pre = document.createElement("pre"); pre.textContent = r.error; li.append(pre); }
      reloads.append(li);
    }
  }
  const errors = document.getElementById("errors");
  if (state.errors.length) {
    errors.innerHTML = "";
    for (const e of state.errors.slice().reverse()) {
      const li = document.createElement("li");
      const pre = document.createElement("pre");
      pre.textContent = e.text;  // text, never markup
      li.append(`${time(e.time)} worker ${e.worker}`, pre);
      errors.append(li);
    }
  }
}

const source = new EventSource("events");
const status = document.getElementById("conn");
source.onopen = () => { status.textContent = "live"; };
source.onerror = () => { status.textContent = "reconnecting…"; };
source.onmessage = (event) => show(JSON.parse(event.data));
