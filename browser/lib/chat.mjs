// The chat demo as the browser tests drive it: open it in a fresh profile, say something,
// and check what a page shows.
import assert from "node:assert/strict";

/** A new browser profile (its own localStorage) on the demo at `baseUrl`, in `room`, connected. */
export async function openChat(browser, baseUrl, room, name) {
  const context = await browser.newContext({ viewport: { width: 960, height: 560 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  page.errors = errors;
  await page.goto(`${baseUrl}/#${room}`);
  await page.fill("#name", name);
  await page.waitForSelector('#status[data-state="connected"]');
  await page.waitForSelector(`#rooms li.current a[href="#${room}"]`);
  return page;
}

export async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

export const texts = (page) => page.$$eval("#messages .text", (nodes) => nodes.map((n) => n.textContent));
const offsets = (page) => page.$$eval("#messages li", (nodes) => nodes.map((n) => Number(n.dataset.offset)));

/** Waits until the page shows exactly `expected` (in this order), then checks it stays so. */
export async function showsExactly(page, expected, timeout = 10_000) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify([...document.querySelectorAll("#messages .text")].map((n) => n.textContent)) === want,
      JSON.stringify(expected),
      { timeout },
    );
  } catch {
    assert.deepEqual(await texts(page), expected);
  }
  await page.waitForTimeout(300); // nothing more trickles in (no duplicates)
  assert.deepEqual(await texts(page), expected);
  const seen = await offsets(page);
  assert.ok(
    seen.every((offset, i) => i === 0 || offset === seen[i - 1] + 1),
    `offsets consecutive: ${seen}`,
  );
}
