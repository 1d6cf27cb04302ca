// Drives the control plane's Swagger UI in headless Chromium: refused without credentials; with them,
// Authorize takes the Bearer key, "Try it out" on listing users returns 200 and on creating one 201
// (a JSON POST from the control plane's own origin passes its browser checks).
import { chromium } from 'playwright-core';

const base = process.env.BASE;
const key = process.env.ADMIN_KEY;
const out = process.env.OUT || '.';
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const fail = (m) => { console.error('FAIL: ' + m); process.exitCode = 1; };
try {
  const anon = await browser.newContext();
  // A browser without credentials is asked for them: the navigation is refused.
  const refused = await (await anon.newPage()).goto(`${base}/docs/`).then(() => false, (e) => /AUTH/.test(String(e)));
  if (!refused) fail('anonymous /docs was not refused');
  const r = await anon.request.get(`${base}/docs/`);
  if (r.status() !== 401) fail(`anonymous /docs answered ${r.status()}`);
  await anon.close();

  const ctx = await browser.newContext({ httpCredentials: { username: 'admin', password: key } });
  const page = await ctx.newPage();
  const seen = [];
  page.on('request', (req) => { if (req.url().includes('/api/v1/users')) seen.push(req.headers()['authorization'] || ''); });
  const docs = await page.goto(`${base}/docs/`);
  if (docs.status() !== 200) fail(`/docs with credentials answered ${docs.status()}`);
  await page.getByRole('button', { name: /Authorize/ }).first().click();
  const dialog = page.locator('.modal-ux');
  const bearer = dialog.locator('.auth-container', { hasText: 'bearer' }).first();
  await bearer.locator('input').first().fill(key);
  await bearer.locator('button.authorize').click();
  await dialog.locator('button.btn-done').first().click();
  const op = page.locator('#operations-users-list_users');
  await op.locator('.opblock-summary').click();
  const tryOut = op.locator('button.try-out__btn');
  if ((await tryOut.innerText()).includes('Try it out')) await tryOut.click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor({ timeout: 15000 });
  const code = (await status.innerText()).trim();
  if (code !== '200') fail(`Try it out answered ${code}`);
  const body = await op.locator('.live-responses-table .highlight-code').first().innerText();
  if (!body.includes('"items"')) fail(`response body not shown: ${body.slice(0, 200)}`);
  if (!seen.some((h) => h.startsWith('Bearer '))) fail(`no Bearer header was sent: ${JSON.stringify(seen)}`);
  await page.screenshot({ path: `${out}/swagger.png`, fullPage: false });
  console.log(`swagger ok: status ${code}, authorization ${seen[0] && seen[0].split(' ')[0]}`);

  const create = page.locator('#operations-users-create_user');
  await create.locator('.opblock-summary').click();
  const tryCreate = create.locator('button.try-out__btn');
  if ((await tryCreate.innerText()).includes('Try it out')) await tryCreate.click();
  await create.locator('textarea.body-param__text').fill(JSON.stringify({ email: 'swagger@example.com' }));
  await create.locator('button.execute').click();
  const created = create.locator('.live-responses-table .response .response-col_status').first();
  await created.waitFor({ timeout: 15000 });
  const createdCode = (await created.innerText()).trim();
  if (createdCode !== '201') {
    const body = await create.locator('.live-responses-table .highlight-code').first().innerText().catch(() => '');
    fail(`creating a user answered ${createdCode}: ${body.slice(0, 300)}`);
  }
  console.log(`swagger create: status ${createdCode}`);
} finally {
  await browser.close();
}
