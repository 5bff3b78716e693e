// The browser test of the demo: Debian's Chromium, headless with --enable-unsafe-webgpu
// (SwiftShader's WebGPU adapter), driven by playwright-core (no downloaded browser).
//
// It proves that the page runs on WebGPU (not its CPU fallback), that its trajectories match
// the native `wgpu-optim trajectories` output for every update rule, Newton's methods and
// L-BFGS on every test function, that it draws, that its controls change the result, that its
// lessons (Newton on a quadratic and on a saddle, L-BFGS against Adam) show what they claim,
// and times the basin map.
//
// Needs: web/build.sh done (web/www/pkg), the native binary (target/debug/wgpu-optim, or
// $WGPU_OPTIM_BIN), Chromium (/usr/lib/chromium/chromium, or $CHROMIUM). Run: web/test.sh.
// SCREENSHOT=path writes the page's screenshot there (web/screenshot.png for the README).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const WEB = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const REPO = path.dirname(WEB);
const WWW = path.join(WEB, 'www');
const NATIVE = process.env.WGPU_OPTIM_BIN ?? path.join(REPO, 'target', 'debug', 'wgpu-optim');
const CHROMIUM = process.env.CHROMIUM ?? ['/usr/lib/chromium/chromium', '/usr/bin/chromium'].find((p) => fs.existsSync(p));
const SCRATCH = fs.mkdtempSync(path.join(os.tmpdir(), 'wgpu-optim-web-test-'));

// Page (SwiftShader WebGPU) against native (wgpu on the machine's adapter): both run the same
// WGSL, in f32, but two compilers may contract a*b+c into one fused multiply-add or not and
// WebGPU allows 2.5 ulp divisions and inexact sqrt/sin, so positions differ in the last bits
// after the first few steps and those differences are carried along the path. The bound is
// on the largest coordinate difference over every sampled step, relative to the width of the
// function's domain: TOLERANCE (measured: see TOLERANCE_NOTE printed by the test).
const TOLERANCE = 1e-4;

let server;
let baseUrl;
let context;
let page;

function serveStatic(root) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
  return http.createServer((request, response) => {
    const url = new URL(request.url, 'http://127.0.0.1');
    const file = path.join(root, path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, ''));
    const target = file.endsWith(path.sep) ? path.join(file, 'index.html') : file;
    fs.readFile(target, (error, data) => {
      if (error) { response.writeHead(404); response.end('not found'); return; }
      response.writeHead(200, { 'content-type': types[path.extname(target)] ?? 'application/octet-stream' });
      response.end(data);
    });
  });
}

async function openPage(query = '', hash = '') {
  const p = await context.newPage();
  p.on('console', (message) => { if (message.type() === 'error') console.error(`[page] ${message.text()}`); });
  p.on('pageerror', (error) => console.error(`[page error] ${error}`));
  await p.goto(`${baseUrl}/${query}${hash}`);
  await p.waitForFunction(() => window.demo && window.demo.ready);
  await p.evaluate(() => window.demo.ready);
  return p;
}

function native(spec, extra = []) {
  const name = `spec-${Math.random().toString(36).slice(2)}`;
  const specFile = path.join(SCRATCH, `${name}.json`);
  const outFile = path.join(SCRATCH, `${name}.out.json`);
  fs.writeFileSync(specFile, JSON.stringify(spec));
  execFileSync(NATIVE, ['trajectories', '--config', specFile, '--out', outFile, ...extra], {
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return JSON.parse(fs.readFileSync(outFile, 'utf8'));
}

const DOMAIN_WIDTH = { rosenbrock: 4, beale: 9, himmelblau: 10, rastrigin: 10.24, saddle: 4, ill_conditioned: 6, booth: 20 };

/// Largest |web − native| over every run, start, sample and coordinate, relative to the domain
/// width (`relative`: to the larger of the width and the coordinates, for runs that leave the
/// map by orders of magnitude, as damped Newton does on the saddle). L-BFGS's evaluation counts
/// and Newton's singular steps must be equal.
function pathDifference(web, nat, relative = false) {
  assert.equal(web.runs.length, nat.runs.length);
  assert.deepEqual(web.sampled_steps, nat.sampled_steps);
  let worst = 0;
  web.runs.forEach((run, r) => {
    assert.equal(run.optimizer, nat.runs[r].optimizer);
    assert.deepEqual(run.hyperparameters, nat.runs[r].hyperparameters);
    if (run.fallback) {
      // src/lbfgs binds one placeholder buffer to two writable bindings, which WebGPU rejects
      // (wgpu natively does not): until it binds two, the page runs L-BFGS on its CPU twin.
      assert.equal(run.optimizer, 'LBFGS', `only L-BFGS falls back: ${run.fallback}`);
      console.log(`LBFGS_FALLBACK: ${run.fallback.split('\n')[0]}`);
    }
    assert.deepEqual(run.evaluations, nat.runs[r].evaluations, `${run.optimizer}: closure evaluations`);
    // Newton: the same singular steps; damped Newton's rejections may differ by a step or two
    // once a run sits at a minimum, where accepting a step that lowers f by its last bit
    // depends on that bit.
    (run.newton ?? []).forEach((stats, s) => {
      const other = nat.runs[r].newton[s];
      assert.equal(stats.singular_at, other.singular_at, `${run.optimizer}: singular step`);
      assert.ok(Math.abs(stats.rejected - other.rejected) <= 2, `${run.optimizer}: ${stats.rejected} against ${other.rejected} rejected steps`);
    });
    assert.equal(run.newton === undefined, nat.runs[r].newton === undefined);
    run.paths.forEach((p, s) => {
      const q = nat.runs[r].paths[s];
      assert.equal(p.length, q.length);
      for (let k = 0; k < p.length; k++) {
        for (const c of [0, 1]) {
          const a = p[k][c], b = q[k][c];
          assert.ok(a !== null && b !== null, `${run.optimizer}: non-finite position at sample ${k}`);
          const scale = relative ? Math.max(DOMAIN_WIDTH[web.function], Math.abs(a), Math.abs(b)) : DOMAIN_WIDTH[web.function];
          worst = Math.max(worst, Math.abs(a - b) / scale);
        }
      }
    });
  });
  return worst;
}

/// Every update rule and every function, with flags (nesterov, amsgrad, centered, decoupled).
const CASES = [
  { function: 'rosenbrock', runs: [
    { optimizer: 'Adam', hyperparameters: { lr: 0.05 } },
    { optimizer: 'SGD', hyperparameters: { lr: 0.001, momentum: 0.9, nesterov: true } },
    { optimizer: 'NAdam', hyperparameters: { lr: 0.02 } } ] },
  { function: 'himmelblau', runs: [
    { optimizer: 'RMSprop', hyperparameters: { lr: 0.01, centered: true, momentum: 0.5 } },
    { optimizer: 'Adagrad', hyperparameters: { lr: 0.5 } } ] },
  { function: 'beale', runs: [
    { optimizer: 'Adadelta', hyperparameters: { lr: 1.0 } },
    { optimizer: 'AdamW', hyperparameters: { lr: 0.01, weight_decay: 0.01, amsgrad: true } },
    { optimizer: 'AdamWScheduleFree', hyperparameters: { lr: 0.05, warmup_steps: 10 } } ] },
  { function: 'rastrigin', runs: [{ optimizer: 'SGD', hyperparameters: { lr: 0.002 } }] },
  { function: 'saddle', runs: [{ optimizer: 'Adam', hyperparameters: { lr: 0.01 } }] },
  { function: 'ill_conditioned', runs: [{ optimizer: 'SGD', hyperparameters: { lr: 0.015, momentum: 0.5 } }] },
  { function: 'booth', runs: [
    { optimizer: 'RMSprop', hyperparameters: { lr: 0.05 } },
    { optimizer: 'Adam', hyperparameters: { lr: 0.5 }, schedule: { name: 'SequentialLR', milestones: [30], schedulers: [
      { name: 'LinearLR', start_factor: 0.1, total_iters: 30 }, { name: 'CosineAnnealingLR', T_max: 270 }] } },
    { optimizer: 'SGD', hyperparameters: { lr: 0.02 }, schedule: { name: 'StepLR', step_size: 100, gamma: 0.5 } },
    { optimizer: 'NAdam', hyperparameters: { lr: 0.5 }, schedule: { name: 'ExponentialLR', gamma: 0.99 } },
    { optimizer: 'Adagrad', hyperparameters: { lr: 2 }, schedule: { name: 'InverseTimeLR', decay_rate: 0.05 } }] },
  // Rules that work per tensor: each start point is a 1x2 tensor of its own. Their norms are sums
  // that drivers may fuse into multiply-adds, and long paths amplify a last-bit difference, so
  // they are compared over 40 steps.
  { function: 'himmelblau', steps: 40, runs: [
    { optimizer: 'Lamb', hyperparameters: { lr: 0.02, max_grad_norm: null } },
    { optimizer: 'Adafactor', hyperparameters: { lr: 0.05 } },
    { optimizer: 'Muon', hyperparameters: { lr: 0.02, weight_decay: 0 } },
    { optimizer: 'Muon', hyperparameters: { lr: 0.02, weight_decay: 0, ns_precision: 'float32', nesterov: false } },
    { optimizer: 'SparseAdam', hyperparameters: { lr: 0.05 } }] },
  // Newton's methods (the Hessians in WGSL beside the gradients) and L-BFGS (the library's
  // torch.optim.LBFGS per start point, its closure a WGSL dispatch). 60 steps: each L-BFGS
  // iteration waits for a few GPU read-backs (about 60 ms per iteration on SwiftShader).
  { function: 'ill_conditioned', steps: 60, runs: [
    { optimizer: 'Newton', hyperparameters: {} },
    { optimizer: 'DampedNewton', hyperparameters: {} },
    { optimizer: 'LBFGS', hyperparameters: { line_search_fn: 'strong_wolfe' } }] },
  { function: 'rosenbrock', steps: 60, starts: [[-1.2, 1], [1.5, -0.5]], runs: [
    { optimizer: 'Newton', hyperparameters: { lr: 0.5 } },
    { optimizer: 'DampedNewton', hyperparameters: { grow: 10 } },
    { optimizer: 'LBFGS', hyperparameters: { line_search_fn: 'strong_wolfe', max_iter: 1, max_eval: 25 } },
    { optimizer: 'LBFGS', hyperparameters: { history_size: 5, max_iter: 4 } }] },
  { function: 'himmelblau', steps: 60, starts: [[0, 0], [-1, 2.5]], runs: [
    { optimizer: 'Newton', hyperparameters: {} },
    { optimizer: 'DampedNewton', hyperparameters: {} },
    { optimizer: 'LBFGS', hyperparameters: { line_search_fn: 'strong_wolfe', max_iter: 1, max_eval: 25 } }] },
  { function: 'booth', steps: 60, runs: [
    { optimizer: 'DampedNewton', hyperparameters: { damping: 10, shrink: 0.5 } },
    { optimizer: 'LBFGS', hyperparameters: { line_search_fn: 'strong_wolfe' } }] },
  { function: 'beale', steps: 300, runs: [{ optimizer: 'DampedNewton', hyperparameters: {} }] },
  { function: 'saddle', starts: [[1, 0.1]], steps: 12, relative: true, runs: [
    { optimizer: 'Newton', hyperparameters: {} },
    { optimizer: 'DampedNewton', hyperparameters: {} }] },
];

before(async () => {
  assert.ok(CHROMIUM, 'Chromium not found: apt-get install -y chromium chromium-driver (web/test.sh does)');
  assert.ok(fs.existsSync(path.join(WWW, 'pkg', 'wgpu_optim_web_bg.wasm')), 'run web/build.sh first');
  assert.ok(fs.existsSync(NATIVE), `native binary ${NATIVE} missing: cargo build --bin wgpu-optim`);
  server = serveStatic(WWW);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${server.address().port}`;
  context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'wgpu-optim-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1520, height: 1000 },
    args: [
      '--enable-unsafe-webgpu', '--no-sandbox', '--disable-gpu-sandbox', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    ],
  });
  page = await openPage();
});

after(async () => {
  await context?.close();
  server?.close();
  fs.rmSync(SCRATCH, { recursive: true, force: true });
});

test('the page runs on a WebGPU adapter, not the CPU fallback', async () => {
  const { info, gpuInfo, status } = await page.evaluate(() => ({
    info: window.demo.info, gpuInfo: window.demo.gpuInfo, status: document.getElementById('status').textContent,
  }));
  console.log(`WebGPU adapter: ${JSON.stringify(gpuInfo)}; wgpu: ${info.adapter}`);
  assert.equal(info.backend, 'browserwebgpu');
  assert.equal(info.fallback_reason, null);
  assert.ok(gpuInfo, 'navigator.gpu gives an adapter');
  assert.match(status, /^WebGPU adapter: /);
  const report = await page.evaluate(() => window.demo.lastReport);
  assert.equal(report.backend, 'browserwebgpu');
});

test('trajectories match the native `wgpu-optim trajectories` for every rule and function', async () => {
  let worst = 0;
  for (const c of CASES) {
    const spec = { function: c.function, steps: c.steps ?? 300, sample_every: 1, starts: c.starts ?? [], runs: c.runs };
    const web = await page.evaluate((s) => window.demo.runTrajectories(s), spec);
    assert.equal(web.backend, 'browserwebgpu');
    const nat = native(spec);
    const difference = pathDifference(web, nat, c.relative);
    const names = c.runs.map((r) => r.optimizer).join(', ');
    console.log(`${c.function} (${names}): max |web - native| = ${difference.toExponential(2)} of the domain width (native: ${nat.adapter})`);
    assert.ok(difference <= TOLERANCE, `${c.function}: ${difference} > ${TOLERANCE}`);
    worst = Math.max(worst, difference);
  }
  console.log(`TOLERANCE_NOTE: worst page/native difference ${worst.toExponential(2)} of the domain width; tolerance ${TOLERANCE}`);
});

test('the page\'s own run (its spec and report) matches the native command', async () => {
  const { spec, report } = await page.evaluate(() => ({ spec: window.demo.lastSpec, report: window.demo.lastReport }));
  assert.ok(spec.runs.length >= 2);
  const difference = pathDifference(report, native(spec));
  console.log(`page defaults on ${spec.function}: max |web - native| = ${difference.toExponential(2)}`);
  assert.ok(difference <= TOLERANCE);
});

test('the page draws: the map, the paths and the loss chart are not blank', async () => {
  await page.evaluate(() => { document.getElementById('reset').click(); document.getElementById('play').textContent === 'Play' && document.getElementById('play').click(); });
  await page.waitForFunction(() => /step (\d+) of \1$/.test(document.getElementById('cursor').textContent), null, { timeout: 60_000 });
  const stats = await page.evaluate(() => {
    const count = (id, rgb) => {
      const c = document.getElementById(id);
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const colours = new Set();
      let matching = 0;
      for (let i = 0; i < data.length; i += 4) {
        colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
        if (rgb && Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]) < 40) matching++;
      }
      return { colours: colours.size, matching };
    };
    return { map: count('map', [60, 180, 75]), loss: count('loss', [60, 180, 75]) }; // run 2's colour
  });
  console.log(`map: ${stats.map.colours} colours, ${stats.map.matching} path pixels; loss chart: ${stats.loss.colours} colours`);
  assert.ok(stats.map.colours > 100, 'contour map drawn');
  assert.ok(stats.map.matching > 50, 'a path drawn in its colour');
  assert.ok(stats.loss.matching > 50, 'a loss curve drawn');
  const shot = await page.screenshot({ fullPage: true });
  fs.writeFileSync(path.join(SCRATCH, 'screenshot.png'), shot);
  assert.ok(shot.length > 30_000, 'a screenshot with content');
});

test('controls change the result, and the URL carries the settings', async () => {
  const before = await page.evaluate(() => ({ n: window.demo.computations, report: window.demo.lastReport }));
  // The function.
  await page.selectOption('#function', 'himmelblau');
  await page.waitForFunction((n) => window.demo.computations > n && window.demo.lastReport.function === 'himmelblau', before.n);
  // A learning rate (run 2, Adam).
  let n = await page.evaluate(() => window.demo.computations);
  const lr = page.locator('#runs .run').nth(1).locator('input[data-hp="lr"]');
  await lr.fill('0.2');
  await lr.dispatchEvent('change');
  await page.waitForFunction((m) => window.demo.computations > m, n);
  const changed = await page.evaluate(() => window.demo.lastReport);
  assert.equal(changed.runs[1].hyperparameters.lr, 0.2);
  // The start point: a click on the map.
  n = await page.evaluate(() => window.demo.computations);
  await page.locator('#map').click({ position: { x: 420, y: 140 } });
  await page.waitForFunction((m) => window.demo.computations > m, n);
  const clicked = await page.evaluate(() => window.demo.lastReport);
  const start = clicked.starts[0];
  assert.ok(Math.abs(start[0] - 2.5) < 0.05 && Math.abs(start[1] - 2.5) < 0.05, `start ${start}`);
  assert.notDeepEqual(clicked.runs[1].paths, before.report.runs[1].paths);
  // A learning-rate schedule (run 1: cosine annealing, run by the library's schedule module).
  n = await page.evaluate(() => window.demo.computations);
  await page.locator('#runs .run').nth(0).locator('select[data-schedule]').selectOption('cosine');
  await page.waitForFunction((m) => window.demo.computations > m, n);
  const scheduled = await page.evaluate(() => window.demo.lastReport.runs[0]);
  assert.equal(scheduled.schedule.name, 'CosineAnnealingLR');
  assert.ok(scheduled.lr[0] > scheduled.lr[250] && scheduled.lr[250] > scheduled.lr[499], 'the learning rate anneals');
  assert.notDeepEqual(scheduled.paths, clicked.runs[0].paths);
  const withSchedule = await page.evaluate(() => ({ spec: window.demo.lastSpec, report: window.demo.lastReport }));
  assert.ok(pathDifference(withSchedule.report, native(withSchedule.spec)) <= TOLERANCE, 'the scheduled page run matches native');
  // Step and reset.
  await page.click('#play'); // pause
  await page.click('#reset');
  assert.equal(await page.textContent('#cursor'), `step 0 of ${clicked.steps}`);
  assert.equal(await page.textContent('#play'), 'Play');
  await page.click('#step');
  await page.click('#step');
  assert.equal(await page.textContent('#cursor'), `step 2 of ${clicked.steps}`);
  // The shareable URL reproduces the settings and the result.
  const url = page.url();
  const copy = await context.newPage();
  await copy.goto(url);
  await copy.waitForFunction(() => window.demo && window.demo.ready);
  await copy.evaluate(() => window.demo.ready);
  const shared = await copy.evaluate(() => window.demo.lastReport);
  const latest = withSchedule.report;
  assert.deepEqual(shared.starts, latest.starts);
  assert.deepEqual(shared.runs.map((r) => [r.hyperparameters, r.schedule ?? null]), latest.runs.map((r) => [r.hyperparameters, r.schedule ?? null]));
  assert.deepEqual(shared.runs.map((r) => r.paths), latest.runs.map((r) => r.paths));
  await copy.close();
  // An invalid value is reported, not run.
  n = await page.evaluate(() => window.demo.computations);
  await lr.fill('-1');
  await lr.dispatchEvent('change');
  await page.waitForFunction(() => document.querySelector('#runs .run:nth-child(2) .error'));
  assert.match(await page.textContent('#runs .run:nth-child(2) .error'), /lr/);
  n = await page.evaluate(() => window.demo.computations);
  await lr.fill('0.05');
  await lr.dispatchEvent('change');
  await page.waitForFunction((m) => window.demo.computations > m, n);
  assert.equal(await page.locator('#runs .run:nth-child(2) .error').count(), 0);
});

test('basin map: 10,000 starts x 1,000 steps of Adam on Rosenbrock', async () => {
  const spec = { function: 'rosenbrock', optimizer: 'Adam', hyperparameters: { lr: 0.02 }, steps: 1000, resolution: 100 };
  const times = [];
  let report;
  for (let i = 0; i < 3; i++) {
    report = await page.evaluate((s) => window.demo.runBasin(s), spec);
    times.push(report.elapsed_ms);
  }
  times.sort((a, b) => a - b);
  assert.equal(report.backend, 'browserwebgpu');
  assert.equal(report.end.length, 20_000);
  assert.equal(report.basin.length, 10_000);
  const converged = report.basin.filter((b) => b === 0).length;
  console.log(`BASIN_MAP_MS: ${times.map((t) => t.toFixed(0)).join(', ')} ms (median ${times[1].toFixed(0)} ms) for 10,000 starts x 1,000 steps of Adam on Rosenbrock; ${converged} ended at (1, 1)`);
  // The same map natively, on a coarser grid: same ends.
  const small = { ...spec, resolution: 12, steps: 200 };
  const web = await page.evaluate((s) => window.demo.runBasin(s), small);
  const specFile = path.join(SCRATCH, 'basin-spec.json');
  fs.writeFileSync(specFile, JSON.stringify({ function: 'rosenbrock', steps: 200, runs: [{ optimizer: 'Adam', hyperparameters: { lr: 0.02 } }] }));
  const outFile = path.join(SCRATCH, 'basin-native.json');
  execFileSync(NATIVE, ['trajectories', '--config', specFile, '--basin', '12', '--out', outFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const nat = JSON.parse(fs.readFileSync(outFile, 'utf8'));
  const worst = Math.max(...web.end.map((v, i) => Math.abs(v - nat.end[i]) / DOMAIN_WIDTH.rosenbrock));
  console.log(`basin 12x12x200: max |web - native| = ${worst.toExponential(2)}`);
  assert.ok(worst <= TOLERANCE);
  // And through the button, which draws it.
  await page.selectOption('#function', 'himmelblau');
  await page.fill('#basin-resolution', '60');
  await page.dispatchEvent('#basin-resolution', 'change');
  await page.fill('#basin-steps', '300');
  await page.dispatchEvent('#basin-steps', 'change');
  await page.selectOption('#basin-run', '1');
  await page.click('#basin-go');
  await page.waitForFunction(() => /ms on the|error|choose/.test(document.getElementById('basin-info').textContent), null, { timeout: 60_000 });
  assert.match(await page.textContent('#basin-info'), /ms on the GPU/);
  const colours = await page.evaluate(() => {
    const c = document.getElementById('basin');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const set = new Set();
    for (let i = 0; i < data.length; i += 4) set.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    return set.size;
  });
  assert.ok(colours > 20, `basin map drawn (${colours} colours)`);
  // The page with everything drawn: paths, loss chart and basin map.
  await page.click('#reset');
  await page.click('#play');
  await page.waitForFunction(() => /step (\d+) of \1$/.test(document.getElementById('cursor').textContent), null, { timeout: 60_000 });
  const shot = await page.screenshot({ fullPage: true });
  const file = process.env.SCREENSHOT ?? path.join(SCRATCH, 'page.png');
  fs.writeFileSync(file, shot);
  console.log(`screenshot: ${file} (${shot.length} bytes)`);
  assert.ok(shot.length > 30_000);
});

test('the lessons: Newton on a quadratic and a saddle, L-BFGS against Adam, as the page shows them', async () => {
  const lesson = async (name) => {
    const n = await page.evaluate(() => window.demo.computations);
    await page.click(`button[data-lesson="${name}"]`);
    await page.waitForFunction((m) => window.demo.computations > m, n, { timeout: 120_000 });
    const seen = await page.evaluate(() => ({
      spec: window.demo.lastSpec, report: window.demo.lastReport,
      legend: document.getElementById('legend').textContent, text: document.getElementById('lesson').textContent,
    }));
    assert.equal(seen.report.backend, 'browserwebgpu');
    assert.ok(seen.text.length > 100, 'the lesson explains itself');
    const difference = pathDifference(seen.report, native(seen.spec), name === 'saddle');
    console.log(`lesson ${name}: max |web - native| = ${difference.toExponential(2)}; legend: ${seen.legend}`);
    assert.ok(difference <= TOLERANCE, `${name}: ${difference}`);
    return seen;
  };
  const loss = (run, k) => run.losses[0][k];

  // Newton reaches the ill-conditioned quadratic's minimum in one step; SGD and Adam do not.
  const quadratic = await lesson('quadratic');
  const [newton, sgd, adam] = quadratic.report.runs;
  assert.equal(newton.optimizer, 'Newton');
  assert.deepEqual(newton.paths[0][1], [0, 0]);
  assert.match(quadratic.legend, /Newton \(lr 1\).*f < 1e-6 at step 1[^0-9]/);
  for (const run of [sgd, adam]) assert.ok(loss(run, 1) > 1, `${run.optimizer} after one step: ${loss(run, 1)}`);

  // Plain Newton walks into the saddle of x² − y² from (1, 0.1); damped Newton leaves it downhill.
  const saddle = await lesson('saddle');
  assert.deepEqual(saddle.report.starts, [[1, 0.1]]);
  const [plain, damped] = saddle.report.runs;
  for (let k = 1; k < plain.paths[0].length; k++) assert.deepEqual(plain.paths[0][k], [0, 0]);
  const walk = damped.paths[0];
  for (let k = 1; k < walk.length; k++) {
    assert.ok(Math.abs(walk[k][1]) >= Math.abs(walk[k - 1][1]), `damped Newton: |y| shrank at step ${k}`);
    assert.ok(loss(damped, k) <= loss(damped, k - 1), `damped Newton: f rose at step ${k}`);
  }
  assert.ok(loss(damped, 2) < 0 && loss(damped, walk.length - 1) < -1e6);
  assert.match(saddle.legend, /DampedNewton.*steps rejected, damping/);

  // L-BFGS reaches f < 1e-6 on Rosenbrock in far fewer gradient evaluations than Adam needs steps.
  const race = await lesson('lbfgs');
  const [lbfgs, ...adams] = race.report.runs;
  const first = (run) => run.losses[0].findIndex((v) => v < 1e-6);
  const k = first(lbfgs);
  assert.ok(k > 0, 'L-BFGS reaches f < 1e-6');
  const evaluations = lbfgs.evaluations[0][k];
  const adamSteps = adams.map((run) => race.report.sampled_steps[first(run)]);
  console.log(`LESSON_NUMBERS: L-BFGS f < 1e-6 at step ${race.report.sampled_steps[k]} after ${evaluations} closure evaluations; ` +
    `Adam ${adams.map((r, i) => `lr ${r.hyperparameters.lr}: step ${adamSteps[i]}`).join(', ')}`);
  for (const steps of adamSteps) assert.ok(steps > 5 * evaluations, `Adam ${steps} steps against ${evaluations} evaluations`);
  assert.match(race.legend, /Adam \(lr 0.05\).*f < 1e-6 at step \d+/);
  assert.match(race.legend, /LBFGS.*f < 1e-6 at step \d+ \(\d+ gradient evaluations\)/);

  // Newton's basin map on Himmelblau through the page, against native.
  const basin = { function: 'himmelblau', optimizer: 'DampedNewton', hyperparameters: {}, steps: 60, resolution: 24 };
  const web = await page.evaluate((s) => window.demo.runBasin(s), basin);
  const specFile = path.join(SCRATCH, 'newton-basin-spec.json');
  fs.writeFileSync(specFile, JSON.stringify({ function: 'himmelblau', steps: 60, runs: [{ optimizer: 'DampedNewton' }] }));
  const outFile = path.join(SCRATCH, 'newton-basin-native.json');
  execFileSync(NATIVE, ['trajectories', '--config', specFile, '--basin', '24', '--out', outFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const nat = JSON.parse(fs.readFileSync(outFile, 'utf8'));
  const differing = web.basin.filter((b, i) => b !== nat.basin[i]).length;
  console.log(`damped Newton basin map 24x24 on Himmelblau: ${web.basin.filter((b) => b >= 0).length} of 576 end at a minimum; ${differing} differ from native`);
  assert.ok(differing <= 2);
});

test('without WebGPU the page says so and runs the CPU reference, labelled', async () => {
  // A browser without WebGPU: Chromium without --enable-unsafe-webgpu has no adapter here.
  const plain = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'wgpu-optim-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  try {
    const p = await plain.newPage();
    await p.goto(`${baseUrl}/`);
    await p.waitForFunction(() => window.demo && window.demo.ready);
    await p.evaluate(() => window.demo.ready);
    const seen = await p.evaluate(() => ({ info: window.demo.info, status: document.getElementById('status').textContent, report: window.demo.lastReport }));
    console.log(`no WebGPU: ${seen.status}`);
    assert.equal(seen.info.backend, 'cpu');
    assert.match(seen.status, /No WebGPU here/);
    assert.match(seen.status, /CPU reference/);
    assert.equal(seen.report.backend, 'cpu');
  } finally {
    await plain.close();
  }
  // The same fallback on demand (?cpu), compared with WebGPU.
  const cpu = await openPage('?cpu');
  const { info, status, report } = await cpu.evaluate(() => ({
    info: window.demo.info, status: document.getElementById('status').textContent, report: window.demo.lastReport,
  }));
  assert.equal(info.backend, 'cpu');
  assert.match(status, /No WebGPU here/);
  assert.match(status, /CPU reference/);
  assert.equal(report.backend, 'cpu');
  const gpu = await page.evaluate((s) => window.demo.runTrajectories(s), { ...(await cpu.evaluate(() => window.demo.lastSpec)) });
  const difference = pathDifference(report, gpu);
  console.log(`CPU reference (wasm) against WebGPU: max difference ${difference.toExponential(2)}`);
  assert.ok(difference <= TOLERANCE);
  await cpu.close();
});

test('the state type control keeps the update rules\' state in bf16 or int8, and the legend shows the memory', async () => {
  const before = await page.evaluate(() => ({ n: window.demo.computations, report: window.demo.lastReport }));
  assert.ok(before.report.runs.some((r) => r.gpu_bytes !== undefined), 'f32 runs report their optimizer memory');
  for (const state of ['bf16', 'int8']) {
    const n = await page.evaluate(() => window.demo.computations);
    await page.selectOption('#state-dtype', state);
    await page.waitForFunction((m) => window.demo.computations > m, n);
    const { spec, report, legend } = await page.evaluate(() => ({
      spec: window.demo.lastSpec, report: window.demo.lastReport, legend: document.getElementById('legend').textContent,
    }));
    const rules = report.runs.filter((r) => !['Newton', 'DampedNewton', 'LBFGS'].includes(r.optimizer));
    assert.ok(rules.length > 0);
    for (const run of rules) {
      assert.equal(run.state_dtype, state);
      assert.ok(run.gpu_bytes > 0 && run.state_bytes_per_parameter >= 0, `${run.optimizer}: memory reported`);
    }
    assert.match(legend, new RegExp(`state ${state} \\(`));
    // The page's run equals the native command's, which runs the same spec on its adapter.
    const difference = pathDifference(report, native(spec));
    console.log(`state ${state}: max |web - native| = ${difference.toExponential(2)}; legend: ${legend.slice(0, 160)}`);
    assert.ok(difference <= TOLERANCE);
    if (state === 'bf16') {
      // bf16 state moves the rules' paths (int8 keeps a one-start tensor in f32: it may not).
      const index = report.runs.findIndex((r) => r.state_dtype === 'bf16');
      assert.notDeepEqual(report.runs[index].paths, before.report.runs[index].paths);
    }
  }
  await page.selectOption('#state-dtype', 'f32');
});
