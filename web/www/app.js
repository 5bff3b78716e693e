// The demo page: controls, drawing and animation. Every number it draws comes from the wasm
// module (web/src/lib.rs), that is from the wgpu-optim library: the functions, their gradients
// and Hessians, and the optimizer steps (the update rules, Newton's method, L-BFGS) run as WGSL
// on the WebGPU adapter (or, without WebGPU, on the library's CPU reference compiled to wasm).
// Nothing here computes an optimizer step.

import initWasm, * as wasm from './pkg/wgpu_optim_web.js';

const COLOURS = ['#e6194b', '#3cb44b', '#ffe119', '#0082c8', '#f58230', '#911eb4', '#46f0f0', '#f032e6'];
const DEFAULT_RUNS = [
  { optimizer: 'SGD', hp: { lr: 0.001, momentum: 0.9 } },
  { optimizer: 'Adam', hp: { lr: 0.05 } },
  { optimizer: 'RMSprop', hp: { lr: 0.01 } },
  { optimizer: 'Adagrad', hp: { lr: 0.5 } },
];

const $ = (id) => document.getElementById(id);
const REACHED = 1e-6;  // the loss the legend reports reaching (written 1e-6)

// Lessons from the articles on second-order methods: presets with what to look for. Each sets
// the function, the start, the steps and the runs; the legend then shows the numbers.
const LESSONS = {
  quadratic: {
    title: 'Newton: one step on a quadratic',
    state: { function: 'ill_conditioned', start: null, steps: 100, runs: [
      { optimizer: 'Newton', hp: { lr: 1 } },
      { optimizer: 'SGD', hp: { lr: 0.015, momentum: 0.5 } },
      { optimizer: 'Adam', hp: { lr: 0.05 } },
    ] },
    text: 'f = (x² + 100 y²)/2 has the Hessian diag(1, 100). Newton\'s step −H⁻¹∇f is exact on a quadratic: ' +
      'it lands on the minimum (0, 0) in one step, whatever the conditioning. SGD must keep lr below 2/100 for the steep ' +
      'y direction and then crawls along the flat x direction; Adam rescales each coordinate but still needs many steps.',
  },
  saddle: {
    title: 'Newton walks into the saddle',
    state: { function: 'saddle', start: [1, 0.1], steps: 12, runs: [
      { optimizer: 'Newton', hp: { lr: 1 } },
      { optimizer: 'DampedNewton', hp: { lr: 1 } },
      { optimizer: 'SGD', hp: { lr: 0.1 } },
    ] },
    text: 'f = x² − y² has H = diag(2, −2). Plain Newton jumps to the stationary point of its quadratic model, which here ' +
      'is the saddle (0, 0): from (1, 0.1) it lands on it in one step and stays (∇f = 0). Damped Newton adds μ ≥ −λ_min(H) + δ ' +
      'to the diagonal, so H + μI is positive definite and every step goes downhill: it leaves the saddle along y, ' +
      'f falling below 0 (the function is unbounded below, so it accelerates off the map).',
  },
  lbfgs: {
    title: 'L-BFGS against Adam on Rosenbrock',
    state: { function: 'rosenbrock', start: [-1.2, 1], steps: 2000, runs: [
      { optimizer: 'LBFGS', hp: { lr: 1, line_search_fn: 'strong_wolfe', max_iter: 1, max_eval: 25 } },
      { optimizer: 'Adam', hp: { lr: 0.3 } },
      { optimizer: 'Adam', hp: { lr: 0.05 } },
    ] },
    text: 'From (−1.2, 1) L-BFGS (torch\'s, with the strong-Wolfe line search; one iteration per step here, so each step ' +
      'also re-evaluates the point its line search ended at) follows the curved valley with a curvature estimate built from ' +
      'its last gradients and reaches f < 1e-6 after a few dozen gradient evaluations. Adam, one gradient per step, needs ' +
      'hundreds of steps at its best learning rate and over a thousand at a cautious one. The legend shows the counts.',
  },
};
const demo = { state: null, lastSpec: null, lastReport: null, lastBasin: null, computations: 0, busy: false };
window.demo = demo;

let FUNCTIONS = [];      // from wasm.functions()
let OPTIMIZERS = {};     // name -> torch defaults, from wasm.optimizers()
let BASIN_RULES = new Set();  // the methods a basin map runs (element-wise rules, Newton), from wasm.optimizers()
let SCHEDULABLE = new Set();  // the methods that take a learning-rate schedule (the update rules)
let cursor = 0;          // step shown by the animation
let playing = true;
let background = null;   // ImageData of the contour map of the current function
let backgroundFor = null;
let computeSerial = 0;

function fn() { return FUNCTIONS.find((f) => f.name === demo.state.function); }

// ---- state and the shareable URL ----

function defaultState() {
  return {
    function: 'rosenbrock', steps: 500, speed: 4, start: null,
    runs: structuredClone(DEFAULT_RUNS),
    basin: { run: 1, resolution: 100, steps: 1000 },
  };
}

function loadState() {
  const state = defaultState();
  if (location.hash.length > 1) {
    try {
      Object.assign(state, JSON.parse(decodeURIComponent(location.hash.slice(1))));
    } catch (e) {
      console.warn('ignoring an unreadable URL hash', e);
    }
  }
  if (!FUNCTIONS.some((f) => f.name === state.function)) state.function = 'rosenbrock';
  state.runs = state.runs.filter((r) => r.optimizer in OPTIMIZERS);
  return state;
}

function saveState() {
  history.replaceState(null, '', '#' + encodeURIComponent(JSON.stringify(demo.state)));
}

function startPoint() { return demo.state.start ?? fn().default_start; }

/// The spec sent to wasm (and accepted by `wgpu-optim trajectories --config`).
function trajectorySpec() {
  return {
    function: demo.state.function,
    steps: demo.state.steps,
    sample_every: 1,
    starts: [startPoint()],
    runs: demo.state.runs.filter((r) => !r.error).map((r) => runSpec(r, demo.state.steps)),
  };
}

function runSpec(run, steps) {
  const schedule = SCHEDULABLE.has(run.optimizer) ? scheduleFor(run, steps) : null;
  const spec = schedule === null
    ? { optimizer: run.optimizer, hyperparameters: run.hp }
    : { optimizer: run.optimizer, hyperparameters: run.hp, schedule };
  // The optimizer state's type (f32, bf16, int8): update rules only; Newton and L-BFGS keep f32.
  const state = demo.state.stateDtype ?? 'f32';
  if (state !== 'f32' && !SECOND_ORDER.has(run.optimizer)) spec.state_dtype = state;
  return spec;
}

const SECOND_ORDER = new Set(['Newton', 'DampedNewton', 'LBFGS']);

/// "1.2 KiB": a byte count for people.
function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// ---- computing (all in wasm) ----

// One run at a time on the device (the library's GPU error scopes must not interleave).
let queue = Promise.resolve();
function exclusive(task) {
  const result = queue.then(task, task);
  queue = result.catch(() => {});
  return result;
}
demo.runTrajectories = (spec) => exclusive(async () => JSON.parse(await wasm.run_trajectories(JSON.stringify(spec))));
demo.runBasin = (spec) => exclusive(async () => JSON.parse(await wasm.run_basin(JSON.stringify(spec))));

async function compute() {
  const serial = ++computeSerial;
  for (const run of demo.state.runs) {
    try {
      run.hp = JSON.parse(wasm.check_run(JSON.stringify({ ...runSpec(run, demo.state.steps), steps: demo.state.steps })));
      run.error = undefined;
    } catch (e) {
      run.error = String(e.message ?? e);
    }
  }
  renderRuns();
  const spec = trajectorySpec();
  saveState();
  if (spec.runs.length === 0) { demo.lastReport = null; draw(); return; }
  demo.busy = true;
  try {
    const report = await demo.runTrajectories(spec);
    if (serial !== computeSerial) return; // a newer request superseded this one
    demo.lastSpec = spec;
    demo.lastReport = report;
    demo.computations += 1;
    cursor = playing ? 0 : demo.state.steps;
  } catch (e) {
    showStatus(`error: ${e.message ?? e}`, 'error');
  } finally {
    if (serial === computeSerial) demo.busy = false;
  }
  renderLegend();
  draw();
}

// ---- the controls ----

function renderRuns() {
  const box = $('runs');
  box.replaceChildren();
  demo.state.runs.forEach((run, i) => {
    const card = document.createElement('div');
    card.className = 'run';
    card.style.borderColor = COLOURS[i % COLOURS.length];
    const head = document.createElement('div');
    head.className = 'head';
    const select = document.createElement('select');
    for (const name of Object.keys(OPTIMIZERS)) select.add(new Option(name, name, false, name === run.optimizer));
    select.onchange = () => {
      // Keep the learning rate between update rules; Newton's and L-BFGS's lr is a step scale.
      const keep = SCHEDULABLE.has(run.optimizer) && SCHEDULABLE.has(select.value);
      run.optimizer = select.value;
      run.hp = { lr: keep ? run.hp.lr : OPTIMIZERS[select.value].lr };
      compute();
    };
    const remove = document.createElement('button');
    remove.textContent = '×';
    remove.title = 'remove this optimizer';
    remove.onclick = () => { demo.state.runs.splice(i, 1); renderBasinRuns(); compute(); };
    head.append(select, remove);
    card.append(head);
    const defaults = OPTIMIZERS[run.optimizer];
    for (const [key, value] of Object.entries(defaults)) card.append(hpInput(run, key, value));
    if (SCHEDULABLE.has(run.optimizer)) card.append(scheduleInput(run));
    if (run.error) {
      const error = document.createElement('div');
      error.className = 'error';
      error.textContent = run.error;
      card.append(error);
    }
    box.append(card);
  });
}

// Learning-rate schedules: torch.optim.lr_scheduler configurations, run by the library's
// schedule module (wgpu_optim::schedule); a preset fills in the JSON, which stays editable.
const SCHEDULES = {
  constant: () => null,
  'warmup + cosine': (steps) => {
    const w = Math.max(1, Math.round(steps / 10));
    return { name: 'SequentialLR', milestones: [w], schedulers: [
      { name: 'LinearLR', start_factor: 0.1, total_iters: w }, { name: 'CosineAnnealingLR', T_max: Math.max(1, steps - w) }] };
  },
  warmup: (steps) => ({ name: 'LinearLR', start_factor: 0.1, total_iters: Math.max(1, Math.round(steps / 10)) }),
  cosine: (steps) => ({ name: 'CosineAnnealingLR', T_max: steps }),
  step: (steps) => ({ name: 'StepLR', step_size: Math.max(1, Math.round(steps / 4)), gamma: 0.5 }),
  exponential: (steps) => ({ name: 'ExponentialLR', gamma: Number(Math.pow(0.05, 1 / steps).toPrecision(6)) }),
  '1/t': (steps) => ({ name: 'InverseTimeLR', decay_rate: Number((20 / steps).toPrecision(3)) }),
  custom: null,
};

/// The schedule configuration of a run for a number of steps (presets scale with it).
function scheduleFor(run, steps) {
  const kind = run.schedule?.kind ?? 'constant';
  if (kind === 'custom') return run.schedule.config ?? null;
  return (SCHEDULES[kind] ?? SCHEDULES.constant)(steps);
}

function scheduleInput(run) {
  const box = document.createElement('div');
  const label = document.createElement('label');
  label.append('schedule ');
  const select = document.createElement('select');
  select.dataset.schedule = '';
  const kind = run.schedule?.kind ?? 'constant';
  for (const name of Object.keys(SCHEDULES)) select.add(new Option(name, name, false, name === kind));
  label.append(select);
  const text = document.createElement('input');
  text.type = 'text';
  text.size = 38;
  text.title = 'torch.optim.lr_scheduler as JSON: {"name": "StepLR", "step_size": 100, "gamma": 0.5}';
  text.value = JSON.stringify(scheduleFor(run, demo.state.steps));
  text.hidden = kind === 'constant';
  select.onchange = () => {
    run.schedule = select.value === 'custom'
      ? { kind: 'custom', config: scheduleFor(run, demo.state.steps) }
      : { kind: select.value };
    compute();
  };
  text.onchange = () => {
    try {
      run.schedule = { kind: 'custom', config: JSON.parse(text.value) };
    } catch (e) {
      run.schedule = { kind: 'custom', config: text.value }; // reported by the library
    }
    compute();
  };
  box.append(label, text);
  return box;
}

/// An editor for one hyper-parameter: a number, a flag, or a pair (betas).
function hpInput(run, key, fallback) {
  const label = document.createElement('label');
  label.append(key + ' ');
  const current = run.hp[key] ?? fallback;
  // An empty number field is null (Adafactor's eps[0]: machine epsilon).
  const number = (get, set) => {
    const input = document.createElement('input');
    input.type = 'number';
    input.step = 'any';
    input.value = get() ?? '';
    input.dataset.hp = key;
    input.onchange = () => { set(input.value === '' ? null : Number(input.value)); compute(); };
    return input;
  };
  if (typeof fallback === 'boolean') {
    const input = document.createElement('input');
    input.type = 'checkbox';
    input.checked = current;
    input.dataset.hp = key;
    input.onchange = () => { run.hp[key] = input.checked; compute(); };
    label.append(input);
  } else if (typeof fallback === 'string' || fallback === null) {
    // Named choices (Muon's ns_precision, adjust_lr_fn, L-BFGS's line_search_fn) or an optional
    // number (L-BFGS's max_eval); empty is null.
    const input = document.createElement('input');
    input.type = 'text';
    input.size = 12;
    input.value = current ?? '';
    input.dataset.hp = key;
    input.onchange = () => {
      const text = input.value.trim();
      run.hp[key] = text === '' ? null : (Number.isFinite(Number(text)) ? Number(text) : text);
      compute();
    };
    label.append(input);
  } else if (Array.isArray(fallback)) {
    const pair = [...current];
    run.hp[key] = pair;
    pair.forEach((_, j) => label.append(number(() => pair[j], (v) => { pair[j] = v; })));
  } else {
    label.append(number(() => current, (v) => { run.hp[key] = v; }));
  }
  return label;
}

function renderBasinRuns() {
  const select = $('basin-run');
  select.replaceChildren();
  // A basin map runs thousands of independent starts: element-wise rules and Newton's methods.
  demo.state.runs.forEach((run, i) => {
    const option = new Option(`${i + 1}: ${run.optimizer}`, i, false, i === demo.state.basin.run);
    if (!BASIN_RULES.has(run.optimizer)) {
      option.disabled = true;
      option.text += run.optimizer === 'LBFGS' ? ' (one L-BFGS per start: no basin map)' : ' (works per tensor: no basin map)';
    }
    select.add(option);
  });
}

function renderLegend() {
  const legend = $('legend');
  legend.replaceChildren();
  const report = demo.lastReport;
  if (!report) return;
  report.runs.forEach((run, i) => {
    const line = document.createElement('div');
    const losses = run.losses[0];
    const last = losses[losses.length - 1];
    const end = run.paths[0][run.paths[0].length - 1];
    const lr = run.hyperparameters.lr;
    const schedule = run.schedule ? `, ${run.schedule.name}: ${fmt(run.lr[0])} → ${fmt(run.lr[run.lr.length - 1])}` : '';
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = COLOURS[i % COLOURS.length];
    line.append(swatch,
      `${run.optimizer} (lr ${lr}${schedule}): f = ${fmt(last)} at (${fmt(end[0])}, ${fmt(end[1])}); ` +
      `${report.steps} steps, ${run.dispatches} dispatches, ${run.elapsed_ms.toFixed(1)} ms on the ${report.backend === 'cpu' || run.fallback ? 'CPU' : 'GPU'}` +
      (run.gpu_bytes === undefined ? '' :
        `; optimizer memory ${bytes(run.gpu_bytes)}, state ${run.state_dtype ?? 'f32'} (${run.state_bytes_per_parameter.toFixed(2)} B/param)`) +
      progress(report, run));
    legend.append(line);
  });
}

/// What the legend adds about a run's progress: when it first reached f < 1e-6 (with the
/// gradient evaluations it took: one per step for an update rule, L-BFGS's closure
/// evaluations), Newton's singular Hessians, damped Newton's rejected steps and damping.
function progress(report, run) {
  const parts = [];
  const losses = run.losses[0];
  if (fn().log_scale) {
    const k = losses.findIndex((v) => Number.isFinite(v) && v < REACHED);
    if (k < 0) {
      parts.push('f < 1e-6 not reached');
    } else {
      const step = report.sampled_steps[k];
      const evaluations = run.evaluations ? run.evaluations[0][k] : null;
      parts.push(`f < 1e-6 at step ${step}` + (evaluations === null ? '' : ` (${evaluations} gradient evaluations)`));
    }
  }
  if (run.evaluations) {
    const e = run.evaluations[0];
    parts.push(`${e[e.length - 1]} closure evaluations in all`);
  }
  const newton = run.newton?.[0];
  if (newton?.singular_at) parts.push(`Hessian singular at step ${newton.singular_at}: the point stays there`);
  if (newton && newton.damping !== undefined) parts.push(`${newton.rejected} steps rejected, damping λ = ${fmt(newton.damping)}`);
  if (run.fallback) parts.push(`NOT on the GPU: ${run.fallback}`);
  return parts.length ? '; ' + parts.join('; ') : '';
}

function fmt(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return 'diverged';
  return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(4);
}

function showStatus(text, kind) {
  const status = $('status');
  status.textContent = text;
  status.className = `status ${kind}`;
}

// ---- drawing ----

function colourMap(t) {
  // The same ramp as the native PNG's (src/bin/wgpu-optim/plot.rs).
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

function contourImage(ctx, width, height) {
  const levels = wasm.contour_levels(demo.state.function, width, height);
  let lo = Infinity, hi = -Infinity;
  for (const v of levels) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = Math.max(hi - lo, 1e-12);
  const band = (v) => Math.floor(((v - lo) / span) * 24);
  const image = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      let [r, g, b] = colourMap((levels[i] - lo) / span);
      const edge = (x + 1 < width && band(levels[i + 1]) !== band(levels[i])) ||
        (y + 1 < height && band(levels[i + width]) !== band(levels[i]));
      if (edge) { r *= 0.6; g *= 0.6; b *= 0.6; }
      image.data.set([r, g, b, 255], i * 4);
    }
  }
  return image;
}

function toCanvas(canvas, p) {
  const d = fn().domain;
  return [(p[0] - d.x[0]) / (d.x[1] - d.x[0]) * canvas.width, (d.y[1] - p[1]) / (d.y[1] - d.y[0]) * canvas.height];
}

function fromCanvas(canvas, px, py) {
  const d = fn().domain;
  return [d.x[0] + (px / canvas.width) * (d.x[1] - d.x[0]), d.y[1] - (py / canvas.height) * (d.y[1] - d.y[0])];
}

function finite(p) { return p && p[0] !== null && p[1] !== null && Number.isFinite(p[0]) && Number.isFinite(p[1]); }

function draw() {
  const map = $('map');
  const ctx = map.getContext('2d');
  if (backgroundFor !== demo.state.function) {
    background = contourImage(ctx, map.width, map.height);
    backgroundFor = demo.state.function;
  }
  ctx.putImageData(background, 0, 0);
  ctx.lineWidth = 2;
  for (const m of fn().minima) {
    const [x, y] = toCanvas(map, m);
    ctx.strokeStyle = '#fff';
    ctx.beginPath(); ctx.moveTo(x - 5, y - 5); ctx.lineTo(x + 5, y + 5); ctx.moveTo(x + 5, y - 5); ctx.lineTo(x - 5, y + 5); ctx.stroke();
  }
  const report = demo.lastReport;
  const shown = Math.min(cursor, demo.state.steps);
  if (report) {
    report.runs.forEach((run, i) => {
      const colour = COLOURS[i % COLOURS.length];
      for (const path of run.paths) {
        ctx.beginPath();
        let last = null;
        for (let s = 0; s <= shown && s < path.length; s++) {
          if (!finite(path[s])) break;
          const [x, y] = toCanvas(map, path[s]);
          if (Math.abs(x) > 1e5 || Math.abs(y) > 1e5) break;
          if (last) ctx.lineTo(x, y); else ctx.moveTo(x, y);
          last = [x, y];
        }
        ctx.strokeStyle = 'rgba(0, 0, 0, 0.7)'; // an outline, so that every colour shows on the map
        ctx.lineWidth = 4;
        ctx.stroke();
        ctx.strokeStyle = colour;
        ctx.lineWidth = 2;
        ctx.stroke();
        if (last) {
          ctx.fillStyle = colour;
          ctx.beginPath(); ctx.arc(last[0], last[1], 5, 0, 2 * Math.PI); ctx.fill();
          ctx.strokeStyle = '#000';
          ctx.lineWidth = 1;
          ctx.stroke();
        }
      }
    });
  }
  const [sx, sy] = toCanvas(map, startPoint());
  ctx.fillStyle = '#fff';
  ctx.beginPath(); ctx.arc(sx, sy, 4, 0, 2 * Math.PI); ctx.fill();
  drawLoss(shown);
  $('cursor').textContent = `step ${shown} of ${demo.state.steps}`;
}

function drawLoss(shown) {
  const canvas = $('loss');
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#111';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const report = demo.lastReport;
  if (!report) return;
  const log = fn().log_scale;
  const y = (v) => (log ? Math.log10(Math.max(v, 1e-12)) : v);
  let lo = Infinity, hi = -Infinity;
  for (const run of report.runs) for (const v of run.losses[0]) if (Number.isFinite(v)) { lo = Math.min(lo, y(v)); hi = Math.max(hi, y(v)); }
  if (!Number.isFinite(lo)) return;
  if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  const pad = { l: 48, r: 8, t: 8, b: 22 };
  const W = canvas.width - pad.l - pad.r, H = canvas.height - pad.t - pad.b;
  const px = (s) => pad.l + (s / Math.max(report.steps, 1)) * W;
  const py = (v) => pad.t + (1 - (y(v) - lo) / (hi - lo)) * H;
  ctx.strokeStyle = '#444';
  ctx.strokeRect(pad.l, pad.t, W, H);
  ctx.fillStyle = '#aaa';
  ctx.font = '11px sans-serif';
  ctx.fillText(log ? `1e${hi.toFixed(1)}` : hi.toPrecision(3), 2, pad.t + 10);
  ctx.fillText(log ? `1e${lo.toFixed(1)}` : lo.toPrecision(3), 2, pad.t + H);
  ctx.fillText('step', pad.l + W / 2, canvas.height - 6);
  ctx.fillText(`loss${log ? ' (log)' : ''}`, 2, pad.t + H / 2);
  report.runs.forEach((run, i) => {
    ctx.strokeStyle = COLOURS[i % COLOURS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    const losses = run.losses[0];
    let started = false;
    for (let s = 0; s <= shown && s < losses.length; s++) {
      const v = losses[s];
      if (!Number.isFinite(v)) break;
      const step = report.sampled_steps[s];
      if (started) ctx.lineTo(px(step), py(v)); else ctx.moveTo(px(step), py(v));
      started = true;
    }
    ctx.stroke();
  });
}

// ---- the basin map ----

function basinColour(basin, level, lo, hi) {
  if (basin === -2) return [0, 0, 0];
  const bright = 1 - 0.75 * Math.min(Math.max((level - lo) / Math.max(hi - lo, 1e-12), 0), 1);
  if (basin === -1) return [150, 150, 150].map((c) => c * bright);
  const hue = (basin * 0.618033988749895) % 1;
  return hslToRgb(hue, 0.75, 0.25 + 0.4 * bright);
}

function hslToRgb(h, s, l) {
  const f = (n) => {
    const k = (n + h * 12) % 12;
    return 255 * (l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)));
  };
  return [f(0), f(8), f(4)];
}

async function launchBasin() {
  const run = demo.state.runs[demo.state.basin.run];
  if (!run || run.error) { $('basin-info').textContent = 'choose a valid optimizer'; return; }
  const spec = {
    function: demo.state.function,
    ...runSpec(run, demo.state.basin.steps),
    steps: demo.state.basin.steps,
    resolution: demo.state.basin.resolution,
  };
  const n = spec.resolution * spec.resolution;
  $('basin-info').textContent = `running ${n.toLocaleString()} starts × ${spec.steps.toLocaleString()} steps…`;
  try {
    const report = await demo.runBasin(spec);
    demo.lastBasin = report;
    drawBasin(report);
    const named = report.basin.filter((b) => b >= 0).length;
    const diverged = report.basin.filter((b) => b === -2).length;
    $('basin-info').textContent = `${n.toLocaleString()} starts × ${spec.steps.toLocaleString()} steps of ${report.optimizer}: ` +
      `${report.elapsed_ms.toFixed(0)} ms on the ${report.backend === 'cpu' ? 'CPU reference' : 'GPU'}; ` +
      `${named} ended at a minimum, ${diverged} diverged`;
  } catch (e) {
    $('basin-info').textContent = `error: ${e.message ?? e}`;
  }
}

function drawBasin(report) {
  const canvas = $('basin');
  const ctx = canvas.getContext('2d');
  const n = report.resolution;
  const f = FUNCTIONS.find((g) => g.name === report.function);
  const levels = report.loss.map((v) => (f.log_scale ? Math.log10(Math.max(v, 0) + 1e-3) : v));
  let lo = Infinity, hi = -Infinity;
  for (const v of levels) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const cells = document.createElement('canvas');
  cells.width = n; cells.height = n;
  const cctx = cells.getContext('2d');
  const image = cctx.createImageData(n, n);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < n; i++) {
      const k = j * n + i;               // row j from the bottom
      const [r, g, b] = basinColour(report.basin[k], levels[k], lo, hi);
      image.data.set([r, g, b, 255], ((n - 1 - j) * n + i) * 4);
    }
  }
  cctx.putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = '#fff';
  for (const m of f.minima) {
    const x = (m[0] - report.domain.x[0]) / (report.domain.x[1] - report.domain.x[0]) * canvas.width;
    const y = (report.domain.y[1] - m[1]) / (report.domain.y[1] - report.domain.y[0]) * canvas.height;
    ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.stroke();
  }
  $('basin-legend').textContent = 'Each pixel is a start point, coloured by the minimum its run ended in ' +
    '(grey: none, black: diverged), brighter where the final loss is lower.';
}

// ---- animation ----

function frame() {
  if (playing && demo.lastReport && cursor < demo.state.steps) {
    cursor = Math.min(cursor + demo.state.speed, demo.state.steps);
    draw();
  }
  requestAnimationFrame(frame);
}

function setPlaying(on) {
  playing = on;
  $('play').textContent = on ? 'Pause' : 'Play';
}

// ---- start-up ----

function wire() {
  const select = $('function');
  for (const f of FUNCTIONS) select.add(new Option(f.title, f.name));
  const sync = () => {
    select.value = demo.state.function;
    $('formula').textContent = `f(x, y) = ${fn().formula}`;
    $('steps').value = demo.state.steps;
    $('speed').value = demo.state.speed;
    $('speed-value').textContent = demo.state.speed;
    const [x, y] = startPoint();
    $('start').textContent = `(${x.toFixed(3)}, ${y.toFixed(3)})`;
    $('basin-resolution').value = demo.state.basin.resolution;
    $('basin-steps').value = demo.state.basin.steps;
  };
  select.onchange = () => { demo.state.function = select.value; demo.state.start = null; sync(); compute(); };
  $('steps').onchange = () => { demo.state.steps = Math.max(1, Math.min(100000, Math.round(Number($('steps').value) || 1))); sync(); compute(); };
  $('speed').oninput = () => { demo.state.speed = Number($('speed').value); sync(); saveState(); };
  $('map').onclick = (event) => {
    const rect = $('map').getBoundingClientRect();
    const [x, y] = fromCanvas($('map'), event.clientX - rect.left, event.clientY - rect.top);
    demo.state.start = [Number(x.toFixed(4)), Number(y.toFixed(4))];
    sync();
    compute();
  };
  $('play').onclick = () => {
    if (!playing && cursor >= demo.state.steps) cursor = 0;
    setPlaying(!playing);
  };
  $('step').onclick = () => { setPlaying(false); cursor = Math.min(cursor + 1, demo.state.steps); draw(); };
  $('reset').onclick = () => { cursor = 0; draw(); };
  $('share').onclick = async () => {
    saveState();
    try { await navigator.clipboard.writeText(location.href); $('share').textContent = 'Copied'; } catch { $('share').textContent = 'See the address bar'; }
    setTimeout(() => { $('share').textContent = 'Copy link'; }, 1500);
  };
  for (const name of Object.keys(OPTIMIZERS)) $('add-optimizer').add(new Option(name, name));
  $('state-dtype').value = demo.state.stateDtype ?? 'f32';
  $('state-dtype').onchange = () => { demo.state.stateDtype = $('state-dtype').value; compute(); };
  $('add-run').onclick = () => {
    const optimizer = $('add-optimizer').value;
    demo.state.runs.push({ optimizer, hp: { lr: OPTIMIZERS[optimizer].lr } });
    renderBasinRuns();
    compute();
  };
  $('basin-run').onchange = () => { demo.state.basin.run = Number($('basin-run').value); saveState(); };
  $('basin-resolution').onchange = () => { demo.state.basin.resolution = Math.max(1, Math.min(1024, Math.round(Number($('basin-resolution').value) || 1))); saveState(); };
  $('basin-steps').onchange = () => { demo.state.basin.steps = Math.max(1, Math.min(100000, Math.round(Number($('basin-steps').value) || 1))); saveState(); };
  $('basin-go').onclick = launchBasin;
  $('export').onclick = () => {
    const blob = new Blob([JSON.stringify(trajectorySpec(), null, 1)], { type: 'application/json' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'spec.json';
    a.click();
  };
  for (const [name, lesson] of Object.entries(LESSONS)) {
    const button = document.createElement('button');
    button.textContent = lesson.title;
    button.dataset.lesson = name;
    button.onclick = () => showLesson(name);
    $('lessons').append(button);
  }
  demo.sync = sync;
  sync();
}

/// Sets a lesson's function, start, steps and runs, explains what to look for, and runs it.
function showLesson(name) {
  const lesson = LESSONS[name];
  Object.assign(demo.state, structuredClone(lesson.state));
  demo.state.basin.run = Math.min(demo.state.basin.run, demo.state.runs.length - 1);
  $('lesson').textContent = lesson.text;
  demo.sync();
  renderBasinRuns();
  cursor = 0;
  setPlaying(true);
  return compute();
}
demo.showLesson = showLesson;

/// What the browser says about its WebGPU adapter (GPUAdapterInfo).
async function webgpuAdapterInfo() {
  if (!navigator.gpu) return null;
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' }).catch(() => null);
  if (!adapter) return null;
  const info = adapter.info ?? {};
  return {
    vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description,
    isFallbackAdapter: info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? false,
  };
}

async function main() {
  await initWasm();
  FUNCTIONS = JSON.parse(wasm.functions());
  const optimizers = JSON.parse(wasm.optimizers());
  OPTIMIZERS = Object.fromEntries(optimizers.map((o) => [o.name, o.defaults]));
  BASIN_RULES = new Set(optimizers.filter((o) => o.basin).map((o) => o.name));
  SCHEDULABLE = new Set(optimizers.filter((o) => o.schedule).map((o) => o.name));
  const wantGpu = !new URLSearchParams(location.search).has('cpu');
  demo.gpuInfo = wantGpu ? await webgpuAdapterInfo() : null;
  const label = demo.gpuInfo ? [demo.gpuInfo.vendor, demo.gpuInfo.architecture, demo.gpuInfo.device].filter(Boolean).join(' ') : '';
  demo.info = JSON.parse(await wasm.init(wantGpu, label || 'WebGPU adapter'));
  if (demo.info.backend === 'cpu') demo.gpuInfo = null;
  if (demo.info.backend === 'cpu') {
    showStatus(`No WebGPU here: ${demo.info.fallback_reason}. Falling back to the library's CPU reference compiled to wasm: ` +
      'these runs are NOT on the GPU.', 'cpu');
  } else {
    const g = demo.gpuInfo ?? {};
    const named = [g.vendor, g.architecture, g.device, g.description].filter(Boolean).join(' / ') || demo.info.adapter;
    showStatus(`WebGPU adapter: ${named}${g.isFallbackAdapter ? ' (a software adapter)' : ''}. ` +
      'Every step below is a WGSL dispatch on it.', 'gpu');
  }
  demo.state = loadState();
  wire();
  renderBasinRuns();
  await compute();
  requestAnimationFrame(frame);
}

demo.ready = main().catch((e) => {
  showStatus(`error: ${e.message ?? e}`, 'error');
  throw e;
});
