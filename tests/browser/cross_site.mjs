// Headless Chromium as an admin's browser visiting pages of other sites (ATTACKERS, comma separated
// origins serving cross_site.html) that try to change the admin API at BASE: once without
// credentials, once signed in to /docs with HTTP Basic in the same profile. Prints every answer the
// control plane gave those pages as `cross-site: <tag> <method> <status>`; fails on a 2xx.
import { chromium } from 'playwright-core';

const base = process.env.BASE;
const key = process.env.ADMIN_KEY;
const attackers = process.env.ATTACKERS.split(',');
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const fail = (m) => { console.error('FAIL: ' + m); process.exitCode = 1; };

async function visit(ctx, attacker, tag) {
  const page = await ctx.newPage();
  const answers = [];
  page.on('response', (r) => {
    if (r.url().startsWith(`${base}/`)) answers.push(`${r.request().method()} ${r.status()}`);
  });
  // Not `load`: a frame stuck on a sign-in prompt (as without the checks) would hold it back.
  await page.goto(`${attacker}/?target=${encodeURIComponent(base)}&tag=${tag}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => window.done && window.done.length === 2, null, { timeout: 15000 })
    .catch(() => fail(`${tag}: the page's fetches did not settle (a sign-in prompt?)`));
  // The form posts into a frame; wait for its answer as well as the no-cors fetch's.
  const deadline = Date.now() + 10000;
  while (answers.filter((a) => a.startsWith('POST')).length < 2 && Date.now() < deadline) {
    await page.waitForTimeout(100);
  }
  await page.close();
  for (const a of answers) {
    console.log(`cross-site: ${tag} ${a}`);
    if (/ 2\d\d$/.test(a)) fail(`${tag}: the admin API accepted ${a}`);
  }
  if (answers.filter((a) => a.startsWith('POST')).length < 2) fail(`${tag}: saw only ${JSON.stringify(answers)}`);
}

try {
  const anon = await browser.newContext();
  for (const [i, attacker] of attackers.entries()) await visit(anon, attacker, `anon${i}`);
  await anon.close();

  // The admin signs in to the Swagger UI, then, in the same browser, opens another site.
  const admin = await browser.newContext({ httpCredentials: { username: 'admin', password: key, origin: base } });
  const docs = await (await admin.newPage()).goto(`${base}/docs/`);
  if (docs.status() !== 200) fail(`/docs with credentials answered ${docs.status()}`);
  for (const [i, attacker] of attackers.entries()) await visit(admin, attacker, `signed${i}`);
  await admin.close();
  console.log('cross-site done');
} finally {
  await browser.close();
}
