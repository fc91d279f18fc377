// The timeline chart of a stack card ("where the time goes") in headless Chromium
// (Debian's /usr/bin/chromium, driven by playwright-core) against the real
// stackpulse binary. A scripted operation is published through POST /v1/events in
// the tracker's shape, with the timing fields the tracker adds (startedAt,
// finishedAt, expectedSeconds; the stack's startedAt, expectedSeconds, etaAt).
// Screenshots: target/artifacts/timeline-*.png (kept by CI as artifacts).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startServer } from '../../clients/js/test/support/server.mjs';
import { launchBrowser, openPage as open } from './support/browser.mjs';

const ARTIFACTS = join(ROOT, 'target', 'artifacts');

let browser;
let server;
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await launchBrowser();
  // The test publishes the tracker's events itself.
  server = await startServer({ args: ['--allow-stack-writes'] });
});
after(async () => {
  await browser?.close();
  await server?.kill();
});

function openPage(viewport) {
  return open(browser, `${server.httpUrl}/`, viewport);
}

async function watchStack(page, name) {
  await page.check('input[name="kind"][value="stack"]');
  await page.fill('#topic', name);
  await page.click('#watch');
  await page.locator(`.card[data-topic="stack:${name}"] .sub-state.on`).waitFor();
  return `.card[data-topic="stack:${name}"]`;
}

const iso = (t) => new Date(t).toISOString();

/**
 * A scripted create, one minute old: Role 0–10 s (usually 10 s), Bucket 2–5 s,
 * Topic 5–8 s (fails), Instance from 40 s, still running (usually 10 s: slow).
 * The stack usually takes 90 s: ETA at 90 s.
 */
function script(name, base) {
  const stack = (status, completed, inProgress, failed) => ({
    name,
    status,
    totalResources: 4,
    completedResources: completed,
    inProgressResources: inProgress,
    failedResources: failed,
    progress: Math.floor((100 * completed) / 4),
    startedAt: iso(base),
    expectedSeconds: 90,
    etaAt: iso(base + 90_000),
  });
  const res = (logicalId, type, status, startedAt, finishedAt, expectedSeconds, reason = '') => ({
    logicalId,
    type,
    status,
    physicalId: '',
    statusReason: reason,
    progress: 0,
    startedAt: iso(base + startedAt),
    ...(finishedAt !== null ? { finishedAt: iso(base + finishedAt) } : {}),
    ...(expectedSeconds !== null ? { expectedSeconds } : {}),
  });
  const reason = 'Resource handler returned message: "Topic name taken"';
  return {
    reason,
    events: [
      [res('Role', 'AWS::IAM::Role', 'CREATE_IN_PROGRESS', 0, null, 10), stack('CREATE_IN_PROGRESS', 0, 1, 0)],
      [res('Bucket', 'AWS::S3::Bucket', 'CREATE_IN_PROGRESS', 2_000, null, null), stack('CREATE_IN_PROGRESS', 0, 2, 0)],
      [res('Bucket', 'AWS::S3::Bucket', 'CREATE_COMPLETE', 2_000, 5_000, null), stack('CREATE_IN_PROGRESS', 1, 1, 0)],
      [res('Topic', 'AWS::SNS::Topic', 'CREATE_IN_PROGRESS', 5_000, null, null), stack('CREATE_IN_PROGRESS', 1, 2, 0)],
      [res('Topic', 'AWS::SNS::Topic', 'CREATE_FAILED', 5_000, 8_000, null, reason), stack('CREATE_IN_PROGRESS', 1, 1, 1)],
      [res('Role', 'AWS::IAM::Role', 'CREATE_COMPLETE', 0, 10_000, 10), stack('CREATE_IN_PROGRESS', 2, 0, 1)],
      [res('Instance', 'AWS::EC2::Instance', 'CREATE_IN_PROGRESS', 40_000, null, 10), stack('CREATE_IN_PROGRESS', 2, 1, 1)],
    ],
  };
}

async function publishScript(topic, name, base) {
  const s = script(name, base);
  for (const [resource, stack] of s.events) {
    await server.publish(topic, 'resource.status', { resource, stack, eventTimestamp: resource.finishedAt ?? resource.startedAt });
  }
  return s;
}

/** [logicalId, classes, width px] of each bar of a group, top to bottom. */
function barsOf(page, sel) {
  return page.$$eval(`${sel} .gantt-row`, (gs) =>
    gs.map((g) => ({
      id: g.dataset.logicalId,
      cls: g.getAttribute('class'),
      width: g.querySelector('.bar').getBoundingClientRect().width,
      ghost: g.querySelector('.ghost').getAttribute('display') === 'none' ? null : g.querySelector('.ghost').getBoundingClientRect().width,
      fill: getComputedStyle(g.querySelector('.bar')).fill,
      title: g.querySelector('title').textContent,
    })),
  );
}

describe('the timeline of a stack card', () => {
  test('bars for a scripted operation: order, colours, widths, ghosts, ETA, growth, nested group, root cause', async () => {
    const { page, context, problems } = await openPage();
    const name = 'timeline-stack';
    const T = `stack:${name}`;
    const c = await watchStack(page, name);
    const base = Date.now() - 60_000;
    const { reason } = await publishScript(T, name, base);

    await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .gantt-root .gantt-row`).length === 4, c);
    const bars = await barsOf(page, `${c} .gantt-root`);
    // One bar per resource, ordered by start.
    assert.deepEqual(bars.map((b) => b.id), ['Role', 'Bucket', 'Topic', 'Instance']);
    // Coloured by outcome.
    assert.deepEqual(
      bars.map((b) => b.fill),
      ['rgb(26, 127, 55)', 'rgb(26, 127, 55)', 'rgb(207, 34, 46)', 'rgb(9, 105, 218)'],
    );
    // Widths proportional to durations (10 s, 3 s, 3 s), within 3 %.
    const [role, bucket, topic, instance] = bars;
    const close = (a, b, what) => assert.ok(Math.abs(a / b - 1) < 0.03, `${what}: ${a} vs ${b}`);
    close(role.width / bucket.width, 10 / 3, 'Role / Bucket');
    close(topic.width, bucket.width, 'Topic / Bucket');
    // Ghost bars where an estimate exists: Role took exactly its usual 10 s.
    assert.equal(bucket.ghost, null);
    close(role.ghost, role.width, 'Role ghost / Role');
    // The instance runs for 20 s where 10 s is usual: flagged slow.
    assert.match(instance.cls, /\brunning\b/);
    assert.match(instance.cls, /\bslow\b/);
    assert.doesNotMatch(role.cls, /\bslow\b/);
    assert.match(instance.title, /usually 10 s — more than twice as long/);
    // Critical path: the instance started after the role finished.
    assert.deepEqual(bars.filter((b) => /\bcritical\b/.test(b.cls)).map((b) => b.id), ['Role', 'Instance']);
    // Hover text: times and reason.
    assert.match(topic.title, /CREATE_FAILED/);
    assert.match(topic.title, /started \d\d:\d\d:\d\d · finished \d\d:\d\d:\d\d · 3\.0 s/);
    assert.ok(topic.title.includes(reason));
    // The ETA: 90 s after the start, about 30 s from now.
    assert.match(await page.textContent(`${c} .gantt-eta`), /^ETA \d\d:\d\d:\d\d · in (2\d|3\d)(\.\d)? s$/);
    assert.match(await page.textContent(`${c} .gantt-span`), /\(usually 1m 30s\)/);

    // Live: the running bar grows between two screenshots, with no new event.
    await page.screenshot({ path: join(ARTIFACTS, 'timeline-1.png'), fullPage: true });
    const w1 = instance.width;
    await page.waitForFunction(
      ([sel, w]) => document.querySelector(`${sel} .gantt-row[data-logical-id="Instance"] .bar`).getBoundingClientRect().width > w + 1,
      [c, w1],
    );
    await page.screenshot({ path: join(ARTIFACTS, 'timeline-2.png'), fullPage: true });
    const after = await barsOf(page, `${c} .gantt-root`);
    assert.ok(after[3].width > w1, `${after[3].width} > ${w1}`);
    close(after[0].width, role.width, 'finished bars keep their width while the axis stays');

    // A nested stack: its own collapsible group with its aggregate progress.
    const nested = 'timeline-stack-Network-1AB2';
    const st = { name, status: 'CREATE_IN_PROGRESS', totalResources: 5, completedResources: 2, inProgressResources: 2, failedResources: 1, progress: 40 };
    const nres = (logicalId, status, s, f) => ({
      resource: { logicalId, type: 'AWS::EC2::Subnet', status, physicalId: '', statusReason: '', progress: 50, startedAt: iso(base + s), ...(f ? { finishedAt: iso(base + f) } : {}) },
      stack: st,
      nestedStack: nested,
    });
    await server.publish(T, 'resource.status', nres('SubnetA', 'CREATE_COMPLETE', 12_000, 20_000));
    await server.publish(T, 'resource.status', nres('SubnetB', 'CREATE_IN_PROGRESS', 14_000, null));
    const group = `${c} details.gantt-group[data-nested="${nested}"]`;
    await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .gantt-row`).length === 2, group);
    assert.equal(await page.textContent(`${group} .gantt-group-name`), nested);
    assert.equal(await page.getAttribute(`${group} [role="progressbar"]`, 'aria-valuenow'), '50');
    assert.match(await page.textContent(`${group} .gantt-group-count`), /^1 of 2 complete · 50%$/);
    assert.deepEqual((await barsOf(page, group)).map((b) => b.id), ['SubnetA', 'SubnetB']);
    assert.equal(await page.locator(`${c} .gantt-root .gantt-row`).count(), 4, 'nested resources are not in the root group');
    await page.click(`${group} summary`);
    assert.equal(await page.$eval(group, (d) => d.open), false);
    assert.equal(await page.isVisible(`${group} .gantt-row[data-logical-id="SubnetA"] .bar`), false, 'collapsed');
    // A collapsed group stays collapsed through the next event (the chart is kept).
    await server.publish(T, 'resource.status', nres('SubnetB', 'CREATE_COMPLETE', 14_000, 30_000));
    await page.waitForFunction((sel) => document.querySelector(`${sel} .gantt-group-count`).textContent.startsWith('2 of 2'), group);
    assert.equal(await page.$eval(group, (d) => d.open), false);
    await page.click(`${group} summary`);

    // The failure: the reason once, with links to its row and its bar.
    await server.publish(T, 'stack.failed', {
      stack_name: name,
      environment: 'us-east-1',
      error_message: reason,
      root_cause: { logicalId: 'Topic', type: 'AWS::SNS::Topic', status: 'CREATE_FAILED', reason },
    });
    await page.locator(`${c} .failure .rc-bar-link`).waitFor();
    const failureText = await page.textContent(`${c} .failure`);
    assert.equal(failureText.split(reason).length - 1, 1, `the reason once: ${failureText}`);
    const rowTarget = await page.getAttribute(`${c} .rc-row-link`, 'data-target');
    const barTarget = await page.getAttribute(`${c} .rc-bar-link`, 'data-target');
    assert.equal(await page.$eval(`#${rowTarget}`, (e) => e.dataset.logicalId), 'Topic');
    assert.equal(await page.$eval(`#${barTarget}`, (e) => e.dataset.logicalId), 'Topic');
    assert.ok(await page.$eval(`#${barTarget}`, (e) => e.closest('.gantt-root') !== null));
    const hash = new URL(page.url()).hash;
    await page.click(`${c} .rc-bar-link`);
    await page.waitForFunction((id) => document.getElementById(id).classList.contains('flash'), barTarget);
    await page.click(`${c} .rc-row-link`);
    await page.waitForFunction((id) => document.getElementById(id).classList.contains('flash'), rowTarget);
    assert.equal(new URL(page.url()).hash, hash, 'the links keep the watched topics in the URL');
    await page.screenshot({ path: join(ARTIFACTS, 'timeline-failure.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('fits a phone screen', async () => {
    const { page, context, problems } = await openPage({ width: 390, height: 844 });
    const name = 'timeline-phone-stack-with-a-long-name';
    const c = await watchStack(page, name);
    await publishScript(`stack:${name}`, name, Date.now() - 60_000);
    await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .gantt-row`).length === 4, c);
    const layout = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      innerWidth: window.innerWidth,
      barsRight: Math.max(...[...document.querySelectorAll('.gantt-row .bar, .gantt-row .ghost')].map((e) => e.getBoundingClientRect().right)),
      svgWidth: document.querySelector('.gantt-root').getBoundingClientRect().width,
    }));
    assert.ok(layout.scrollWidth <= layout.innerWidth, `no horizontal overflow: ${JSON.stringify(layout)}`);
    assert.ok(layout.barsRight <= layout.innerWidth, `bars inside the screen: ${JSON.stringify(layout)}`);
    assert.ok(layout.svgWidth > 250, `the chart uses the width: ${JSON.stringify(layout)}`);
    const bars = await barsOf(page, `${c} .gantt-root`);
    assert.ok(Math.abs(bars[0].width / bars[1].width / (10 / 3) - 1) < 0.05, 'proportional at phone width too');
    await page.screenshot({ path: join(ARTIFACTS, 'timeline-phone.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('500 resources: one row each, a fixed-height scrolling chart, ticks that move no layout', async () => {
    const { page, context, problems } = await openPage();
    const name = 'timeline-big';
    const T = `stack:${name}`;
    const c = await watchStack(page, name);
    const base = Date.now() - 120_000;
    const N = 500;
    for (let i = 0; i < N; i++) {
      const running = i % 50 === 49;
      await server.publish(T, 'resource.status', {
        resource: {
          logicalId: `R${String(i).padStart(3, '0')}`,
          type: 'AWS::SQS::Queue',
          status: running ? 'CREATE_IN_PROGRESS' : 'CREATE_COMPLETE',
          physicalId: '',
          statusReason: '',
          progress: 0,
          startedAt: iso(base + i * 200),
          ...(running ? {} : { finishedAt: iso(base + i * 200 + 1_000 + (i % 7) * 500) }),
          expectedSeconds: 2,
        },
        stack: { name, status: 'CREATE_IN_PROGRESS', totalResources: N, completedResources: i, inProgressResources: 1, failedResources: 0, progress: 0 },
      });
    }
    await page.waitForFunction(([sel, n]) => document.querySelectorAll(`${sel} .gantt-root .gantt-row`).length === n, [c, N], { timeout: 30_000 });
    const measure = () =>
      page.evaluate((sel) => {
        const body = document.querySelector(`${sel} .gantt-body`);
        return { body: body.getBoundingClientRect().height, card: document.querySelector(sel).getBoundingClientRect().height };
      }, c);
    const before = await measure();
    assert.ok(before.body <= 422, `the chart scrolls instead of growing: ${JSON.stringify(before)}`);
    // Ticks, timed for the record (not asserted: timings belong in benchmarks): the
    // median of 5 after a first one, script only and script + layout.
    const tickMs = await page.evaluate((topic) => {
      const chart = window.stackpulse.views.get(topic).chart;
      const median = (v) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
      chart.tick();
      document.body.getBoundingClientRect();
      const script = [];
      const total = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        chart.tick();
        const u = performance.now();
        document.body.getBoundingClientRect();
        script.push(u - t);
        total.push(performance.now() - t);
      }
      return { script: median(script), total: median(total) };
    }, T);
    const afterTick = await measure();
    assert.deepEqual(afterTick, before, 'a tick changes no layout');
    console.log(`timeline: ${N} bars, one tick: ${tickMs.script.toFixed(1)} ms script, ${tickMs.total.toFixed(1)} ms with layout (median of 5)`);
    await page.screenshot({ path: join(ARTIFACTS, 'timeline-500.png') });
    assert.deepEqual(problems, []);
    await context.close();
  });
});
