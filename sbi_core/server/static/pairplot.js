/* Posterior pairplot on a <canvas>, dependency-free.
 * drawPairplot(canvas, samples (n x D array), names, bounds {low, high}) draws marginal
 * histograms on the diagonal, scatter plots below it and 2-D histograms above it. */
"use strict";

/* Axis range of parameter j: the samples' range with a 5% margin, clipped to the prior's
   support [low, high] (null/±inf: unbounded). The whole prior box is shown only when it is
   finite on both sides and at most WIDE_PRIOR times the samples' range; otherwise (a prior
   unbounded on a side, e.g. LogNormal's [0, inf), or a posterior much narrower than the prior)
   a posterior far from the prior's edge would be squeezed into a corner. */
const WIDE_PRIOR = 3;

function pairRange(samples, j, low, high) {
  const bounded = Number.isFinite(low) && Number.isFinite(high);
  let lo = Infinity, hi = -Infinity;
  for (const s of samples) {
    const v = s[j];
    if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  if (!Number.isFinite(lo)) return bounded ? [low, high] : [0, 1];
  const pad = (hi - lo) * 0.05 || Math.abs(hi) * 0.05 || 1;
  let a = lo - pad, b = hi + pad;
  if (Number.isFinite(low)) a = Math.max(a, low);
  if (Number.isFinite(high)) b = Math.min(b, high);
  if (!(b > a)) { a = lo - pad; b = hi + pad; }  // samples outside the support: show them
  if (bounded && high - low <= WIDE_PRIOR * (b - a)) return [low, high];
  return [a, b];
}

function formatTick(v) {
  const a = Math.abs(v);
  return (a !== 0 && (a < 0.01 || a >= 1e4)) ? v.toExponential(1) : String(+v.toFixed(2));
}

function drawPairplot(canvas, samples, names, bounds, maxDims) {
  const ratio = window.devicePixelRatio || 1;
  const css = canvas.clientWidth || 600;
  canvas.width = Math.round(css * ratio);
  canvas.height = Math.round(css * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, css, css);
  const D = Math.min(names.length, maxDims || 8);
  if (!samples || !samples.length) return;
  const margin = 38, gap = 6;
  const cell = (css - margin - gap * (D - 1) - 4) / D;
  const ranges = [];
  for (let j = 0; j < D; j++) ranges.push(pairRange(samples, j, bounds.low[j], bounds.high[j]));
  canvas.dataset.ranges = JSON.stringify(ranges);  // what the axes show (read by the tests)
  const bins = 30, bins2 = 24;
  ctx.font = "11px system-ui, sans-serif";
  for (let r = 0; r < D; r++) {
    for (let c = 0; c < D; c++) {
      const x0 = margin + c * (cell + gap), y0 = 2 + r * (cell + gap);
      ctx.strokeStyle = "#ccc";
      ctx.strokeRect(x0, y0, cell, cell);
      const [cl, ch] = ranges[c], [rl, rh] = ranges[r];
      const px = v => x0 + (v - cl) / (ch - cl) * cell;
      const py = v => y0 + cell - (v - rl) / (rh - rl) * cell;
      if (r === c) {
        const counts = new Array(bins).fill(0);
        for (const s of samples) {
          const k = Math.floor((s[c] - cl) / (ch - cl) * bins);
          if (k >= 0 && k < bins) counts[k]++; else if (k === bins) counts[bins - 1]++;
        }
        const top = Math.max(...counts) || 1;
        ctx.fillStyle = "#3b6ea5";
        const w = cell / bins;
        counts.forEach((k, i) => {
          const h = k / top * (cell - 4);
          ctx.fillRect(x0 + i * w + 0.5, y0 + cell - h, w - 1, h);
        });
      } else if (r > c) {
        ctx.fillStyle = "rgba(36, 52, 71, 0.35)";
        for (const s of samples) ctx.fillRect(px(s[c]) - 1, py(s[r]) - 1, 2, 2);
      } else {
        const grid = new Array(bins2 * bins2).fill(0);
        let top = 1;
        for (const s of samples) {
          const i = Math.floor((s[c] - cl) / (ch - cl) * bins2);
          const k = Math.floor((s[r] - rl) / (rh - rl) * bins2);
          if (i >= 0 && i < bins2 && k >= 0 && k < bins2) {
            const v = ++grid[k * bins2 + i];
            if (v > top) top = v;
          }
        }
        const w = cell / bins2;
        for (let k = 0; k < bins2; k++) {
          for (let i = 0; i < bins2; i++) {
            const v = grid[k * bins2 + i];
            if (!v) continue;
            ctx.fillStyle = `rgba(59, 110, 165, ${0.12 + 0.88 * v / top})`;
            ctx.fillRect(x0 + i * w, y0 + cell - (k + 1) * w, w + 0.5, w + 0.5);
          }
        }
      }
      ctx.fillStyle = "#444";
      if (r === D - 1) {
        ctx.textAlign = "left";
        ctx.fillText(formatTick(cl), x0, y0 + cell + 12);
        ctx.textAlign = "right";
        ctx.fillText(formatTick(ch), x0 + cell, y0 + cell + 12);
        ctx.textAlign = "center";
        ctx.fillText(names[c], x0 + cell / 2, y0 + cell + 24);
      }
      if (c === 0 && r > 0) {
        ctx.save();
        ctx.translate(margin - 8, y0 + cell / 2);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "center";
        ctx.fillText(names[r], 0, 0);
        ctx.restore();
      }
    }
  }
}
