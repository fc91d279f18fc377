// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real stackpulse binary, which serves the page at /.
// Events are published through POST /v1/events exactly as the CloudFormation
// tracker publishes them.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { startIssuer } from '../../clients/js/test/support/auth.mjs';
import { ROOT, startServer } from '../../clients/js/test/support/server.mjs';
import { launchBrowser, openPage as open, TIMEOUT } from './support/browser.mjs';

const ARTIFACTS = join(ROOT, 'target');

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** A page that fails the test on any script error or console error. */
const openPage = (url, viewport) => open(browser, url, viewport);

/** Waits until `fn(arg)` is truthy in the page (polled on animation frames). */
function until(page, fn, arg) {
  return page.waitForFunction(fn, arg, { timeout: TIMEOUT });
}

async function watch(page, text, kind = 'stack') {
  await page.check(`input[name="kind"][value="${kind}"]`);
  await page.fill('#topic', text);
  await page.click('#watch');
}

const card = (topic) => `.card[data-topic="${topic}"]`;

/** A `resource.status` payload as the tracker sends it. */
function resourceEvent(logicalId, type, status, reason, stack, extra = {}) {
  return {
    resource: {
      logicalId,
      type,
      status,
      physicalId: status.endsWith('_COMPLETE') ? `${logicalId.toLowerCase()}-0a1b2c3d` : '',
      statusReason: reason,
      progress: stack.progress,
    },
    stack,
    ...extra,
  };
}

function stackSummary(name, status, total, completed, inProgress, failed) {
  return {
    name,
    status,
    totalResources: total,
    completedResources: completed,
    inProgressResources: inProgress,
    failedResources: failed,
    progress: Math.floor((100 * completed) / total),
  };
}

describe('the dashboard against one server', () => {
  let server;
  before(async () => {
    // The cards are fed tracker-shaped events by the test itself.
    server = await startServer({ args: ['--allow-stack-writes'] });
  });
  after(async () => {
    await server?.kill();
  });

  test('is served from the binary with its assets', async () => {
    const res = await fetch(`${server.httpUrl}/`);
    assert.equal(res.status, 200, 'GET / must serve the dashboard (router: .merge(dashboard::routes()))');
    assert.match(res.headers.get('content-type'), /^text\/html/);
    const html = await res.text();
    const js = /src="(\/assets\/app\.js\?v=[0-9a-f]{16})"/.exec(html);
    const css = /href="(\/assets\/app\.css\?v=[0-9a-f]{16})"/.exec(html);
    assert.ok(js && css, 'versioned asset links');
    const jsRes = await fetch(server.httpUrl + js[1]);
    assert.equal(jsRes.status, 200);
    assert.match(jsRes.headers.get('content-type'), /^text\/javascript/);
    assert.match(jsRes.headers.get('cache-control'), /immutable/);
    const cssRes = await fetch(server.httpUrl + css[1]);
    assert.match(cssRes.headers.get('content-type'), /^text\/css/);
  });

  test('a failing stack, a deployed stack and a deployment, live, side by side', async () => {
    const { page, context, problems } = await openPage(`${server.httpUrl}/`);
    assert.equal(await page.getAttribute('#conn', 'data-state'), 'idle');

    // The input says what it will watch: bare name + stack toggle, or `stack:` typed.
    await page.fill('#topic', 'demo-stack');
    assert.equal(await page.textContent('#topic-preview'), 'stack:demo-stack');
    await page.check('input[name="kind"][value="deployment"]');
    assert.equal(await page.textContent('#topic-preview'), 'demo-stack');
    await page.fill('#topic', 'stack:typed-stack');
    assert.equal(await page.textContent('#topic-preview'), 'stack:typed-stack');

    await watch(page, 'demo-stack', 'stack');
    await page.locator(`${card('stack:demo-stack')} .sub-state.on`).waitFor();
    assert.equal(await page.getAttribute('#conn', 'data-state'), 'open');
    assert.equal((await page.textContent('#conn')).trim(), 'Live');

    const T = 'stack:demo-stack';
    const N = 'demo-stack';
    const steps = [
      ['Bucket', 'AWS::S3::Bucket', 'CREATE_IN_PROGRESS', '', stackSummary(N, 'CREATE_IN_PROGRESS', 3, 0, 1, 0)],
      ['Bucket', 'AWS::S3::Bucket', 'CREATE_COMPLETE', '', stackSummary(N, 'CREATE_IN_PROGRESS', 3, 1, 0, 0)],
      ['Queue', 'AWS::SQS::Queue', 'CREATE_IN_PROGRESS', 'Resource creation Initiated', stackSummary(N, 'CREATE_IN_PROGRESS', 3, 1, 1, 0)],
      ['Instance', 'AWS::EC2::Instance', 'CREATE_IN_PROGRESS', '', stackSummary(N, 'CREATE_IN_PROGRESS', 3, 1, 2, 0)],
      ['Queue', 'AWS::SQS::Queue', 'CREATE_COMPLETE', '', stackSummary(N, 'CREATE_IN_PROGRESS', 3, 2, 1, 0)],
    ];
    for (const s of steps) await server.publish(T, 'resource.status', resourceEvent(...s));

    const c = card(T);
    await until(page, (sel) => document.querySelectorAll(`${sel} .timeline-list li[data-type="resource.status"]`).length === 5, c);
    // Table: one row per resource, latest status, coloured by status.
    const rows = await page.$$eval(`${c} tr.resource`, (trs) =>
      trs.map((tr) => [tr.dataset.logicalId, tr.querySelector('.badge').textContent, [...tr.classList].find((k) => k.startsWith('st-'))]),
    );
    assert.deepEqual(rows.sort(), [
      ['Bucket', 'CREATE_COMPLETE', 'st-ok'],
      ['Instance', 'CREATE_IN_PROGRESS', 'st-progress'],
      ['Queue', 'CREATE_COMPLETE', 'st-ok'],
    ]);
    const green = await page.$eval(`${c} tr[data-logical-id="Bucket"] .badge`, (b) => getComputedStyle(b).color);
    const blue = await page.$eval(`${c} tr[data-logical-id="Instance"] .badge`, (b) => getComputedStyle(b).color);
    assert.equal(green, 'rgb(26, 127, 55)');
    assert.equal(blue, 'rgb(9, 105, 218)');
    // Progress bar: 2 of 3 complete.
    const bar = page.locator(`${c} [role="progressbar"]`);
    assert.equal(await bar.getAttribute('aria-valuenow'), '66');
    assert.equal(await page.$eval(`${c} [role="progressbar"] .bar`, (b) => b.style.width), '66%');
    assert.match(await page.textContent(`${c} .progress-detail`), /2 of 3 complete · 1 in progress · 0 failed/);
    // Timeline: newest first. (The server's own tracker of stack:demo-stack, which
    // cannot reach AWS here, adds tracker.error entries of its own.)
    const first = await page.textContent(`${c} .timeline-list li[data-type="resource.status"] .tl-text`);
    assert.equal(first, 'Queue CREATE_COMPLETE');
    assert.equal(await page.locator(`${c} .failure`).count(), 0, 'no failure shown yet');

    // The instance fails, the stack rolls back, the tracker reports the root cause.
    const reason = "The image id '[ami-0123456789]' does not exist";
    await server.publish(T, 'resource.status', resourceEvent('Instance', 'AWS::EC2::Instance', 'CREATE_FAILED', reason, stackSummary(N, 'ROLLBACK_IN_PROGRESS', 3, 2, 0, 1)));
    await server.publish(T, 'resource.status', resourceEvent('demo-stack', 'AWS::CloudFormation::Stack', 'ROLLBACK_COMPLETE', '', stackSummary(N, 'ROLLBACK_COMPLETE', 3, 2, 0, 1)));
    await server.publish(T, 'stack.failed', {
      stack_name: N,
      environment: 'dev',
      error_message: 'Stack demo-stack rolled back: ROLLBACK_COMPLETE',
      root_cause: { logicalId: 'Instance', type: 'AWS::EC2::Instance', status: 'CREATE_FAILED', reason },
    });
    await page.locator(`${c} .failure .root-cause`).waitFor();
    assert.equal(await page.textContent(`${c} .failure .rc-id`), 'Instance');
    assert.equal(await page.textContent(`${c} .failure .rc-reason`), reason);
    assert.deepEqual(await page.$$eval(`${c} tr.root-cause-row`, (trs) => trs.map((t) => t.dataset.logicalId)), ['Instance']);
    assert.equal(await page.textContent(`${c} tr.root-cause-row .c-reason`), reason);
    assert.equal(await page.textContent(`${c} tr.root-cause-row .rc-tag`), 'root cause');
    const red = await page.$eval(`${c} tr.root-cause-row td`, (td) => getComputedStyle(td).backgroundColor);
    assert.equal(red, 'rgb(255, 235, 233)');
    assert.equal(await page.getAttribute(`${c} tr[data-logical-id="Instance"]`, 'class'), 'resource st-failed root-cause-row');
    assert.match(await page.getAttribute(c, 'class'), /\bst-rollback\b/);
    assert.equal(await page.textContent(`${c} .card-head .badge`), 'ROLLBACK_COMPLETE');
    assert.match(await page.textContent(`${c} .timeline-list li[data-type="stack.failed"]`), /stack\.failed.*Stack demo-stack \(dev\) failed/);
    assert.match(await page.getAttribute(`${c} .timeline-list li[data-type="stack.failed"]`, 'class'), /\bst-failed\b/);
    assert.equal(await page.locator(`${c} tr.resource`).count(), 3, 'the stack\u2019s own event is not a resource row');

    // The tracker's problems show in the card.
    await server.publish(T, 'tracker.error', { message: 'Rate exceeded (Throttling)', retrying: true });
    await page.locator(`${c} .tracker-error`).waitFor();
    await page.locator(`${c} .tl-entry[data-type="tracker.error"]`, { hasText: 'Rate exceeded (Throttling) (retrying)' }).waitFor();

    // A second stack, watched at the same time, completes with outputs.
    await watch(page, 'stack:web-stack', 'deployment'); // the prefix wins over the toggle
    const W = 'stack:web-stack';
    await page.locator(`${card(W)} .sub-state.on`).waitFor();
    await server.publish(W, 'resource.status', resourceEvent('Site', 'AWS::S3::Bucket', 'CREATE_IN_PROGRESS', '', stackSummary('web-stack', 'CREATE_IN_PROGRESS', 2, 0, 1, 0)));
    await server.publish(W, 'resource.status', resourceEvent('Site', 'AWS::S3::Bucket', 'CREATE_COMPLETE', '', stackSummary('web-stack', 'CREATE_IN_PROGRESS', 2, 1, 0, 0)));
    await server.publish(W, 'resource.status', resourceEvent('Cdn', 'AWS::CloudFront::Distribution', 'CREATE_COMPLETE', '', stackSummary('web-stack', 'CREATE_COMPLETE', 2, 2, 0, 0)));
    await until(page, (sel) => document.querySelector(`${sel} [role="progressbar"]`)?.getAttribute('aria-valuenow') === '100', card(W));
    assert.equal(await page.locator(`${card(W)} .outputs`).count(), 0, 'no outputs before completion');
    await server.publish(W, 'stack.deployed', {
      stack_name: 'web-stack',
      environment: 'prod',
      duration_seconds: 184,
      resource_count: 2,
      outputs: [
        { key: 'BucketName', value: 'web-stack-site-1x2y3z', description: 'Where the site is stored' },
        { key: 'Url', value: 'https://d111111abcdef8.cloudfront.net', description: '' },
      ],
    });
    await page.locator(`${card(W)} .outputs`).waitFor();
    const outputs = await page.$$eval(`${card(W)} .output`, (os) =>
      os.map((o) => [o.dataset.key, o.querySelector('.output-value').textContent]),
    );
    assert.deepEqual(outputs, [
      ['BucketName', 'web-stack-site-1x2y3z'],
      ['Url', 'https://d111111abcdef8.cloudfront.net'],
    ]);
    assert.match(await page.textContent(`${card(W)} .output[data-key="BucketName"] .output-desc`), /Where the site is stored/);
    assert.match(await page.getAttribute(card(W), 'class'), /\bst-ok\b/);
    assert.equal(await page.locator(`${card(W)} .failure`).count(), 0);
    assert.equal(await page.locator(`${card(T)} .failure`).count(), 1, 'the first card still shows its failure');

    // A deployment id: layers, stacks and logs.
    await watch(page, 'D1BRV40', 'deployment');
    const D = card('D1BRV40');
    await page.locator(`${D} .sub-state.on`).waitFor();
    await server.publish('D1BRV40', 'deployment.status', { status: 'deploying', current_layer: 1, total_layers: 2 });
    await server.publish('D1BRV40', 'log.created', { level: 'info', message: 'Deploying layer 1', stack_name: 'net', environment: 'prod' });
    await server.publish('D1BRV40', 'stack.deployed', { stack_name: 'net', environment: 'prod', duration_seconds: 42, resource_count: 7 });
    await until(page, (sel) => document.querySelectorAll(`${sel} .timeline-list li`).length === 3, D);
    const bars = await page.$$eval(`${D} .progress-block`, (bs) =>
      bs.map((b) => [b.querySelector('.progress-name').textContent, b.querySelector('[role="progressbar"]').getAttribute('aria-valuenow')]),
    );
    assert.deepEqual(bars, [['Layers', '0'], ['net (prod)', '100']]);
    await server.publish('D1BRV40', 'deployment.status', { status: 'deployed', current_layer: 2, total_layers: 2 });
    await until(page, (sel) => document.querySelector(`${sel} .progress-block [role="progressbar"]`)?.getAttribute('aria-valuenow') === '100', D);
    assert.deepEqual(
      await page.$$eval(`${D} .tl-type`, (ts) => ts.map((t) => t.textContent)),
      ['deployment.status', 'stack.deployed', 'log.created', 'deployment.status'],
    );
    assert.equal(await page.locator('.card').count(), 3);
    assert.equal(new URL(page.url()).hash, '#watch=stack%3Ademo-stack,stack%3Aweb-stack,D1BRV40');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    // A late joiner (the URL keeps the watched topics) rebuilds from the snapshots.
    const late = await openPage(`${server.httpUrl}/#watch=stack%3Ademo-stack`);
    await late.page.locator(`${c} tr.root-cause-row`).waitFor();
    assert.equal(await late.page.locator(`${c} tr.resource`).count(), 3, 'three resources; the stack itself is the progress bar');
    assert.equal(await late.page.getAttribute(`${c} [role="progressbar"]`, 'aria-valuenow'), '66');
    assert.equal(await late.page.textContent(`${c} .failure .rc-id`), 'Instance');
    assert.equal(await late.page.locator(`${c} .timeline-list li[data-type="stack.snapshot"]`).count(), 1);
    await late.context.close();

    // Stop watching one.
    await page.click(`${card(W)} button.close`);
    assert.equal(await page.locator(card(W)).count(), 0);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('fits a phone screen without horizontal scrolling', async () => {
    const { page, context, problems } = await openPage(`${server.httpUrl}/`, { width: 390, height: 844 });
    await watch(page, 'phone-stack-with-a-rather-long-name-for-a-small-screen', 'stack');
    const T = 'stack:phone-stack-with-a-rather-long-name-for-a-small-screen';
    await page.locator(`${card(T)} .sub-state.on`).waitFor();
    const s = stackSummary('phone-stack-with-a-rather-long-name-for-a-small-screen', 'CREATE_IN_PROGRESS', 4, 1, 1, 1);
    await server.publish(T, 'resource.status', resourceEvent('LambdaExecutionRoleWithAVeryLongLogicalIdentifier', 'AWS::IAM::Role', 'CREATE_COMPLETE', '', s));
    await server.publish(T, 'resource.status', resourceEvent('Fn', 'AWS::Lambda::Function', 'CREATE_FAILED',
      'Resource handler returned message: "Uploaded file must be a non-empty zip (Service: Lambda, Status Code: 400, Request ID: 5f0c2c7e-0d5b-4bd6-9f0b-1234567890ab)"', s));
    await server.publish(T, 'resource.status', resourceEvent('Topic', 'AWS::SNS::Topic', 'CREATE_IN_PROGRESS', '', s));
    await until(page, (sel) => document.querySelectorAll(`${sel} tr.resource`).length === 3, card(T));
    const layout = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
      widest: Math.max(...[...document.querySelectorAll('body *')].map((e) => e.getBoundingClientRect().right)),
      thead: getComputedStyle(document.querySelector('.resource-table thead')).display,
    }));
    assert.equal(layout.innerWidth, 390);
    assert.ok(layout.scrollWidth <= layout.innerWidth, `no horizontal overflow: ${JSON.stringify(layout)}`);
    assert.ok(layout.widest <= layout.innerWidth + 0.5, `nothing sticks out: ${JSON.stringify(layout)}`);
    assert.equal(layout.thead, 'none', 'the table turns into one block per resource');
    assert.equal(await page.getAttribute(`${card(T)} [role="progressbar"]`, 'aria-valuenow'), '25');
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });
});

test('shows reconnecting while the server is away, and live again when it is back', async () => {
  let server = await startServer();
  const port = server.port;
  const { page, context, problems } = await openPage(`${server.httpUrl}/`);
  try {
    await watch(page, 'D-restart', 'deployment');
    const D = card('D-restart');
    await page.locator(`${D} .sub-state.on`).waitFor();
    await server.publish('D-restart', 'deployment.status', { status: 'deploying', current_layer: 1, total_layers: 3 });
    await page.locator(`${D} .tl-entry[data-seq="1"]`).waitFor();

    await server.kill();
    await page.locator('#conn[data-state="reconnecting"]').waitFor();
    assert.match(await page.textContent('#conn'), /Reconnecting… \(attempt \d+, next in \d+\.\d s\)/);
    // Cards re-render on the next animation frame, after the connection state: wait
    // for it (fails after 5 s if the card never says it is not live).
    await page.locator(`${D} .sub-state.off`).waitFor({ timeout: 5_000 });

    server = await startServer({ port });
    await page.locator('#conn[data-state="open"]').waitFor({ timeout: 20_000 });
    assert.equal((await page.textContent('#conn')).trim(), 'Live');
    await page.locator(`${D} .sub-state.on`).waitFor();
    // The restarted server lost the topic: the page says so and keeps what it knew.
    await page.locator(`${D} .tl-entry[data-type="resync"]`).waitFor();
    assert.equal(await page.getAttribute(`${D} [role="progressbar"]`, 'aria-valuenow'), '0');
    await server.publish('D-restart', 'deployment.status', { status: 'deploying', current_layer: 2, total_layers: 3 });
    await until(page, (sel) => document.querySelector(`${sel} [role="progressbar"]`)?.getAttribute('aria-valuenow') === '33', D);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.kill();
  }
});

test('with authentication on: refused without a token, live once one is entered', async () => {
  const issuer = await startIssuer();
  const server = await startServer({ args: issuer.serverArgs });
  const { page, context, problems } = await openPage(`${server.httpUrl}/`);
  const socketUrls = [];
  page.on('websocket', (ws) => socketUrls.push(ws.url()));
  try {
    await watch(page, 'D-secret', 'deployment');
    // The upgrade is refused (401); the page keeps trying and suggests a token.
    await until(page, () => /does the server need a token\?/.test(document.querySelector('#conn').textContent));
    assert.equal(await page.getAttribute('#conn', 'data-state'), 'connecting');
    await page.locator(`${card('D-secret')} .sub-state.off`).waitFor({ timeout: 5_000 });

    await page.click('.token summary');
    await page.fill('#token', issuer.token('dana'));
    await page.press('#token', 'Enter');
    await page.locator('#conn[data-state="open"]').waitFor();
    await page.locator(`${card('D-secret')} .sub-state.on`).waitFor();
    await server.publish('D-secret', 'deployment.status', { status: 'deploying', current_layer: 1, total_layers: 4 });
    await page.locator(`${card('D-secret')} .tl-entry[data-seq="1"]`).waitFor();
    assert.equal(await page.locator('.card').count(), 1, 'applying the token did not add a card');
    // The token travels as a subprotocol: never in a URL that access logs record.
    assert.ok(socketUrls.length > 0 && socketUrls.every((u) => !u.includes('token')), socketUrls.join(' '));
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.kill();
    await issuer.close();
  }
});

describe('the dashboard against a server that limits subscriptions', () => {
  let server;
  before(async () => {
    server = await startServer({ args: ['--max-subscriptions', '1'] });
  });
  after(async () => {
    await server?.kill();
  });

  test('a refused topic says why, a topic watched twice keeps one card, custom events show their data', async () => {
    // D-one has state before the page watches it: the page starts from its snapshot,
    // logs included.
    await server.publish('D-one', 'deployment.status', { status: 'deploying', current_layer: 1, total_layers: 2 });
    await server.publish('D-one', 'log.created', { level: 'error', message: 'layer 1: quota exceeded', stack_name: 'net', environment: 'prod' });
    const { page, context, problems } = await openPage(`${server.httpUrl}/`);
    await watch(page, 'D-one', 'deployment');
    await page.locator(`${card('D-one')} .sub-state.on`).waitFor();
    await page.locator(`${card('D-one')} .tl-entry[data-type="deployment.snapshot"]`).waitFor();
    const fromSnapshot = await page.$$eval(`${card('D-one')} .timeline-list li`, (lis) =>
      lis.map((li) => [li.dataset.type, li.querySelector('.tl-text').textContent, li.className]),
    );
    assert.deepEqual(fromSnapshot, [
      ['deployment.snapshot', 'Snapshot: deployment deploying', 'tl-entry st-progress'],
      ['log.created', '[error] layer 1: quota exceeded', 'tl-entry st-failed'],
    ]);

    // The server allows one subscription per connection: the second card says so.
    await watch(page, 'D-two', 'deployment');
    await page.locator(`${card('D-two')} .topic-error`).waitFor();
    assert.match(await page.textContent(`${card('D-two')} .topic-error`), /Too many subscriptions/);
    assert.equal(await page.textContent(`${card('D-two')} .sub-state`), 'waiting');
    assert.equal(await page.locator(`${card('D-one')} .topic-error`).count(), 0);

    // Watching a topic already on the page adds no second card.
    await watch(page, 'D-one', 'deployment');
    assert.equal(await page.locator(card('D-one')).count(), 1);
    assert.equal(await page.locator('.card').count(), 2);
    assert.equal(new URL(page.url()).hash, '#watch=D-one,D-two');

    // Event types the dashboard does not know: their data, as JSON, in the timeline.
    await server.publish('D-one', 'myci.step', { step: 'lint', status: 'RUNNING' });
    await server.publish('D-one', 'myci.step', { step: 'test', status: 'DONE' });
    await server.publish('D-one', 'myci.note', { status: 'SOMETHING_ELSE', note: 'n'.repeat(300) });
    await until(page, (sel) => document.querySelectorAll(`${sel} .timeline-list li`).length === 5, card('D-one'));
    const entries = await page.$$eval(`${card('D-one')} .timeline-list li[data-type^="myci."]`, (lis) =>
      lis.map((li) => [li.dataset.type, li.dataset.seq, li.querySelector('.tl-text').textContent, li.className]),
    );
    assert.equal(entries[0][0], 'myci.note');
    assert.equal(entries[0][2].length, 200, 'long data is cut to 200 characters');
    assert.ok(entries[0][2].endsWith('\u2026') && entries[0][2].startsWith('{"status":"SOMETHING_ELSE"'));
    assert.match(entries[0][3], /\bst-unknown\b/);
    assert.deepEqual(entries.slice(1), [
      ['myci.step', '4', '{"step":"test","status":"DONE"}', 'tl-entry st-ok'],
      ['myci.step', '3', '{"step":"lint","status":"RUNNING"}', 'tl-entry st-progress'],
    ]);
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('the dashboard on a demo server', () => {
  let server;
  before(async () => {
    server = await startServer({ args: ['--demo', '--demo-pace', '0.05', '--poll-interval', '0.05'] });
  });
  after(async () => {
    await server?.kill();
  });

  test('offers the demo stacks with one click, and shows the failure with its cause', async () => {
    const { page, context, problems } = await openPage(`${server.httpUrl}/`);
    await page.waitForSelector('#demo-offer[data-checked]:not([hidden])');
    await page.click('#watch-demo');
    for (const topic of ['demo', 'stack:demo-network', 'stack:demo-database', 'stack:demo-app']) {
      await page.waitForSelector(card(topic));
    }
    assert.equal(await page.isHidden('#demo-offer'), true);
    await until(page, (sel) => document.querySelector(sel)?.textContent.includes('failed ELB health checks'), card('stack:demo-app'));
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-demo.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('the dashboard on a server without --demo', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.kill();
  });

  test('offers no demo', async () => {
    const { page, context, problems } = await openPage(`${server.httpUrl}/`);
    await page.waitForSelector('#demo-offer[data-checked]', { state: 'attached' });
    assert.equal(await page.isHidden('#demo-offer'), true);
    assert.deepEqual(problems, []);
    await context.close();
  });
});
