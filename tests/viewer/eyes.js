// What a person sees in OHIF: Debian's Chromium, driven by playwright-core, records it.
//
// usage: node eyes.js PLAN.json OBSERVATIONS.json
//
// The plan (written by tests/viewer/conftest.py) lists the studies to open and, per
// study, the series to double-click in OHIF's study browser.  This script only looks
// and writes down what it saw (thumbnails, the SVG annotations OHIF drew with their
// text and geometry, the viewport's text, errors, screenshots, every request the
// browser made); the pytest side decides what is right.
'use strict';
const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

const [PLAN, OUTPUT] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(PLAN, 'utf8'));
const [WIDTH, HEIGHT] = plan.viewport;
fs.mkdirSync(plan.out, { recursive: true });

const t0 = Date.now();
const seconds = () => +((Date.now() - t0) / 1000).toFixed(1);
const observations = { requests: [], console: [], studyList: null, visits: [], elapsed: null };
const log = (...a) => console.error(`[eyes ${seconds()}s]`, ...a);

async function skipTour(page) {
  // A shepherd.js tour opens on every fresh profile: a user would press "Skip all".
  const skip = page.getByText('Skip all', { exact: true });
  if (await skip.count()) await skip.first().click({ timeout: 2000 }).catch(() => {});
}

async function declineTracking(page) {
  // Opening an SR asks "Do you want to continue tracking measurements for this
  // study?" in a banner over the top of the image; a reader who only looks says No.
  const no = page.getByRole('button', { name: 'No', exact: true });
  if (await no.count()) await no.first().click({ timeout: 2000 }).catch(() => {});
}

async function annotations(page) {
  return page.evaluate(() => {
    const svg = document.querySelector('svg.svg-layer');
    if (!svg) return { svg: null, items: [] };
    const box = svg.getBoundingClientRect();
    const coords = l => ['x1', 'y1', 'x2', 'y2'].map(k => +l.getAttribute(k));
    // OHIF draws an SR point as an arrow: three solid <line>s (shaft and head) right
    // before the <g data-annotation-uid> that holds its label, then a dashed line from
    // the shaft to the label.  The lines carry no UID, so they are taken by position.
    const items = [...svg.querySelectorAll('g[data-annotation-uid]')].map(g => {
      const arrow = [];
      for (let e = g.previousElementSibling; e && e.tagName === 'line' && !e.getAttribute('stroke-dasharray');
        e = e.previousElementSibling) arrow.unshift(coords(e));
      const b = g.getBoundingClientRect();
      return {
        uid: g.getAttribute('data-annotation-uid'),
        box: { x: b.x - box.x, y: b.y - box.y, width: b.width, height: b.height },
        lines: [...g.querySelectorAll('tspan')].map(t => t.textContent),
        text: g.textContent,
        segments: arrow,
      };
    });
    return { svg: { x: box.x, y: box.y, width: box.width, height: box.height }, items };
  });
}

async function viewportText(page) {
  // The viewport's own text (overlays, OHIF's text view of an SR), without the SVG
  // annotation labels: those are judged by their boxes (may overlap or be clipped).
  return page.evaluate(() => {
    const grid = document.querySelector('[data-cy="viewport-grid"]') || document.querySelector('main') || document.body;
    const layers = [...grid.querySelectorAll('svg.svg-layer')];
    const shown = layers.map(l => l.style.display);
    layers.forEach(l => { l.style.display = 'none'; });
    const text = grid.innerText;
    layers.forEach((l, i) => { l.style.display = shown[i]; });
    return text;
  });
}

async function openSeries(page, open, errors) {
  const started = Date.now();
  const result = { name: open.name, series: open.series, listed: false, annotations: null,
    viewportText: '', badge: '', nudges: 0, errors: [], screenshot: null, canvas: null, seconds: 0 };
  const testId = open.modality === 'SR' ? 'study-browser-thumbnail-no-image' : 'study-browser-thumbnail';
  const thumb = page.locator(`[data-cy="${testId}"]`, { hasText: open.series });
  try {
    await thumb.first().waitFor({ timeout: 30000 });
  } catch (e) {
    result.errors.push(`series ${open.series} not in the study browser`);
    return result;
  }
  result.listed = (await thumb.count()) > 0;
  await thumb.first().dblclick();
  const errorStart = errors.length;
  const newErrors = () => errors.slice(errorStart);

  if (open.modality === 'SR') {
    const want = new Set(open.waitForUids || []);
    const deadline = Date.now() + (open.timeoutMs || 30000);
    let lastNudge = Date.now();
    for (;;) {
      await page.waitForTimeout(500);
      const seen = (await annotations(page)).items.map(a => a.uid);
      const looked = Date.now() - started >= (open.minMs || 0);
      if (want.size && [...want].every(u => seen.includes(u)) && looked) break;
      if (Date.now() > deadline) break;
      if (open.untilText && looked && (await viewportText(page)).includes(open.untilText)) break;
      if (newErrors().some(e => /Error Boundary|Something went wrong/.test(e))) break;
      // OHIF 3.13 sometimes draws SR annotations only at the next re-render (seen with
      // SwiftShader): a 1-px window resize, what a user's panel toggle does, forces one.
      if (Date.now() - lastNudge > 3000) {
        result.nudges++;
        lastNudge = Date.now();
        await page.setViewportSize({ width: WIDTH, height: HEIGHT + (result.nudges % 2) });
      }
    }
    await page.setViewportSize({ width: WIDTH, height: HEIGHT });
    await declineTracking(page);
    await page.waitForTimeout(800);
    result.annotations = await annotations(page);
    // The drawing itself, for a person to inspect beside the screenshot.
    const svg = await page.evaluate(() => document.querySelector('svg.svg-layer')?.outerHTML ?? '');
    fs.writeFileSync(path.join(plan.out, `${open.name}.svg`), svg);
    result.badge = await page.evaluate(() =>
      document.querySelector('[data-cy="ModalityLoadBadge-default"]')?.textContent ?? '');
  } else {
    // An image series: wait until the viewport overlay names it, then let it render.
    await page.waitForFunction(desc => {
      const grid = document.querySelector('[data-cy="viewport-grid"]') || document.body;
      return grid.innerText.includes(desc);
    }, open.overlayText || open.series, { timeout: 30000 }).catch(() => {
      result.errors.push(`viewport never showed ${open.overlayText || open.series}`);
    });
    await page.waitForTimeout(1500);
    const canvas = page.locator('canvas.cornerstone-canvas').first();
    const box = await canvas.boundingBox().catch(() => null);
    if (box) {
      result.canvas = { ...box, file: `${open.name}-canvas.png` };
      await page.screenshot({ path: path.join(plan.out, result.canvas.file), clip: box });
    }
  }
  result.viewportText = await viewportText(page);
  result.errors.push(...newErrors());
  result.screenshot = `${open.name}.png`;
  await page.screenshot({ path: path.join(plan.out, result.screenshot) });
  result.seconds = +((Date.now() - started) / 1000).toFixed(1);
  log(open.name, `${result.seconds}s`, result.annotations ? `${result.annotations.items.length} annotations` : '',
    result.nudges ? `nudges ${result.nudges}` : '');
  return result;
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'dicomnode-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: plan.chromium || '/usr/bin/chromium',
    headless: true,
    viewport: { width: WIDTH, height: HEIGHT },
    // Debian's Chromium, headless, with every background service that phones home off.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.on('request', r => observations.requests.push({ url: r.url(), method: r.method(), type: r.resourceType() }));
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on('console', m => {
    observations.console.push(`[${m.type()}] ${m.text().slice(0, 500)}`);
    if (m.type() === 'error' || /Error Boundary/.test(m.text())) errors.push(m.text().split('\n')[0].slice(0, 300));
  });
  page.on('pageerror', e => { errors.push(`pageerror: ${e.message.split('\n')[0]}`); });
  page.on('response', r => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`); });

  try {
    // 1. The study list: every study the node's results went into.
    await page.goto(plan.base + '/');
    await page.getByText(plan.studyList.waitFor).first().waitFor({ timeout: 60000 });
    await skipTour(page);
    await page.waitForTimeout(500);
    observations.studyList = { text: await page.evaluate(() => document.body.innerText), screenshot: 'study-list.png' };
    await page.screenshot({ path: path.join(plan.out, 'study-list.png') });
    log('study list');

    // 2. Each study in the viewer, each named series double-clicked in turn.
    for (const visit of plan.visits) {
      const v = { name: visit.name, study: visit.study, thumbnails: [], opens: [] };
      await page.goto(`${plan.base}/viewer?StudyInstanceUIDs=${visit.study}`);
      await page.locator('[data-cy^="study-browser-thumbnail"]').first().waitFor({ timeout: 60000 });
      await skipTour(page);
      // Let the hanging protocol show its first image before changing the viewport.
      await page.locator('canvas.cornerstone-canvas').first().waitFor({ timeout: 30000 }).catch(() => {});
      await page.waitForTimeout(1000);
      await skipTour(page);
      v.thumbnails = await page.evaluate(() => [...document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')]
        .map(e => ({ kind: e.getAttribute('data-cy'), text: e.innerText })));
      for (const open of visit.opens) {
        v.opens.push(await openSeries(page, open, errors));
      }
      observations.visits.push(v);
    }
  } catch (e) {
    observations.fatal = e.message.split('\n')[0];
    await page.screenshot({ path: path.join(plan.out, 'failure.png') }).catch(() => {});
  } finally {
    observations.elapsed = seconds();
    fs.writeFileSync(OUTPUT, JSON.stringify(observations, null, 1));
    fs.writeFileSync(path.join(plan.out, 'console.log'), observations.console.join('\n'));
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
})();
