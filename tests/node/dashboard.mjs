// The dashboard in a real browser: Debian's chromium driven by playwright-core (pinned in
// package.json to the release built for that chromium). Run by tests/it/dashboard.rs against
// the real binary:  node dashboard.mjs BASE_URL SCREENSHOT_PATH [API_KEY]
// Checks that the table fills, events reach the feed, a filter hides what it should, a dropped
// connection is resumed without a gap, nothing is fetched from elsewhere and the console has no
// errors. Prints one JSON line; exits 1 with the reason on the first failure.
import { chromium } from 'playwright-core';

const [base, shot, key] = process.argv.slice(2);
const origin = new URL(base).origin;
const problems = [];
const foreign = [];
const leaked = [];
const facts = {};

function fail(why) {
  throw new Error(why);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('request', (r) => {
    // No request may carry the page's URL (and its ?token=) in a Referer.
    const referer = r.headers()['referer'];
    if (referer) leaked.push(r.url() + ' <- ' + referer);
    const u = new URL(r.url());
    if (u.origin !== origin && !(u.protocol === 'ws:' && u.host === new URL(origin).host) && u.protocol !== 'data:') foreign.push(r.url());
  });
  const st = (expr, arg) => page.evaluate(expr, arg);

  await page.goto(base + '/' + (key ? '?token=' + encodeURIComponent(key) : ''));
  // The key leaves the address bar (and so the history) once the page has read it.
  await page.waitForFunction(() => !location.search.includes('token'), null, { timeout: 5000 });
  facts.url = page.url();

  // The table fills from the pairs channel.
  await page.waitForFunction(() => document.querySelectorAll('#pairs tbody tr').length >= 5, null, { timeout: 30000 });
  // Both counts in one look at the page: the table keeps growing while the test reads it.
  const [rows, simTagged] = await page.evaluate(() => [
    document.querySelectorAll('#pairs tbody tr').length,
    document.querySelectorAll('#pairs tbody tr .tag-sim').length,
  ]);
  facts.rows = rows;
  if (simTagged !== facts.rows) fail(`simulated rows not all marked: ${simTagged} of ${facts.rows}`);
  if (await page.locator('#simulated').isHidden()) fail('the SIMULATED banner is hidden');

  // Events reach the feed, newest first, two kinds at least (for the filter).
  await page.waitForFunction(() => {
    const kinds = new Set([...document.querySelectorAll('#feed > li .kind')].map((e) => e.textContent));
    return kinds.size >= 2;
  }, null, { timeout: 60000 });
  const seqs = await page.$$eval('#feed > li', (l) => l.map((e) => Number(e.dataset.seq)));
  for (let i = 1; i < seqs.length; i++) if (seqs[i] >= seqs[i - 1]) fail(`feed not newest first: ${seqs.slice(0, 10)}`);
  facts.feed = seqs.length;

  // A filter hides what it should: only the chosen kind stays, in the feed and in the table.
  // A kind in the feed that some pair has open, when there is one: then the table is checked
  // on rows it must keep, not only on rows it must hide.
  const kind = await st(() => {
    const inFeed = [...document.querySelectorAll('#feed > li .kind')].map((e) => e.textContent);
    const open = new Set([...window.dexpulse.pairs.values()].flatMap((p) => p.open_signals || []));
    return inFeed.find((k) => open.has(k)) || inFeed[0];
  });
  await page.selectOption('#f-kind', kind);
  // Read in one turn of the page's loop, so that no event arrives between the two counts.
  const { kinds, total, matching } = await st((k) => ({
    kinds: [...document.querySelectorAll('#feed > li .kind')].map((e) => e.textContent),
    total: window.dexpulse.events.length,
    matching: window.dexpulse.events.filter(({ e }) => e.kind === k).length,
  }), kind);
  if (!kinds.length || kinds.some((k) => k !== kind)) fail(`kind filter ${kind} shows ${[...new Set(kinds)]}`);
  if (kinds.length !== matching || kinds.length >= total) fail(`kind filter shows ${kinds.length}, ${matching} match, of ${total}`);
  // The table rendered and compared with the pairs in the same turn: updates keep coming.
  const { open, expected } = await st((k) => {
    window.dexpulse.render();
    return {
      open: [...document.querySelectorAll('#pairs tbody tr td:nth-child(9)')].map((e) => e.textContent),
      expected: [...window.dexpulse.pairs.values()].filter((p) => (p.open_signals || []).includes(k)).length,
    };
  }, kind);
  if (open.some((o) => !o.split(', ').includes(kind))) fail(`table rows without an open ${kind}: ${open.slice(0, 5)}`);
  if (open.length !== expected) fail(`${open.length} rows for ${kind}, ${expected} pairs have it open`);
  facts.filter = { kind, feed: kinds.length, rows: open.length };
  await page.selectOption('#f-kind', '');
  await page.fill('#f-score', '101');
  if (await page.locator('#feed > li').count() !== 0) fail('min score 101 left events in the feed');
  await page.fill('#f-score', '0');

  // A pair's sparklines.
  await page.locator('#pairs tbody tr').first().click();
  await page.waitForSelector('#spark-price canvas', { timeout: 10000 });

  // The connection drops; the page resumes from its last seq: no gap, no duplicate.
  const before = await st(() => ({ seq: window.dexpulse.seq, gaps: window.dexpulse.gaps }));
  if (before.gaps !== 0) fail(`gaps before the drop: ${before.gaps}`);
  await st(() => window.dexpulse.ws.close());
  await page.waitForFunction(() => window.dexpulse.resumes >= 1, null, { timeout: 20000 });
  await page.waitForFunction((s) => window.dexpulse.seq >= s + 3, before.seq, { timeout: 90000 });
  const after = await st(() => ({ seq: window.dexpulse.seq, gaps: window.dexpulse.gaps, resumes: window.dexpulse.resumes, duplicates: window.dexpulse.duplicates, conn: document.getElementById('conn').dataset.state }));
  if (after.gaps !== 0 || after.duplicates !== 0) fail(`after the resume: ${JSON.stringify(after)}`);
  const all = await page.$$eval('#feed > li', (l) => l.map((e) => Number(e.dataset.seq)));
  for (let i = 1; i < all.length; i++) if (all[i] !== all[i - 1] - 1) fail(`feed seqs not contiguous at ${all[i - 1]} → ${all[i]}`);
  if (!all.includes(before.seq) || !all.includes(before.seq + 1)) fail(`the seqs around the drop are missing: ${before.seq}`);
  facts.resume = { before, after };

  // Hostile strings (the server caps and marks them; the page must still show them safely): a
  // symbol with a character the server replaced, a Cyrillic look-alike of USDC, and one of
  // 20,000 characters.
  const hostile = await st(() => {
    const model = [...window.dexpulse.pairs.values()][0];
    const mk = (addr, symbol) => ({ ...model, pair_address: addr, base_token: { ...model.base_token, symbol } });
    window.dexpulse.pairs.set(model.chain + ':hostile1', mk('hostile1', 'US\uFFFDDC'));
    window.dexpulse.pairs.set(model.chain + ':hostile2', mk('hostile2', 'USD\u0421'));
    window.dexpulse.pairs.set(model.chain + ':hostile3', mk('hostile3', 'W'.repeat(20000)));
    window.dexpulse.render();
    const syms = [...document.querySelectorAll('#pairs .sym')];
    return {
      suspicious: [...document.querySelectorAll('#pairs .sym.suspicious')].map((e) => e.textContent),
      widest: Math.max(...syms.map((e) => e.getBoundingClientRect().width)),
      fits: document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1,
    };
  });
  if (hostile.suspicious.length !== 2) fail(`suspicious symbols marked: ${JSON.stringify(hostile.suspicious)}`);
  if (hostile.widest > 200 || !hostile.fits) fail(`a long symbol is not cut: ${JSON.stringify(hostile)}`);
  facts.hostile = hostile;
  await st(() => {
    for (const k of [...window.dexpulse.pairs.keys()]) if (k.includes(':hostile')) window.dexpulse.pairs.delete(k);
    window.dexpulse.render();
  });
  // A fragment that does not decode is ignored (no uncaught error).
  await page.evaluate(() => { location.hash = '#pair=%E0%A4%A'; });
  await page.waitForTimeout(300);

  await page.screenshot({ path: shot, fullPage: false });

  // Without the key the socket is refused: the page says so and does not pretend to be live.
  const keyless = await browser.newPage();
  keyless.on('console', () => {}); // the refused upgrade logs a network error by design
  await keyless.goto(base + '/');
  await keyless.waitForFunction(() => document.getElementById('conn').textContent.includes('API key'), null, { timeout: 15000 });
  facts.keyless = await keyless.evaluate(() => ({ connections: window.dexpulse.connections, says: document.getElementById('conn').textContent }));
  if (facts.keyless.connections !== 0) fail(`a keyless page got a session: ${JSON.stringify(facts.keyless)}`);
  await keyless.close();

  // On a phone: one column, nothing wider than the screen but the table's own scroller.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  phone.on('console', (m) => { if (m.type() === 'error') problems.push('phone console: ' + m.text()); });
  await phone.goto(base + '/?token=' + encodeURIComponent(key || ''));
  await phone.waitForFunction(() => document.querySelectorAll('#pairs tbody tr').length >= 5, null, { timeout: 30000 });
  facts.phone = await phone.evaluate(() => ({
    // clientWidth is the screen's width in CSS pixels; a wider document would scroll sideways.
    width: document.documentElement.scrollWidth,
    screen: document.documentElement.clientWidth,
    fits: document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1,
    columns: getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length,
  }));
  await phone.screenshot({ path: shot.replace(/\.png$/, '-phone.png') });
  await phone.close();
  if (foreign.length) fail(`requests to other origins: ${foreign}`);
  if (leaked.length) fail(`requests with a Referer: ${leaked.slice(0, 3)}`);
  if (problems.length) fail(problems.join('; '));
  console.log(JSON.stringify({ ok: true, ...facts }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e), problems, facts }));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
