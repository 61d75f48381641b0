// The live operations page: polls the gateway once a second and counts hold TTLs down in between.
// Served under `default-src 'self'`: no inline code or style attributes, no third-party anything.
"use strict";

const POLL_INTERVAL_MS = 1000;
const TICK_INTERVAL_MS = 100; // the countdown shows tenths of a second
const REQUEST_TIMEOUT_MS = 5000; // a hung request must not stall polling for good
const FILTER_DEBOUNCE_MS = 300;
const HOLDS_LIMIT = 200;
const SLOTS_LIMIT = 5000; // the API's maximum: a large hall in one page
const SWEEPER_LAG_WARN_MS = 5000; // the sweeper runs about every second; five behind is worth a look
const SLOTS_SHOWN = 6; // per hold in the table; the rest is summarised as "+N"
const NO_HOLDS = "No active holds.";
const NO_EVENT_AVAILABILITY = "Set an event to see what is left of it.";
const OPEN_EVENT = "Open event: it has no inventory (any seat id may be held, and it has no pools).";
const LOADING = "Loading…";
const NO_WEBHOOKS = "No webhook endpoints (POST /v1/webhook-endpoints, or gateway webhooks --add URL).";
// What getJson answers when the gateway says the thing asked for does not exist, as the caller expected.
const ABSENT = Symbol("absent");

const $ = (id) => document.getElementById(id);

// The id grammar and the status names, as the gateway defines them: it puts them in the page as JSON.
const FORMATS = JSON.parse($("gateway-formats").textContent);
const EVENT_ID = new RegExp(FORMATS.identifier_pattern);

const filters = { event: "", holder: "" };
let generation = 0; // bumped on each filter change, so an answer to the old filters is dropped
let wakePoller = null; // cuts the wait between polls short when the filters change
let previousStats = null; // the last stats, to turn cumulative counters into rates
let lastSuccess = null;
// Until the listing first answers, an empty table means "not known yet", never "no holds".
let holdsAnswered = false;
const holdRows = new Map(); // hold id -> {node, ttlCell, secs, fill, ttlMs, fetchedAt, fullMs}
// The event whose availability is shown ("" for none yet): until it answers, the panel says "Loading…".
let availabilityOf = "";
const stockRows = new Map(); // "seats" or "pool:<id>" -> {node, total, parts, release}
const seatCells = new Map(); // slot id -> {node, state}
const webhookRows = new Map(); // endpoint id -> {node, pending, delivered, failed, error}
// Postgres orders slot ids as text (A10 before A2); a hall reads in natural order.
const naturalOrder = new Intl.Collator(undefined, { numeric: true }).compare;

// ---- fetching ----

async function getJson(path, { acceptUnavailable = false, absentType = null } = {}) {
  const route = path.split("?")[0];
  let response;
  try {
    response = await fetch(path, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (error) {
    throw new Error(`${route}: ${error.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): report the status alone
  }
  // /ready answers 503 with its usual body while the database is down: that is news, not a failure.
  if (response.ok || (acceptUnavailable && response.status === 503 && body)) return body;
  // A 404 of the expected problem type (an open event's availability) is an answer too.
  if (absentType && response.status === 404 && body && body.type === absentType) return ABSENT;
  const detail = body && (body.detail || body.title);
  throw new Error(`${route}: ${response.status}${detail ? ` ${detail}` : ""}`);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) search.set(name, value);
  return search.toString();
}

async function poll() {
  const asked = generation;
  const { event, holder } = filters;
  // Counted from when the requests left, a TTL errs toward less time left, never more.
  const sentAt = performance.now();
  const eventPath = event ? `/v1/events/${encodeURIComponent(event)}` : "/v1";
  const live = FORMATS.live_hold_status;
  const results = await Promise.allSettled([
    getJson("/ready", { acceptUnavailable: true }),
    getJson(`${eventPath}/stats`),
    getJson(`/v1/holds?${query({ status: live, event_id: event, holder, limit: HOLDS_LIMIT })}`),
    event ? getJson(`${eventPath}/slots?limit=${SLOTS_LIMIT}`) : Promise.resolve(null),
    event
      ? getJson(`${eventPath}/availability`, { absentType: FORMATS.no_inventory_problem })
      : Promise.resolve(null),
    getJson("/v1/webhook-endpoints"),
  ]);
  if (asked !== generation) return false; // the filters changed meanwhile: ask again at once
  const [ready, stats, holds, slots, availability, webhooks] = results.map((r) =>
    r.status === "fulfilled" ? r.value : undefined,
  );
  showReadiness(ready);
  if (stats) showStats(stats);
  if (holds) showHolds(holds, sentAt, stats);
  else if (!holdsAnswered) showHoldsUnknown(results[2].reason);
  if (slots !== undefined) showSeats(slots);
  if (availability !== undefined) showAvailability(availability, event);
  else if (availabilityOf !== event) showAvailabilityUnknown(results[4].reason);
  if (webhooks) showWebhooks(webhooks);
  showErrors(results.filter((r) => r.status === "rejected").map((r) => r.reason.message || String(r.reason)));
  return true;
}

async function pollForever() {
  for (;;) {
    const started = performance.now();
    let current = true;
    try {
      current = await poll();
    } catch (error) {
      showErrors([`page error: ${error.message}`]); // a bug here must not stop the polling
    }
    // One set of requests at a time: the next a second after this one started, at once if it ran late
    // or answered filters that have since changed.
    if (current) await sleep(POLL_INTERVAL_MS - (performance.now() - started));
  }
}

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, Math.max(0, ms));
    wakePoller = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

// ---- header ----

function showReadiness(ready) {
  const banner = $("banner");
  if (!ready) {
    // Last known health would read as current: say plainly that the gateway is not answering.
    banner.dataset.level = "unknown";
    banner.textContent = "no answer";
  } else if (ready.database !== "up") {
    banner.dataset.level = "down";
    banner.textContent = "database down";
  } else if (ready.mode === "redis-front") {
    banner.dataset.level = "ok";
    banner.textContent = "redis-front";
  } else {
    banner.dataset.level = "degraded";
    banner.textContent = `db-only — ${ready.mode_reason || "reason unknown"}`;
  }
}

function showErrors(messages) {
  const line = $("error");
  if (messages.length === 0) {
    lastSuccess = new Date();
    $("updated").textContent = clock(lastSuccess);
    line.hidden = true;
    line.textContent = "";
    return;
  }
  const since = lastSuccess ? `; showing data from ${clock(lastSuccess)}` : "";
  // Rewritten every second, an alert would repeat itself to a screen reader: only when the failure changes.
  if (line.hidden || line.dataset.messages !== messages.join("; ")) {
    const text = `Updates failing since ${clock(new Date())}: ${messages.join("; ")}${since}`;
    line.dataset.messages = messages.join("; ");
    line.textContent = text;
    line.hidden = false;
  }
}

const clock = (date) => date.toLocaleTimeString([], { hour12: false });

// ---- numbers ----

function showStats(stats) {
  const trips = stats.round_trip_ms;
  setMs($("postgres-ms"), trips.postgres_ms, true);
  // In db-only mode Redis is not expected to answer, and the banner already says why.
  setMs($("redis-ms"), trips.redis_ms, stats.mode === "redis-front");
  $("numbers-scope").textContent = stats.event_id ? `event ${stats.event_id}` : "all events";

  const holds = stats.holds;
  $("active").textContent = holds.active;
  $("confirmed").textContent = `${holds.confirmed} (${holds.confirmed_slots} slots)`;
  $("expiring-10s").textContent = holds.expiring_within_10s;
  $("expiring-60s").textContent = holds.expiring_within_60s;
  $("expired-last-minute").textContent = holds.expired_last_minute;
  const lag = $("sweeper-lag");
  lag.textContent = duration(stats.sweeper.lag_ms);
  lag.classList.toggle("warn", stats.sweeper.lag_ms > SWEEPER_LAG_WARN_MS);

  showAgreement(stats.agreement);
  showRates(stats);
}

function showAgreement(a) {
  const cell = $("agreement");
  if (a === null) {
    cell.textContent = "not checked without Redis";
    return;
  }
  const part = (count, label, bad = false) => {
    const span = document.createElement("span");
    const number = document.createElement("b");
    number.textContent = count;
    span.append(number, ` ${label}`);
    if (bad) span.className = "bad"; // a lease of another hold: Redis and Postgres disagree on who holds
    return span;
  };
  cell.replaceChildren(
    part(a.leased, "leased"),
    " · ",
    part(a.missing, "missing"),
    " · ",
    part(a.other_token, "other token", a.other_token > 0),
    a.complete ? "" : ` (a ${a.checked_slots}-slot sample)`,
  );
}

function showRates(stats) {
  const before = previousStats;
  previousStats = stats;
  if (!before) return;
  // Seconds by the database's clock between the two answers: the browser's own poll timing jitters.
  const seconds = (Date.parse(stats.generated_at) - Date.parse(before.generated_at)) / 1000;
  for (const [name, total] of Object.entries(stats.counters)) {
    const cell = $(`rate-${name}`);
    if (!cell) continue;
    const delta = total - before.counters[name];
    // A restart resets the totals; a zero interval has no rate.
    cell.textContent = seconds > 0 && delta >= 0 ? (delta / seconds).toFixed(1) : "–";
  }
}

function setMs(cell, ms, expected) {
  cell.classList.toggle("bad", ms === null && expected);
  if (ms !== null) cell.textContent = `${ms.toFixed(1)} ms`;
  else cell.textContent = expected ? "no answer" : "–";
}

function duration(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// ---- holds ----

function showHolds(page, sentAt, stats) {
  reconcile($("holds"), holdRows, page.holds, (hold) => hold.id, newHoldRow, (entry, hold) => {
    entry.ttlMs = hold.ttl_ms ?? 0;
    entry.fetchedAt = sentAt;
    // The hold's whole TTL, from two timestamps of the same (server) clock.
    entry.fullMs = Date.parse(hold.expires_at) - Date.parse(hold.created_at);
    entry.node.classList.remove("expired");
  });
  holdsAnswered = true;
  const empty = $("holds-empty");
  empty.textContent = NO_HOLDS;
  empty.classList.remove("bad");
  empty.hidden = page.holds.length > 0;
  const more = $("holds-more");
  more.hidden = page.next_cursor === null;
  // The listing has no total; without a holder filter, the stats' active count (same event scope) gives one.
  const extra = stats && !filters.holder ? stats.holds.active - page.holds.length : 0;
  more.textContent = extra > 0 ? `${extra} more…` : "More holds than shown: narrow the filters to see them.";
  tick();
}

function showHoldsUnknown(reason) {
  const empty = $("holds-empty");
  empty.textContent = `Could not load the holds (${reason ? reason.message || reason : "no answer"}); retrying…`;
  empty.classList.add("bad");
}

function newHoldRow(hold) {
  const node = document.createElement("tr");
  node.dataset.holdId = hold.id;
  const cell = (text, className) => {
    const td = node.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  };
  cell(hold.id, "id");
  // A hold spanning several events has no event_id of its own: its items name them.
  cell(hold.event_id ?? [...new Set(hold.items.map((item) => item.event_id))].join(", "));
  // Seats by id and a pool's units as "floor ×3": what the hold has, whichever form it was made in.
  const taken = hold.items.flatMap((item) => item.slots ?? [`${item.pool_id} ×${item.quantity}`]);
  const slots = taken.slice(0, SLOTS_SHOWN).join(", ");
  const rest = taken.length - SLOTS_SHOWN;
  cell(rest > 0 ? `${slots} +${rest}` : slots).title = taken.join(", ");
  cell(hold.holder);
  const ttlCell = cell("", "ttl");
  const secs = document.createElement("span");
  const bar = document.createElement("span");
  const fill = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  fill.className = "fill";
  bar.append(fill);
  ttlCell.append(secs, bar);
  return { node, ttlCell, secs, fill };
}

// Between polls the countdowns run on the page's monotonic clock: the browser's wall clock may disagree
// with the server's, and only elapsed time is needed.
function tick() {
  const now = performance.now();
  for (const entry of holdRows.values()) {
    const leftMs = Math.max(0, Math.round(entry.ttlMs - (now - entry.fetchedAt)));
    entry.ttlCell.dataset.ttlMs = leftMs;
    entry.secs.textContent = leftMs > 0 ? `${(leftMs / 1000).toFixed(1)} s` : "expired";
    const left = entry.fullMs > 0 ? Math.min(1, leftMs / entry.fullMs) : 0;
    // Set through the CSSOM, which the CSP allows (a style attribute in markup it would refuse).
    entry.fill.style.width = `${(100 * left).toFixed(1)}%`;
    entry.fill.classList.toggle("low", left < 0.25);
    // Greyed until the next poll, which no longer lists it.
    entry.node.classList.toggle("expired", leftMs === 0);
  }
}

// ---- availability ----

// `answer`: the event's availability, ABSENT for an open event, null when no event is set.
function showAvailability(answer, event) {
  availabilityOf = event;
  $("availability-scope").textContent = event ? `event ${event}` : "";
  const hint = $("availability-hint");
  hint.classList.remove("bad");
  const rows = [];
  if (answer === null || answer === ABSENT) {
    hint.textContent = answer === null ? NO_EVENT_AVAILABILITY : OPEN_EVENT;
  } else {
    // Seats and pools as one kind of row: a total split into parts, taken ones first, and what is left.
    const seats = answer.seats;
    if (seats.total > 0 || answer.pools.length === 0) {
      rows.push({
        key: "seats",
        name: "Seats",
        total: seats.total,
        unit: "seats",
        // The answer's own counts, in its order reversed (taken ones first, what is free last): the page
        // keeps no list of states of its own.
        parts: Object.entries(seats)
          .filter(([name]) => name !== "total")
          .reverse(),
        release: null,
      });
    }
    for (const pool of answer.pools) {
      rows.push({
        key: `pool:${pool.pool_id}`,
        poolId: pool.pool_id,
        name: pool.pool_id,
        total: pool.capacity,
        unit: "units",
        parts: Object.entries(pool)
          .filter(([name]) => !POOL_FIELDS_NOT_COUNTS.has(name))
          .reverse(),
        // In how long, by the database's clock (the answer's as_of): the browser's clock may disagree.
        release: pool.next_release_at && {
          at: pool.next_release_at,
          inMs: Date.parse(pool.next_release_at) - Date.parse(answer.as_of),
        },
      });
    }
    $("availability-limits").textContent = limitsText(answer.limits);
  }
  hint.hidden = rows.length > 0;
  $("availability-panel").hidden = rows.length === 0;
  reconcile($("availability"), stockRows, rows, (row) => row.key, newStockRow, updateStockRow);
}

// Until the event's availability first answers, its panel says so, never shows another event's.
function showAvailabilityPending(event) {
  if (!event) {
    showAvailability(null, "");
    return;
  }
  availabilityOf = "";
  $("availability-scope").textContent = `event ${event}`;
  const hint = $("availability-hint");
  hint.textContent = LOADING;
  hint.classList.remove("bad");
  hint.hidden = false;
  $("availability-panel").hidden = true;
}

function showAvailabilityUnknown(reason) {
  const hint = $("availability-hint");
  hint.textContent = `Could not load the availability (${reason ? reason.message || reason : "no answer"}); retrying…`;
  hint.classList.add("bad");
  hint.hidden = false;
  $("availability-panel").hidden = true;
}

function limitsText(limits) {
  const parts = [];
  if (limits.per_holder !== null) parts.push(`${limits.per_holder} per holder`);
  if (limits.per_hold !== null) parts.push(`${limits.per_hold} per hold`);
  return parts.length ? `Limits: ${parts.join(" · ")}.` : "No limit per holder or per hold.";
}

function newStockRow(row) {
  const node = document.createElement("li");
  if (row.poolId === undefined) node.dataset.row = row.key;
  else node.dataset.poolId = row.poolId;
  const head = document.createElement("div");
  head.className = "stock-head";
  const name = document.createElement("b");
  name.textContent = row.name;
  const total = document.createElement("b");
  total.dataset.count = "total";
  head.append(name, " ", total, ` ${row.unit}`);
  // The bar is a picture of the numbers below it, which screen readers read instead.
  const bar = document.createElement("span");
  bar.className = "stack";
  bar.setAttribute("aria-hidden", "true");
  const counts = document.createElement("p");
  counts.className = "counts";
  const parts = new Map();
  for (const [part] of row.parts) {
    const segment = document.createElement("span");
    segment.dataset.part = part;
    bar.append(segment);
    const count = document.createElement("b");
    count.dataset.count = part;
    if (parts.size) counts.append(" · ");
    counts.append(count, ` ${part}`);
    parts.set(part, { segment, count });
  }
  const release = document.createElement("span");
  release.className = "release";
  const time = document.createElement("time");
  const inText = document.createElement("span");
  release.append(" · next release ", time, inText);
  counts.append(release);
  node.append(head, bar, counts);
  return { node, total, parts, release, time, inText };
}

function updateStockRow(entry, row) {
  entry.total.textContent = row.total;
  for (const [part, count] of row.parts) {
    const { segment, count: cell } = entry.parts.get(part);
    cell.textContent = count;
    // Set through the CSSOM, which the CSP allows (a style attribute in markup it would refuse).
    segment.style.width = `${row.total > 0 ? ((100 * count) / row.total).toFixed(1) : 0}%`;
  }
  entry.release.hidden = row.release === null;
  if (row.release) {
    entry.time.dateTime = row.release.at;
    entry.time.textContent = clock(new Date(row.release.at));
    entry.inText.textContent = row.release.inMs > 0 ? ` (in ${roughDuration(row.release.inMs)})` : " (due)";
  }
}

// Whole seconds, then minutes and hours: how far off a release is, not a stopwatch.
function roughDuration(ms) {
  const s = Math.ceil(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

// ---- seat map ----

function showSeats(page) {
  $("seats-hint").hidden = page !== null;
  $("seats-panel").hidden = page === null;
  $("seats-scope").textContent = page ? `event ${page.event_id}` : "";
  const slots = page ? [...page.slots].sort((x, y) => naturalOrder(x.slot_id, y.slot_id)) : [];
  const counts = Object.fromEntries(FORMATS.slot_states.map((state) => [state, 0]));
  reconcile($("seats"), seatCells, slots, (slot) => slot.slot_id, newSeat, (entry, slot) => {
    counts[slot.state] += 1;
    if (entry.node.dataset.state === slot.state) return;
    entry.node.dataset.state = slot.state;
    entry.node.title = `${slot.slot_id}: ${slot.state}`;
    entry.state.textContent = `: ${slot.state}`;
  });
  for (const [state, count] of Object.entries(counts)) $(`count-${state}`).textContent = count;
  $("seats-more").hidden = !page || page.next_cursor === null;
}

function newSeat(slot) {
  const node = document.createElement("li");
  node.dataset.slotId = slot.slot_id;
  // The state in words for screen readers, which read neither colour nor title.
  const state = document.createElement("span");
  state.className = "visually-hidden";
  node.append(slot.slot_id, state);
  return { node, state };
}

// ---- webhooks ----

function showWebhooks(page) {
  const endpoints = page.webhook_endpoints;
  reconcile($("webhooks"), webhookRows, endpoints, (e) => e.id, newWebhookRow, (entry, endpoint) => {
    entry.pending.textContent = endpoint.pending;
    entry.delivered.textContent = endpoint.delivered;
    entry.failed.textContent = endpoint.failed;
    entry.failed.classList.toggle("bad", endpoint.failed > 0);
    const error = endpoint.last_error;
    entry.error.textContent = error ? `${clock(new Date(endpoint.last_error_at))} ${error}` : "–";
    entry.error.title = error ?? "";
    // An error older than the last delivery is history: the endpoint has recovered since.
    const delivered = endpoint.last_delivered_at ? Date.parse(endpoint.last_delivered_at) : 0;
    const current = error && !(delivered > Date.parse(endpoint.last_error_at));
    entry.error.classList.toggle("warn", Boolean(current));
  });
  $("webhooks-panel").hidden = endpoints.length === 0;
  const hint = $("webhooks-hint");
  hint.hidden = endpoints.length > 0;
  hint.textContent = NO_WEBHOOKS;
}

function newWebhookRow(endpoint) {
  const node = document.createElement("tr");
  node.dataset.endpointId = endpoint.id;
  const cell = (text, className) => {
    const td = node.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  };
  cell(endpoint.id, "id");
  cell(endpoint.url, "url").title = endpoint.url;
  return {
    node,
    pending: cell("", "num pending"),
    delivered: cell("", "num delivered"),
    failed: cell("", "num failed"),
    error: cell("", "last-error"),
  };
}

// Keeps one DOM node per key, in the order of `items`: rows stay put between polls rather than flicker.
function reconcile(container, entries, items, keyOf, create, update) {
  const seen = new Set();
  let next = container.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    seen.add(key);
    let entry = entries.get(key);
    if (!entry) {
      entry = create(item);
      entries.set(key, entry);
    }
    update(entry, item);
    if (entry.node === next) next = next.nextElementSibling;
    else container.insertBefore(entry.node, next);
  }
  for (const [key, entry] of entries) {
    if (seen.has(key)) continue;
    entry.node.remove();
    entries.delete(key);
  }
}

// ---- filters ----

function readFilters() {
  const params = new URLSearchParams(location.search);
  $("event").value = params.get("event") || "";
  $("holder").value = params.get("holder") || "";
  applyFilters();
}

function applyFilters() {
  const eventInput = $("event");
  const event = eventInput.value.trim();
  const valid = event === "" || EVENT_ID.test(event);
  eventInput.setAttribute("aria-invalid", String(!valid));
  $("filters-help").classList.toggle("bad", !valid);
  if (!valid) return; // the gateway would answer 422; keep showing the last valid filter
  // The gateway matches holders exactly, spaces included: only an all-blank box means "any holder".
  const typed = $("holder").value;
  const holder = typed.trim() ? typed : "";
  if (event === filters.event && holder === filters.holder) return;
  if (event !== filters.event) showAvailabilityPending(event);
  filters.event = event;
  filters.holder = holder;
  generation += 1;
  // The filters live in the URL, so a link shows the same view.
  const search = query({ event, holder });
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}`);
  if (wakePoller) wakePoller();
}

function debounce(fn, ms) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// The cells whose list the gateway gives: a state or a reason it adds shows up here without a page change.
// A pool's fields in the availability answer that are not unit counts.
const POOL_FIELDS_NOT_COUNTS = new Set(["pool_id", "capacity", "next_release_at"]);

function buildFromFormats() {
  const legend = $("legend");
  for (const state of FORMATS.slot_states) {
    const item = document.createElement("li");
    item.dataset.state = state;
    const count = document.createElement("span");
    count.id = `count-${state}`;
    count.textContent = "0";
    item.append(`${state} `, count);
    legend.append(item);
  }
  const rejections = $("rejection-rates");
  for (const [reason, field] of Object.entries(FORMATS.rejection_counters)) {
    const cell = document.createElement("div");
    const label = document.createElement("dt");
    label.textContent = `Rejected: ${reason.replaceAll("_", " ")}`;
    const rate = document.createElement("dd");
    rate.id = `rate-${field}`;
    rate.textContent = "–";
    cell.append(label, rate);
    rejections.append(cell);
  }
}

function start() {
  buildFromFormats();
  readFilters();
  const onInput = debounce(applyFilters, FILTER_DEBOUNCE_MS);
  $("event").addEventListener("input", onInput);
  $("holder").addEventListener("input", onInput);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault(); // Enter applies at once, without reloading the page
    applyFilters();
  });
  setInterval(tick, TICK_INTERVAL_MS);
  pollForever();
}

start();
