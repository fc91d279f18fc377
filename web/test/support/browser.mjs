// Test support for the dashboard tests: headless Chromium (Debian's /usr/bin/chromium,
// or CHROMIUM_PATH, driven by playwright-core) and pages that record script errors.
//
// Coverage (opt-in, scripts/coverage-js.sh): with STACKPULSE_WEB_COVERAGE=<dir>, every
// page runs <dir>/bundle/assets/app.js, an unminified, source-mapped build of the same
// sources as the binary's web/dist/assets/app.js, in place of the binary's bundle
// (the request for /assets/app.js is answered from that file; everything else still
// comes from the real server). Chromium's precise JS coverage of that script
// (page.coverage, detailed block counts) is written when the page's context closes
// to <dir>/v8/*.json in Node's NODE_V8_COVERAGE format, with the script's URL
// rewritten to the bundle's file:// URL, so `c8 report` maps it back to web/src/*.ts
// through the bundle's source map. Without the variable nothing of this runs.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
export const TIMEOUT = 10_000;

const COVERAGE_DIR = process.env.STACKPULSE_WEB_COVERAGE || null;
const BUNDLE = COVERAGE_DIR && join(COVERAGE_DIR, 'bundle', 'assets', 'app.js');
let written = 0;

/** Launches headless Chromium; `close()` also writes the coverage of pages still open. */
export async function launchBrowser() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  if (COVERAGE_DIR) {
    const close = browser.close.bind(browser);
    browser.close = async (...args) => {
      for (const context of browser.contexts()) await context.close();
      return close(...args);
    };
  }
  return browser;
}

/**
 * A new context and page at `url`. `problems` collects uncaught page errors and console
 * errors (failed WebSocket connections while a server is away are expected and left out).
 */
export async function openPage(browser, url, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket connection to .* failed/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  if (COVERAGE_DIR) await instrument(context, page);
  await page.goto(url);
  return { page, context, problems };
}

async function instrument(context, page) {
  await context.route(/\/assets\/app\.js(\?|$)/, (route) =>
    route.fulfill({ path: BUNDLE, contentType: 'text/javascript; charset=utf-8' }),
  );
  await page.coverage.startJSCoverage({ resetOnNavigation: false });
  const close = context.close.bind(context);
  let flushed = false;
  context.close = async (...args) => {
    if (!flushed && !page.isClosed()) {
      flushed = true;
      const entries = await page.coverage.stopJSCoverage();
      const result = entries
        .filter((e) => /\/assets\/app\.js(\?|$)/.test(e.url))
        .map((e) => ({ scriptId: e.scriptId, url: pathToFileURL(BUNDLE).href, functions: e.functions }));
      const dir = join(COVERAGE_DIR, 'v8');
      mkdirSync(dir, { recursive: true });
      written += 1;
      writeFileSync(join(dir, `browser-${process.pid}-${written}.json`), JSON.stringify({ result }));
    }
    return close(...args);
  };
}
