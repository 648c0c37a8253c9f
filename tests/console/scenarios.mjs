// Browser scenarios for the OpenTrail console, run one at a time by tests/py/test_console.py:
//
//   CONSOLE_CONFIG='{"url":..., ...}' node tests/console/scenarios.mjs <scenario>
//
// Each scenario drives Debian's Chromium through playwright-core, asserts what the page shows,
// writes a screenshot per page into config.artifacts, and prints one JSON line (what pytest
// checks next) as its last line of output. A failed assertion exits non-zero.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.env.CONSOLE_CONFIG || '{}');
const scenario = process.argv[2];
const TIMEOUT = 15000;

fs.mkdirSync(cfg.artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({
  acceptDownloads: true,
  viewport: { width: 1366, height: 900 },
  timezoneId: 'Asia/Kolkata',
  locale: 'en-GB',
});
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
const consoleErrors = [];
page.on('pageerror', (err) => consoleErrors.push(String(err)));

async function shot(name) {
  await page.screenshot({ path: path.join(cfg.artifacts, `${name}.png`), fullPage: true });
}

async function signIn(key) {
  await page.goto(`${cfg.url}/console/`);
  await page.getByLabel('Access key ID').fill(key.id);
  await page.getByLabel('Secret access key').fill(key.secret);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#nav').waitFor({ state: 'visible' });
}

/** Waits until `fn` (run in the page) returns something truthy. */
async function until(fn, arg, what) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 100 });
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${err.message}`);
  }
}

/** Marks what the page shows now, so a wait can tell it from what the next render draws. */
async function markStale() {
  await page.evaluate(() => document.querySelectorAll('#main *').forEach((el) => el.setAttribute('data-stale', '')));
}

/** The event IDs of the history table, once a fresh one has loaded. */
async function tableIds() {
  await until(() => document.querySelector('#events-table:not([data-stale]), #no-events:not([data-stale])')
    && !document.querySelector('main .loading'), null, 'the events table');
  return page.$$eval('#events-table tbody tr', (rows) => rows.map((r) => r.dataset.eventId));
}

async function applyFilters(filters, opts = {}) {
  await markStale();
  await page.goto(`${cfg.url}/console/#/events`);
  await page.locator('#filter-rows:not([data-stale])').waitFor({ state: 'attached' });
  await tableIds();
  for (const [key, value] of filters) {
    await page.getByRole('button', { name: 'Add filter' }).click();
    const row = page.locator('#filter-rows .filter-row').last();
    await row.getByLabel('Lookup attribute').selectOption(key);
    await row.getByLabel('Attribute value').fill(value);
  }
  if (opts.range) await page.locator('#range').selectOption(opts.range);
  if (opts.start) await page.locator('#start').fill(opts.start);
  if (opts.end) await page.locator('#end').fill(opts.end);
  if (opts.hideReadOnly) await page.getByLabel('Show read-only events').uncheck();
  await markStale();
  await page.getByRole('button', { name: 'Apply' }).click();
  return tableIds();
}

const sameSet = (got, want, what) => assert.deepEqual([...got].sort(), [...want].sort(), what);

const scenarios = {
  async signin_wrong_secret() {
    await page.goto(`${cfg.url}/console/`);
    await page.getByLabel('Access key ID').fill(cfg.root.id);
    await page.getByLabel('Secret access key').fill(`${cfg.root.secret}x`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#signin-error', { hasText: 'not correct' }).waitFor();
    assert.equal(await page.locator('#nav').isVisible(), false, 'navigation must stay hidden');
    const session = await page.evaluate(async () => (await fetch('api/session')).status);
    assert.notEqual(session, 200, 'no session after a wrong secret');
    await shot('signin-failed');
    return {};
  },

  async dashboard() {
    await signIn(cfg.root);
    await page.locator('section[aria-label="Recent events"] table').waitFor();
    await page.locator('section[aria-label="Trails"] a', { hasText: cfg.insightsTrail }).waitFor();
    await page.locator('section[aria-label="Recent Insights"] a', { hasText: 'CreateWidget' }).waitFor();
    // Keyboard only: Tab from the content to the first recent event, Enter opens it.
    let reached = false;
    for (let i = 0; i < 15 && !reached; i += 1) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => !!document.activeElement.closest('section[aria-label="Recent events"] tbody a'));
    }
    assert.ok(reached, 'the recent events are reachable with Tab');
    await page.keyboard.press('Enter');
    await page.locator('#event-summary').waitFor();
    await page.goBack();
    await page.locator('section[aria-label="Recent Insights"] a', { hasText: 'CreateWidget' }).waitFor();
    await shot('dashboard');
    // Through to an Insight's page.
    await page.locator('section[aria-label="Recent Insights"] a', { hasText: 'CreateWidget' }).first().click();
    await page.locator('#insight-chart').waitFor();
    return {};
  },

  async history() {
    await signIn(cfg.root);
    const ev = cfg.events;
    // Each of the eight lookup attributes, one at a time (scoped to this test's source where
    // the attribute alone would match other tests' events too).
    for (const [key, value, want] of ev.single) {
      const filters = key === 'EventSource' || key === 'EventId' ? [[key, value]] : [[key, value], ['EventSource', ev.source]];
      const ids = await applyFilters(filters);
      sameSet(ids, want, `filter ${key}=${value}`);
    }
    // Several at once.
    sameSet(await applyFilters(ev.multi.filters), ev.multi.ids, 'several attributes at once');
    // Time presets and a custom range.
    sameSet(await applyFilters([['EventSource', ev.source]], { range: '30m' }), ev.recentIds, 'last 30 minutes');
    const ids3h = await applyFilters([['EventSource', ev.source]], { range: '3h' });
    sameSet(ids3h, ev.threeHourIds, 'last 3 hours');
    await page.locator('#tz').selectOption('utc');
    sameSet(await applyFilters([['EventSource', ev.source]], { range: 'custom', start: ev.custom.start, end: ev.custom.end }), ev.custom.ids, 'custom range (UTC)');
    // Read-only events hidden.
    sameSet(await applyFilters([['EventSource', ev.source]], { hideReadOnly: true }), ev.writeIds, 'read-only hidden');
    // Default columns, then optional ones.
    const headers = await page.$$eval('#events-table thead th[data-col]', (ths) => ths.map((t) => t.textContent));
    assert.deepEqual(headers, ['Event name', 'Event time', 'User name', 'Event source', 'Resource type', 'Resource name']);
    await page.locator('details.columns summary').click();
    for (const label of ['AWS access key', 'AWS region', 'Error code', 'Event ID', 'Read-only', 'Source IP address']) {
      await page.locator('details.columns').getByLabel(label, { exact: true }).check();
    }
    const wide = await page.$$eval('#events-table thead th[data-col]', (ths) => ths.map((t) => t.textContent));
    assert.equal(wide.length, 12, `all columns shown: ${wide}`);
    const errRow = page.locator(`#events-table tr[data-event-id="${ev.errorEvent.id}"]`);
    assert.equal(await errRow.locator('td[data-col="errorCode"]').textContent(), ev.errorEvent.errorCode);
    assert.equal(await errRow.locator('td[data-col="sourceIp"]').textContent(), ev.errorEvent.sourceIp);
    assert.equal(await errRow.locator('td[data-col="region"]').textContent(), ev.errorEvent.region);
    await page.locator('details.columns summary').click();
    // UTC and local time.
    const utc = await errRow.locator('td[data-col="eventTime"]').textContent();
    assert.equal(utc, ev.errorEvent.timeUtc);
    await markStale();
    await page.locator('#tz').selectOption('local');
    await tableIds();
    const local = await page.locator(`#events-table tr[data-event-id="${ev.errorEvent.id}"] td[data-col="eventTime"]`).textContent();
    assert.equal(local, ev.errorEvent.timeKolkata, 'local time in the browser zone (Asia/Kolkata)');
    await shot('event-history');
    // Paging: 50 a page, then the rest.
    const first = await applyFilters([['EventSource', ev.pagingSource]]);
    assert.equal(first.length, 50);
    await markStale();
    await page.getByRole('button', { name: 'Next page' }).click();
    const second = await tableIds();
    assert.match(await page.locator('.pager span').textContent(), /^Page 2/);
    assert.equal(first.length + second.length, ev.pagingCount);
    assert.equal(new Set([...first, ...second]).size, ev.pagingCount, 'no event on two pages');
    await page.getByRole('button', { name: 'Previous page' }).click();
    await until(() => document.querySelector('.pager span').textContent.startsWith('Page 1'), null, 'page 1');
    return {};
  },

  async details() {
    await signIn(cfg.root);
    const ev = cfg.events;
    await page.goto(`${cfg.url}/console/#/events/${ev.errorEvent.id}`);
    const summary = page.locator('#event-summary');
    await summary.waitFor();
    const text = await summary.textContent();
    for (const want of [ev.errorEvent.id, ev.errorEvent.requestId, ev.errorEvent.sourceIp, ev.errorEvent.userAgent,
      ev.errorEvent.errorCode, ev.errorEvent.errorMessage, ev.errorEvent.accessKey, ev.errorEvent.region]) {
      assert.ok(text.includes(want), `summary shows ${want}: ${text}`);
    }
    const json = JSON.parse(await page.locator('#record-json').textContent());
    assert.equal(json.eventID, ev.errorEvent.id);
    assert.equal(json.requestID, ev.errorEvent.requestId);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: cfg.url });
    await page.getByRole('button', { name: 'Copy JSON' }).click();
    await page.locator('#copy-status', { hasText: 'Copied' }).waitFor();
    const clip = await page.evaluate(() => navigator.clipboard.readText());
    assert.equal(JSON.parse(clip).eventID, ev.errorEvent.id, 'the clipboard holds the record');
    await shot('event-details');
    // A resource links to its other events.
    await markStale();
    await page.locator('#resources a', { hasText: ev.resource.name }).click();
    sameSet(await tableIds(), ev.resource.ids, 'events of the resource');
    // Compare three events.
    await applyFilters([['EventSource', ev.source]]);
    for (const id of ev.compareIds) {
      await page.locator(`#events-table tr[data-event-id="${id}"] input[type="checkbox"]`).check();
    }
    await page.getByRole('button', { name: /Compare selected \(3\)/ }).click();
    await page.locator('#compare-table').waitFor();
    const cols = await page.$$eval('#compare-table thead th', (ths) => ths.length);
    assert.equal(cols, 4, 'a field column and three events');
    const diffRows = await page.$$eval('#compare-table tbody tr', (rows) => rows.filter((r) => r.querySelector('td.diff')).map((r) => r.querySelector('th').textContent));
    assert.ok(diffRows.includes('Event ID'), `differences are marked: ${diffRows}`);
    await shot('compare');
    return {};
  },

  async downloads() {
    await signIn(cfg.root);
    await applyFilters([['EventSource', cfg.events.source]]);
    const out = {};
    for (const [format, button] of [['csv', 'Download CSV'], ['json', 'Download JSON']]) {
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: button }).click()]);
      const file = path.join(cfg.artifacts, `download.${format}`);
      await download.saveAs(file);
      assert.ok(download.suggestedFilename().endsWith(`.${format}`), download.suggestedFilename());
      out[format] = file;
    }
    return out;
  },

  async wizard() {
    await signIn(cfg.root);
    await page.goto(`${cfg.url}/console/#/trails`);
    await page.getByRole('button', { name: 'Create trail' }).click();
    // Live validation of the name.
    await page.getByLabel('Trail name').fill('a--b');
    await page.locator('#name-problem', { hasText: 'next to each other' }).waitFor();
    await page.getByLabel('Trail name').fill('ab');
    await page.locator('#name-problem', { hasText: '3 to 128' }).waitFor();
    await page.getByLabel('Trail name').fill(cfg.wizard.name);
    await until(() => document.querySelector('#name-problem').textContent === '', null, 'the name to be accepted');
    await page.getByLabel('S3 bucket', { exact: true }).fill(cfg.wizard.bucket);
    await page.getByLabel('Log file prefix (optional)').fill(cfg.wizard.prefix);
    await page.getByRole('button', { name: 'Add tag' }).click();
    await page.getByLabel('Tag key').fill('team');
    await page.getByLabel('Tag value').fill('audit');
    await shot('wizard-1-attributes');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.locator('#step2').waitFor();
    await page.getByLabel('API activity').selectOption('WriteOnly');
    await page.getByLabel('Exclude AWS KMS events').check();
    await shot('wizard-2-events');
    await page.getByRole('button', { name: 'Next' }).click();
    await page.locator('#review').waitFor();
    const review = await page.locator('#review').textContent();
    assert.ok(review.includes(cfg.wizard.name) && review.includes(cfg.wizard.bucket) && review.includes('team=audit'), review);
    await shot('wizard-3-review');
    await page.getByRole('button', { name: 'Create trail' }).click();
    await page.waitForURL(new RegExp(`#/trails/${cfg.wizard.name}$`));
    await page.locator('#trail-status .badge', { hasText: 'Logging' }).waitFor();
    // The first log file: the page refreshes its status until a delivery time shows.
    await until(() => {
      const dts = [...document.querySelectorAll('#trail-status dt')];
      const dt = dts.find((d) => d.textContent === 'Last log file delivered');
      return dt && dt.nextElementSibling.textContent.includes(':');
    }, null, 'the first delivery');
    await shot('trail-details');
    await page.getByRole('button', { name: 'Stop logging' }).click();
    await page.locator('#trail-status .badge', { hasText: 'Not logging' }).waitFor();
    await page.getByRole('button', { name: 'Start logging' }).click();
    await page.locator('#trail-status .badge', { hasText: /^Logging$/ }).waitFor();
    await page.goto(`${cfg.url}/console/#/trails`);
    await page.locator('#trails-table a', { hasText: cfg.wizard.name }).waitFor();
    await shot('trails');
    return {};
  },

  async manage() {
    await signIn(cfg.root);
    const name = cfg.manage.name;
    await page.goto(`${cfg.url}/console/#/trails/${name}`);
    await page.locator('#trail-settings').waitFor();
    // Edit: a new prefix and log file validation on.
    await page.getByRole('button', { name: 'Edit' }).click();
    await page.locator('#edit-prefix').fill('edited-prefix');
    await page.locator('#edit-validation').check();
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#alert', { hasText: 'updated' }).waitFor();
    await page.locator('#trail-settings', { hasText: 'edited-prefix' }).waitFor();
    // Tags: add one, remove it again.
    await page.locator('#new-tag-key').fill('owner');
    await page.locator('#new-tag-value').fill('secops');
    await page.getByRole('button', { name: 'Add tag' }).click();
    await page.locator('#tags-table', { hasText: 'secops' }).waitFor();
    await page.locator('#tags-table tr', { hasText: 'owner' }).getByRole('button', { name: 'Remove' }).click();
    await page.locator('#alert', { hasText: 'Tag owner removed' }).waitFor();
    assert.equal(await page.locator('#tags-table', { hasText: 'owner' }).count(), 0, 'the tag is gone');
    // Insights on.
    await page.getByRole('button', { name: 'Turn Insights on' }).click();
    await page.getByRole('button', { name: 'Turn Insights off' }).waitFor();
    await page.locator('#trail-settings', { hasText: 'ApiCallRateInsight, ApiErrorRateInsight' }).waitFor();
    // An error from the API is shown: a bucket that does not exist.
    await page.getByRole('button', { name: 'Edit' }).click();
    await page.locator('#edit-bucket').fill('no-such-bucket-here');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#alert', { hasText: 'S3BucketDoesNotExistException' }).waitFor();
    await shot('trail-error');
    // Delete, through the confirmation dialog.
    await page.getByRole('button', { name: 'Delete trail' }).click();
    await page.locator('#confirm-delete').waitFor();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await page.waitForURL(/#\/trails$/);
    await page.locator('#alert', { hasText: 'deleted' }).waitFor();
    return {};
  },

  async readonly() {
    await signIn(cfg.auditor);
    await page.goto(`${cfg.url}/console/#/trails`);
    await page.locator('#trails-table').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Create trail' }).isDisabled(), true, 'Create trail disabled');
    await page.goto(`${cfg.url}/console/#/trails/${cfg.insightsTrail}`);
    await page.locator('#trail-status').waitFor();
    for (const name of ['Stop logging', 'Edit', 'Turn Insights off', 'Delete trail']) {
      assert.equal(await page.getByRole('button', { name }).isDisabled(), true, `${name} disabled`);
    }
    await shot('trail-readonly');
    // The server refuses anyway: a StopLogging sent by hand with the right CSRF token.
    const refused = await page.evaluate(async (trail) => {
      const s = await (await fetch('api/session')).json();
      const r = await fetch('api/call/StopLogging', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-OpenTrail-Csrf': s.CsrfToken },
        body: JSON.stringify({ Name: trail }),
      });
      return { status: r.status, body: await r.json() };
    }, cfg.insightsTrail);
    assert.equal(refused.status, 403, JSON.stringify(refused));
    assert.match(refused.body.__type, /AccessDeniedException/);
    // And a write without the CSRF token is refused even for a user who may write.
    const noCsrf = await page.evaluate(async () => (await fetch('api/call/DescribeTrails', { method: 'POST', body: '{}' })).status);
    assert.notEqual(noCsrf, 200, 'a call without the CSRF token is refused');
    // An error from the API is shown to the user.
    await page.goto(`${cfg.url}/console/#/trails/no-such-trail-here`);
    await page.locator('#alert', { hasText: 'TrailNotFoundException' }).waitFor();
    return { refused: refused.body };
  },

  async alerts() {
    await signIn(cfg.root);
    await page.goto(`${cfg.url}/console/#/alerts`);
    await page.locator('#subscriptions-table').waitFor();
    const row = page.locator(`#subscriptions-table tr[data-subscription="${cfg.deadSubscription}"]`);
    const cells = await row.locator('td').allTextContents();
    const rule = await page.locator(`#rules-table tr[data-rule="${cfg.rule}"] td`).allTextContents();
    const dead = await page.locator('#dead-letters-table tbody tr').allTextContents();
    await shot('alerts');
    return { subscription: cells, rule, dead };
  },

  async insight() {
    await signIn(cfg.root);
    await page.goto(`${cfg.url}/console/#/insights`);
    await page.locator('#insights-table').waitFor();
    await shot('insights');
    await page.locator('#insights-table a', { hasText: 'CreateWidget' }).first().click();
    await page.locator('#insight-chart svg').waitFor();
    const points = await page.$eval('#insight-chart polyline', (p) => p.getAttribute('points').trim().split(/\s+/).length);
    assert.ok(points >= 60, `the chart has a point per minute: ${points}`);
    assert.equal(await page.locator('#insight-chart line.baseline').count(), 1, 'the baseline is drawn');
    const users = await page.locator('table.attribution[data-attribute="userIdentityArn"]').textContent();
    assert.ok(users.includes(cfg.insight.user), `top users name the burster: ${users}`);
    const agents = await page.locator('table.attribution[data-attribute="userAgent"]').textContent();
    assert.ok(agents.includes(cfg.insight.agent), agents);
    const summary = await page.locator('#insight-summary').textContent();
    assert.ok(summary.includes('API call rate') && summary.includes('widgets.amazonaws.com'), summary);
    await shot('insight-details');
    // Narrow screens: the page still lays out without a horizontal scrollbar on the body.
    await page.setViewportSize({ width: 420, height: 900 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `no horizontal overflow on a phone-sized screen: ${overflow}px`);
    await shot('insight-details-narrow');
    return {};
  },
};

let result;
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}; known: ${Object.keys(scenarios).join(', ')}`);
  result = await run();
  assert.deepEqual(consoleErrors, [], 'no script errors in the page');
} catch (err) {
  await shot(`${scenario}-failure`).catch(() => {});
  console.error(err && err.stack ? err.stack : err);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log(JSON.stringify(result || {}));
