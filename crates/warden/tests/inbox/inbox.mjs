// The web approvals inbox in a real browser (run by crates/warden/tests/inbox.rs, which
// starts `warden serve`, opens the approvals and the question, and holds the waiting
// callers' long-polls). Debian's Chromium, headless, driven by playwright-core.
//
// Signs in with the approver key, approves one request, rejects another with a reason,
// answers a question, then asks for a new approval (as the controller) and waits for it to
// appear on the page without a reload; filters the recently decided list; takes a
// screenshot. Any failure throws (exit 1); success prints one JSON line.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set`);
  return value;
};
const base = env("WARDEN_URL");
const approverKey = env("APPROVER_KEY");
const controllerKey = env("CONTROLLER_KEY");
const approveId = env("APPROVE_ID");
const rejectId = env("REJECT_ID");
const questionId = env("QUESTION_ID");
const screenshot = env("SCREENSHOT");

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
  "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // Anything the Content-Security-Policy blocked means the page tried inline code.
    if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });

  // Sign in.
  const signIn = await page.goto(`${base}/`);
  assert.equal(signIn.status(), 200);
  assert.equal(signIn.headers()["content-security-policy"], CSP);
  await page.fill("#key", approverKey);
  await Promise.all([page.waitForURL(`${base}/`), page.click("main.sign-in button[type=submit]")]);
  await page.getByText("Signed in as").waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "warden_session");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.ok(!session.value.includes(approverKey.split("_")[2]), "the cookie is not the key");
  assert.equal(await page.evaluate(() => document.cookie), "", "no cookie is readable by script");

  // What the approver sees of each request.
  const toApprove = page.locator(`#approval-${approveId}`);
  await toApprove.waitFor();
  for (const text of ["ticket.escalate", "T-APPROVE", "support-bot", "user-991", "legal-escalation",
    "legal-sensitive tickets need a human before escalation"]) {
    assert.ok((await toApprove.innerText()).includes(text), `${text} is shown`);
  }
  assert.match(await toApprove.locator("time[data-expires-at]").innerText(), /^3h 59m|^4h 0m/);

  // Approve one, with a reason.
  await toApprove.locator("input[name=reason]").fill("checked with counsel");
  await Promise.all([page.waitForURL(/notice=approved/), toApprove.locator("button.approve").click()]);
  await page.getByText("Approved: the waiting caller has its answer.").waitFor();
  assert.equal(await page.locator(`#approval-${approveId}`).count(), 0);

  // Reject another, with a reason.
  const toReject = page.locator(`#approval-${rejectId}`);
  await toReject.locator("input[name=reason]").fill("not without the customer's consent");
  await Promise.all([page.waitForURL(/notice=rejected/), toReject.locator("button.reject").click()]);
  await page.getByText("Rejected: the waiting caller has its answer.").waitFor();

  // Answer the question by choosing an option.
  const question = page.locator(`#question-${questionId}`);
  assert.ok((await question.innerText()).includes("Refund or replace the broken router?"));
  await Promise.all([
    page.waitForURL(/notice=answered/),
    question.locator("button.option", { hasText: "replace" }).click(),
  ]);
  await page.getByText("Answered: the agent has your answer.").waitFor();

  // The recently decided list holds all three.
  for (const id of [approveId, rejectId, questionId]) {
    await page.locator(`#decided-${id}`).waitFor();
  }

  // A new approval, asked for after the page loaded, appears by itself.
  await page.locator("body.live").waitFor();
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
  const response = await fetch(`${base}/v1/decisions`, {
    method: "POST",
    headers: { authorization: `Bearer ${controllerKey}`, "content-type": "application/json" },
    body: JSON.stringify({
      type: "ticket.escalate",
      agent: "support-bot",
      on_behalf_of: "user-1234",
      target: { type: "ticket", id: "T-LIVE" },
    }),
  });
  assert.equal(response.status, 200);
  const decision = await response.json();
  assert.equal(decision.effect, "require_approval");
  const liveId = decision.approval.id;
  const arrived = page.locator(`#approval-${liveId}`);
  await arrived.waitFor({ timeout: 15_000 });
  assert.ok((await arrived.innerText()).includes("T-LIVE"));
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page did not reload");
  assert.match(await page.locator("#waiting").innerText(), /Waiting for you \(1\)/);

  await page.screenshot({ path: screenshot, fullPage: true });

  // Filter the recently decided list: the choice applies as it changes.
  await Promise.all([page.waitForURL(/status=rejected/), page.selectOption("form.filters select[name=status]", "rejected")]);
  await page.locator(`#decided-${rejectId}`).waitFor();
  assert.equal(await page.locator(`#decided-${approveId}`).count(), 0, "filtered out");
  assert.equal(await page.locator(`#decided-${questionId}`).count(), 0, "filtered out");

  // Sign out: the session ends, and the page says so.
  await Promise.all([page.waitForURL(/notice=signed-out/), page.click("form.sign-out button")]);
  await page.getByText("You are signed out.").waitFor();
  assert.equal((await context.cookies()).some((c) => c.name === "warden_session"), false);

  assert.deepEqual(problems, []);
  console.log(JSON.stringify({ ok: true, live_approval: liveId }));
} finally {
  await browser.close();
}
