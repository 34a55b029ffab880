// sdq playground: a static page over the public REST API (no build step, no dependencies).
//
// The API key lives in sessionStorage and travels only in the x-api-key header (the one API Gateway's authorizer
// reads: a key sent any other way is refused there and by the local API alike). The API base URL is
// configurable (connect form, then config.js, then this page's origin); cross-origin use needs CORS on the API.
(() => {
  "use strict";

  const KEY_STORE = "sdq.apiKey";
  const BASE_STORE = "sdq.apiBase";
  const POLL_MS = 1000;
  const POLL_HIDDEN_MS = 5000;
  const LIST_LIMIT = 50;
  // The list carries no queue position (each costs index reads): the oldest queued jobs' own GETs do, this many per
  // poll, well inside the API key's request rate.
  const QUEUE_LOOKUPS = 2;
  const OVERRIDE_MS = 15000; // how long a POST answer outranks a list that has not caught up yet
  const URL_MARGIN_MS = 60000; // presigned URLs are reused until this close to expiry
  const UNFINISHED = new Set(["QUEUED", "RUNNING", "POSTPROCESSING"]);
  const RANK = { QUEUED: 0, RUNNING: 1, POSTPROCESSING: 2, SUCCEEDED: 3, FAILED: 3, CANCELLED: 3 };
  const FIELDS = [
    "prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed",
    "num_images", "scheduler", "output_format", "quality", "model", "callback_url",
  ];
  const NUMERIC = new Set(["width", "height", "num_inference_steps", "guidance_scale", "seed", "num_images", "quality"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    base: "",
    generation: 0, // bumped on connect/sign-out so stale poll answers are dropped
    pollTimer: null,
    jobs: new Map(), // id -> view, from the latest GET /v1/jobs
    overrides: new Map(), // id -> {view, until}: answers of POST /v1/jobs and /cancel
    urls: new Map(), // "id:index" -> {url, thumb, expires}: keeps images from reloading on every poll
    jobEls: new Map(),
    tileEls: new Map(),
    cancelling: new Set(),
    defaultModel: null,
    models: new Map(), // GET /v1/models, by id
  };

  // -- storage (may be unavailable: private modes, sandboxed frames) ---------------------------------
  function store(kind, name, value) {
    try {
      const s = kind === "session" ? window.sessionStorage : window.localStorage;
      if (value === undefined) return s.getItem(name);
      if (value === null || value === "") s.removeItem(name);
      else s.setItem(name, value);
    } catch (_) {
      /* storage disabled: the key lives in memory for this page only */
    }
    return null;
  }

  function normaliseBase(value) {
    return String(value || "").trim().replace(/\/+$/, "");
  }

  function configuredBase() {
    const cfg = window.SDQ_PLAYGROUND || {};
    return normaliseBase(store("local", BASE_STORE) || cfg.apiBase || "");
  }

  // -- HTTP -----------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, error, retryAfter) {
      super((error && error.message) || `HTTP ${status}`);
      this.status = status;
      this.error = error || {};
      this.retryAfter = retryAfter;
    }
  }

  async function api(method, path, { body, headers, key } = {}) {
    const h = { Accept: "application/json", "x-api-key": key || state.key, ...(headers || {}) };
    if (body !== undefined) h["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(state.base + path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (err) {
      const where = state.base || window.location.origin;
      const cors = new URL(where, window.location.href).origin === window.location.origin
        ? " Is it running?"
        : " Is it running? A different origin also needs CORS on the API.";
      throw new ApiError(0, { code: "network", message: `Cannot reach the API at ${where}.${cors}` });
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!resp.ok) {
      const error = (data && data.error) || { code: `http_${resp.status}`, message: text.slice(0, 200) || resp.statusText };
      throw new ApiError(resp.status, error, resp.headers.get("Retry-After"));
    }
    return data;
  }

  function idempotencyKey() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return `playground-${window.crypto.randomUUID()}`;
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return `playground-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  }

  // -- formatting -----------------------------------------------------------------------------------
  function seconds(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "–";
    const v = Math.max(0, value);
    if (v < 10) return `${v.toFixed(1)} s`;
    if (v < 60) return `${Math.round(v)} s`;
    const m = Math.floor(v / 60);
    return `${m} m ${String(Math.round(v - m * 60)).padStart(2, "0")} s`;
  }

  function since(iso) {
    const t = Date.parse(iso || "");
    return Number.isFinite(t) ? (Date.now() - t) / 1000 : null;
  }

  function clock(iso) {
    const t = new Date(iso || "");
    return Number.isNaN(t.getTime()) ? "" : t.toLocaleTimeString([], { hour12: false });
  }

  function cleanMsg(msg) {
    return String(msg || "").replace(/^Value error, /, "");
  }

  // -- connect / sign out -----------------------------------------------------------------------------
  function showConnect(message) {
    $("app").hidden = true;
    $("conn").hidden = true;
    $("connect").hidden = false;
    $("api-base").value = configuredBase();
    $("connect-error").textContent = message || "";
    $("api-key").focus();
  }

  function showApp() {
    $("connect").hidden = true;
    $("app").hidden = false;
    $("conn").hidden = false;
    $("conn-base").textContent = state.base || window.location.origin;
  }

  async function connect(key, base) {
    state.generation += 1;
    clearTimeout(state.pollTimer);
    state.base = base;
    try {
      await api("GET", "/v1/jobs?limit=1", { key });
    } catch (err) {
      state.key = null;
      if (err.status === 401) store("session", KEY_STORE, null);
      showConnect(err.status === 401 ? "The API did not accept this key." : err.message);
      return;
    }
    state.key = key;
    store("session", KEY_STORE, key);
    store("local", BASE_STORE, base);
    state.jobs.clear();
    state.overrides.clear();
    showApp();
    loadSchema().then(loadModels, loadModels); // the models' sizes replace the schema's default
    poll();
  }

  function signOut(message) {
    state.generation += 1;
    clearTimeout(state.pollTimer);
    state.key = null;
    store("session", KEY_STORE, null);
    if (!$("lightbox").hidden) closeLightbox();
    for (const el of state.jobEls.values()) el.remove();
    for (const el of state.tileEls.values()) el.remove();
    state.jobEls.clear();
    state.tileEls.clear();
    state.jobs.clear();
    state.overrides.clear();
    state.urls.clear();
    $("api-key").value = "";
    showConnect(message);
  }

  // -- bounds from the published schema (/openapi.json is public) ---------------------------------
  function bounds(prop) {
    const out = {};
    for (const p of [prop, ...(prop.anyOf || [])]) {
      for (const k of ["minimum", "maximum", "multipleOf", "minLength", "maxLength", "default", "enum", "ge", "le"]) {
        if (p[k] !== undefined && out[k] === undefined) out[k] = p[k];
      }
    }
    if (out.minimum === undefined && out.ge !== undefined) out.minimum = out.ge;
    if (out.maximum === undefined && out.le !== undefined) out.maximum = out.le;
    return out;
  }

  function setOptions(select, values, labels) {
    const current = select.value;
    select.replaceChildren(
      ...values.map((v, i) => {
        const o = document.createElement("option");
        o.value = v;
        o.textContent = labels ? labels[i] : v;
        return o;
      })
    );
    if (values.includes(current)) select.value = current;
  }

  async function loadSchema() {
    let schema;
    try {
      const resp = await fetch(`${state.base}/openapi.json`, { cache: "no-store", credentials: "omit" });
      if (!resp.ok) return;
      schema = (await resp.json()).components.schemas.GenerationRequest.properties;
    } catch (_) {
      return; // the built-in defaults stay
    }
    const range = (b) => (b.minimum !== undefined && b.maximum !== undefined ? `${+b.minimum}–${+b.maximum}` : "");
    for (const name of NUMERIC) {
      if (!schema[name]) continue;
      const b = bounds(schema[name]);
      const input = $(`f-${name}`);
      if (b.minimum !== undefined) input.min = String(+b.minimum);
      if (b.maximum !== undefined) input.max = String(+b.maximum);
      if (b.multipleOf !== undefined) input.step = String(+b.multipleOf);
      const hint = $(`hint-${name}`);
      if (!hint) continue;
      if (name === "width" || name === "height") {
        hint.textContent = `${range(b)}${b.multipleOf ? `, ×${+b.multipleOf}` : ""}`;
      } else if (name === "quality") {
        hint.textContent = `${range(b)}, jpeg/webp`;
      } else if (name !== "seed" && range(b)) {
        hint.textContent = range(b);
      }
    }
    if (schema.prompt) {
      const b = bounds(schema.prompt);
      if (b.maxLength) $("hint-prompt").textContent = `${b.minLength || 1}–${b.maxLength} characters`;
    }
    if (schema.negative_prompt) {
      const b = bounds(schema.negative_prompt);
      if (b.maxLength) $("hint-negative_prompt").textContent = `≤ ${b.maxLength} characters`;
    }
    for (const name of ["scheduler", "output_format"]) {
      const b = schema[name] ? bounds(schema[name]) : {};
      if (Array.isArray(b.enum) && b.enum.length) {
        setOptions($(`f-${name}`), b.enum);
        if (b.default !== undefined && !state.touched) $(`f-${name}`).value = b.default;
      }
    }
  }

  // -- the models this deployment serves (GET /v1/models) ---------------------------------------------
  async function loadModels() {
    let listing;
    try {
      listing = await api("GET", "/v1/models");
    } catch (_) {
      return; // the built-in list stays
    }
    const models = listing.models || [];
    const fallback = models.find((m) => m.default) || models[0];
    if (!fallback) return;
    state.models = new Map(models.map((m) => [m.id, m]));
    state.defaultModel = fallback.id;
    const ids = models.map((m) => m.id);
    setOptions($("f-model"), ["", ...ids], [`server default (${fallback.id})`, ...ids]);
    showModelDefaults();
  }

  // Left empty, a size is the chosen model's: its size shows as the placeholder.
  function showModelDefaults() {
    const model = state.models.get($("f-model").value || state.defaultModel);
    if (!model) return;
    $("f-width").placeholder = `${model.default_width} (the model's)`;
    $("f-height").placeholder = `${model.default_height} (the model's)`;
  }

  // -- the job form -----------------------------------------------------------------------------------
  function clearErrors() {
    for (const name of FIELDS) setFieldError(name, "");
    $("form-error").textContent = "";
  }

  function setFieldError(name, message) {
    const err = $(`err-${name}`);
    const input = $(`f-${name}`);
    if (!err || !input) return false;
    err.textContent = message;
    if (message) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", err.id);
    } else {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    }
    return true;
  }

  function readForm() {
    const f = $("job-form").elements;
    const body = { prompt: f.prompt.value, negative_prompt: f.negative_prompt.value };
    const bad = [];
    for (const name of NUMERIC) {
      const input = f[name];
      if (input.validity.badInput) {
        bad.push(name);
        continue;
      }
      const raw = input.value.trim();
      if (raw === "") continue; // omitted: the API's default (a random seed for seed)
      body[name] = Number(raw);
    }
    body.scheduler = f.scheduler.value;
    body.output_format = f.output_format.value;
    if (body.output_format === "png") delete body.quality;
    if (f.model.value) body.model = f.model.value;
    if (f.callback_url.value.trim()) body.callback_url = f.callback_url.value.trim();
    return { body, bad };
  }

  function showValidation(error) {
    const loose = [];
    let first = null;
    const byField = new Map();
    for (const d of Array.isArray(error.details) ? error.details : []) {
      const loc = Array.isArray(d.loc) ? d.loc : [];
      const field = String(loc[loc.length - 1] ?? "");
      if (FIELDS.includes(field) && loc[0] !== "header") {
        byField.set(field, [...(byField.get(field) || []), cleanMsg(d.msg)]);
      } else {
        loose.push(`${loc.join(".") || "request"}: ${cleanMsg(d.msg)}`);
      }
    }
    for (const [field, msgs] of byField) {
      setFieldError(field, msgs.join("; "));
      if (first === null) first = field;
    }
    $("form-error").textContent = loose.length ? loose.join(" · ") : byField.size ? "" : error.message || "Invalid request.";
    if (first) $(`f-${first}`).focus();
  }

  async function submitJob(event) {
    event.preventDefault();
    clearErrors();
    const { body, bad } = readForm();
    if (bad.length) {
      for (const name of bad) setFieldError(name, "not a number");
      $(`f-${bad[0]}`).focus();
      return;
    }
    const button = $("submit");
    button.disabled = true;
    $("form-status").textContent = "Submitting…";
    try {
      const view = await api("POST", "/v1/jobs", { body, headers: { "Idempotency-Key": idempotencyKey() } });
      remember(view);
      const cached = view.status === "SUCCEEDED" ? "Done (from the result cache)" : "Queued";
      $("form-status").textContent = `${cached} ${view.id} · seed ${view.request.seed}`;
      render();
    } catch (err) {
      $("form-status").textContent = "";
      if (err.status === 401) return signOut("The API did not accept this key.");
      if (err.status === 422) return showValidation(err.error);
      const retry = err.retryAfter ? ` Retry in ${err.retryAfter} s.` : "";
      $("form-error").textContent = `${err.message}${retry}`;
    } finally {
      button.disabled = false;
    }
  }

  function reuse(job, output) {
    const r = job.request;
    const f = $("job-form").elements;
    f.prompt.value = r.prompt;
    f.negative_prompt.value = r.negative_prompt || "";
    for (const name of ["width", "height", "num_inference_steps", "guidance_scale", "quality"]) f[name].value = r[name];
    f.seed.value = r.seed + output.index; // image i of a job uses seed + i
    f.num_images.value = 1;
    f.scheduler.value = r.scheduler;
    f.output_format.value = r.output_format;
    f.model.value = [...f.model.options].some((o) => o.value === r.model) ? r.model : "";
    f.callback_url.value = "";
    syncQuality();
    clearErrors();
    $("form-status").textContent = `Settings of ${job.id} #${output.index} loaded`;
    $("f-prompt").focus();
  }

  function syncQuality() {
    $("f-quality").disabled = $("f-output_format").value === "png";
  }

  // -- jobs: merging, polling, cancelling -------------------------------------------------------------
  function remember(view) {
    state.overrides.set(view.id, { view, until: Date.now() + OVERRIDE_MS });
  }

  function merged() {
    const all = new Map(state.jobs);
    const now = Date.now();
    for (const [id, { view, until }] of state.overrides) {
      const listed = all.get(id);
      if (now > until || (listed && RANK[listed.status] >= RANK[view.status])) {
        state.overrides.delete(id);
        continue;
      }
      if (!listed || RANK[view.status] > RANK[listed.status]) all.set(id, view);
    }
    return [...all.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : a.id < b.id ? 1 : -1));
  }

  function schedule(ms) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(poll, ms ?? (document.hidden ? POLL_HIDDEN_MS : POLL_MS));
  }

  async function poll() {
    const generation = state.generation;
    let delay; // undefined: the usual interval
    if (!state.key) return;
    try {
      const page = await api("GET", `/v1/jobs?limit=${LIST_LIMIT}`);
      if (generation !== state.generation) return;
      state.jobs = new Map(page.jobs.map((j) => [j.id, j]));
      await lookUpQueue(page.jobs, generation);
      if (generation !== state.generation) return;
      $("poll-error").hidden = true;
      $("conn-dot").classList.remove("down");
      $("conn-text").textContent = "connected";
      $("jobs-meta").textContent = `newest first · ${page.next_cursor ? `latest ${LIST_LIMIT}` : `${page.jobs.length} total`} · updated ${clock(new Date().toISOString())}`;
      render();
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.status === 401) return signOut("The API no longer accepts this key.");
      const wait = Number(err.retryAfter);
      if (err.status === 429 && Number.isFinite(wait) && wait > 0) delay = Math.min(wait, 60) * 1000;
      $("poll-error").textContent = delay ? `${err.message} Polling again in ${delay / 1000} s.` : err.message;
      $("poll-error").hidden = false;
      $("conn-dot").classList.add("down");
      $("conn-text").textContent = err.status === 429 ? "rate limited" : "reconnecting";
    } finally {
      if (generation === state.generation && state.key) schedule(delay);
    }
  }

  // The queue field (position, ETA, reason) of the oldest queued jobs, from their own GETs; a failure leaves it out.
  async function lookUpQueue(jobs, generation) {
    const queued = jobs.filter((j) => j.status === "QUEUED" && !j.queue).slice(-QUEUE_LOOKUPS);
    const views = await Promise.all(
      queued.map((j) => api("GET", `/v1/jobs/${encodeURIComponent(j.id)}`).catch(() => null)),
    );
    if (generation !== state.generation) return;
    for (const view of views) {
      const listed = view && state.jobs.get(view.id);
      if (listed && view.queue && listed.status === "QUEUED") listed.queue = view.queue;
    }
  }

  async function cancel(id) {
    state.cancelling.add(id);
    render();
    try {
      remember(await api("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`));
    } catch (err) {
      if (err.status === 401) return signOut("The API did not accept this key.");
      if (err.status !== 409) {
        $("poll-error").textContent = `Cancel ${id}: ${err.message}`;
        $("poll-error").hidden = false;
      }
    } finally {
      state.cancelling.delete(id);
      render();
    }
  }

  async function redeliver(id, button) {
    button.disabled = true;
    try {
      remember(await api("POST", `/v1/jobs/${encodeURIComponent(id)}/webhook/redeliver`));
    } catch (err) {
      $("poll-error").textContent = `Webhook ${id}: ${err.message}`;
      $("poll-error").hidden = false;
    } finally {
      button.disabled = false;
      render();
    }
  }

  // -- rendering --------------------------------------------------------------------------------------
  function progressOf(job) {
    const { step = 0, total = 0 } = job.progress || {};
    if (job.status === "SUCCEEDED" || job.status === "POSTPROCESSING") return { step: total || 1, total: total || 1 };
    return { step, total };
  }

  function progressText(job) {
    const { step = 0, total = 0 } = job.progress || {};
    switch (job.status) {
      case "QUEUED":
        return "waiting for a worker";
      case "RUNNING":
        return total ? `step ${step} / ${total}` : "loading the model";
      case "POSTPROCESSING":
        return "storing images";
      case "SUCCEEDED":
        return `${job.outputs.length} image${job.outputs.length === 1 ? "" : "s"} · ${
          job.cache && job.cache.hit ? "from the result cache" : `${total || job.request.num_inference_steps} steps`
        }`;
      case "CANCELLED":
        if (total) return `cancelled at step ${step} / ${total}`;
        return job.started_at ? "cancelled while starting" : "cancelled before it started";
      default:
        return "failed";
    }
  }

  function timingsText(job) {
    const t = job.timings || {};
    if (job.status === "QUEUED") return `in queue ${seconds(since(job.created_at))}`;
    if (UNFINISHED.has(job.status)) return `queue ${seconds(t.queued_s)} · running ${seconds(since(job.started_at))}`;
    const parts = [];
    if (t.queued_s !== null && t.queued_s !== undefined) parts.push(`queue ${seconds(t.queued_s)}`);
    if (t.run_s !== null && t.run_s !== undefined) parts.push(`run ${seconds(t.run_s)}`);
    parts.push(`total ${seconds(t.total_s)}`);
    return parts.join(" · ");
  }

  function webhookText(job, short) {
    const w = job.webhook;
    const prefix = short ? "" : "webhook ";
    if (w) {
      const attempts = `${w.attempts} attempt${w.attempts === 1 ? "" : "s"}`;
      const last = w.last_status ? ` · HTTP ${w.last_status}` : w.last_error ? ` · ${w.last_error}` : "";
      return { state: w.state, text: `${prefix}${w.state}${last} · ${attempts}` };
    }
    if (job.request.callback_url) return { state: "pending", text: `${prefix}pending` };
    return { state: "none", text: short ? "none (no callback_url)" : "no webhook" };
  }

  function jobEl(id) {
    let li = state.jobEls.get(id);
    if (li) return li;
    li = $("job-template").content.firstElementChild.cloneNode(true);
    li.dataset.jobId = id;
    li.querySelector(".job-cancel").addEventListener("click", () => cancel(id));
    const resend = li.querySelector(".job-redeliver");
    resend.addEventListener("click", () => redeliver(id, resend));
    state.jobEls.set(id, li);
    return li;
  }

  function updateJob(li, job) {
    li.dataset.status = job.status;
    const badge = li.querySelector(".status");
    badge.textContent = job.status;
    badge.dataset.status = job.status;
    const idEl = li.querySelector(".job-id");
    idEl.textContent = job.id;
    idEl.title = job.id;
    const noise = li.querySelector(".noise-label");
    noise.hidden = !job.model_note;
    noise.textContent = `${job.request.model || "model"} · noise`;
    noise.title = job.model_note || "";
    li.querySelector(".job-when").textContent = clock(job.created_at);
    const prompt = li.querySelector(".job-prompt");
    prompt.textContent = job.request.prompt;
    prompt.title = job.request.prompt;
    const { step, total } = progressOf(job);
    const bar = li.querySelector(".progress");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(step));
    bar.setAttribute("aria-valuetext", progressText(job));
    bar.setAttribute("aria-label", `progress of ${job.id}`);
    li.querySelector(".progress-fill").style.width = `${total ? Math.min(100, (100 * step) / total) : 0}%`;
    li.querySelector(".job-progress-text").textContent = progressText(job);
    updatePreview(li.querySelector(".job-preview"), job);
    const queueEl = li.querySelector(".job-queue");
    const queueText = job.status === "QUEUED" ? queueLine(job.queue) : "";
    queueEl.hidden = !queueText;
    queueEl.textContent = queueText;
    const hook = job.webhook || job.request.callback_url ? ` · ${webhookText(job).text}` : "";
    li.querySelector(".job-timings").textContent = `${timingsText(job)}${hook}`;
    const errEl = li.querySelector(".job-error");
    errEl.hidden = !job.error;
    errEl.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
    li.querySelector(".job-redeliver").hidden = UNFINISHED.has(job.status) || !job.request.callback_url;
    const btn = li.querySelector(".job-cancel");
    btn.hidden = !UNFINISHED.has(job.status);
    btn.disabled = state.cancelling.has(job.id);
    btn.textContent = state.cancelling.has(job.id) ? "Cancelling…" : "Cancel";
  }

  // The preview (progress.preview_url, while RUNNING): the object is overwritten as the image forms and every
  // answer presigns it anew, so the image is reloaded only when the step it shows has changed.
  function updatePreview(img, job) {
    const url = job.status === "RUNNING" && job.progress ? job.progress.preview_url : null;
    if (!url) {
      img.hidden = true;
      img.removeAttribute("src");
      delete img.dataset.step;
      return;
    }
    const step = String(job.progress.step);
    if (img.dataset.step !== step) {
      img.dataset.step = step;
      img.src = url;
    }
    img.alt = `preview of ${job.id} at step ${job.progress.step} of ${job.progress.total}`;
    img.hidden = false;
  }

  // Where a QUEUED job stands (JobView.queue), when the API says: position, work ahead, ETA and the reason.
  function queueLine(queue) {
    if (!queue) return "";
    const parts = [`#${queue.position} in the queue`];
    if (typeof queue.images_ahead === "number") parts.push(`${queue.images_ahead} image${queue.images_ahead === 1 ? "" : "s"} ahead`);
    if (typeof queue.eta_s === "number") parts.push(`starts in ~${seconds(queue.eta_s)}`);
    if (queue.reason) parts.push(queue.reason);
    return parts.join(" · ");
  }

  function urlsFor(job, output) {
    const k = `${job.id}:${output.index}`;
    const cached = state.urls.get(k);
    if (cached && cached.expires - Date.now() > URL_MARGIN_MS) return cached;
    const expires = Date.parse(job.outputs_expire_at || "") || Date.now() + 5 * URL_MARGIN_MS;
    const fresh = { url: output.url, thumb: output.thumbnail_url || output.url, expires };
    state.urls.set(k, fresh);
    return fresh;
  }

  function param(dl, name, value, title) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.title = title || value;
    dl.append(dt, dd);
  }

  function tileEl(job, output) {
    const k = `${job.id}:${output.index}`;
    let tile = state.tileEls.get(k);
    if (tile) return tile;
    tile = $("tile-template").content.firstElementChild.cloneNode(true);
    tile.dataset.jobId = job.id;
    tile.dataset.index = String(output.index);
    const r = job.request;
    const seed = r.seed + output.index;
    tile.querySelector(".tile-thumb").addEventListener("click", (e) => openLightbox(state.lastJobs.get(job.id) || job, output, e.currentTarget));
    tile.querySelector(".tile-reuse").addEventListener("click", () => reuse(job, output));
    tile.querySelector("img").alt = `${r.prompt} (seed ${seed})`;
    tile.querySelector(".tile-prompt").textContent = r.prompt;
    tile.querySelector(".tile-prompt").title = r.prompt;
    const dl = tile.querySelector(".params");
    param(dl, "seed", String(seed), r.num_images > 1 ? `job seed ${r.seed} + image ${output.index}` : undefined);
    param(dl, "size", `${output.width}×${output.height}`);
    param(dl, "steps", `${r.num_inference_steps} · cfg ${r.guidance_scale}`);
    param(dl, "sampler", r.scheduler);
    param(dl, "model", r.model || "default");
    param(dl, "format", r.output_format === "png" ? "png" : `${r.output_format} q${r.quality}`);
    if (r.negative_prompt) param(dl, "negative", r.negative_prompt);
    param(dl, "job", `${job.id} #${output.index}`);
    param(dl, "webhook", "");
    dl.lastElementChild.classList.add("webhook");
    const noise = tile.querySelector(".tile-noise");
    noise.hidden = !job.model_note;
    noise.title = job.model_note || "";
    state.tileEls.set(k, tile);
    return tile;
  }

  function updateTile(tile, job, output) {
    const { thumb } = urlsFor(job, output);
    const img = tile.querySelector("img");
    if (img.getAttribute("src") !== thumb) img.src = thumb;
    const hook = webhookText(job, true);
    const w = tile.querySelector(".webhook");
    w.textContent = hook.text;
    w.title = hook.text;
    w.dataset.state = hook.state;
  }

  function place(container, el, index) {
    const at = container.children[index];
    if (at !== el) container.insertBefore(el, at || null);
  }

  function render() {
    const jobs = merged();
    state.lastJobs = new Map(jobs.map((j) => [j.id, j]));
    const list = $("jobs");
    const seenJobs = new Set();
    jobs.forEach((job, i) => {
      const li = jobEl(job.id);
      updateJob(li, job);
      place(list, li, i);
      seenJobs.add(job.id);
    });
    for (const [id, li] of state.jobEls) {
      if (!seenJobs.has(id)) {
        li.remove();
        state.jobEls.delete(id);
      }
    }
    $("jobs-empty").hidden = jobs.length > 0;

    const gallery = $("gallery");
    const seenTiles = new Set();
    let n = 0;
    for (const job of jobs) {
      if (job.status !== "SUCCEEDED") continue;
      for (const output of job.outputs) {
        const tile = tileEl(job, output);
        updateTile(tile, job, output);
        place(gallery, tile, n++);
        seenTiles.add(`${job.id}:${output.index}`);
      }
    }
    for (const [k, tile] of state.tileEls) {
      if (!seenTiles.has(k)) {
        tile.remove();
        state.tileEls.delete(k);
        state.urls.delete(k);
      }
    }
    $("gallery-empty").hidden = n > 0;
    const noisy = jobs.find((j) => j.status === "SUCCEEDED" && j.model_note);
    $("noise-note").hidden = !noisy;
    $("noise-note").textContent = noisy ? `${noisy.model_note} Marked “noise” below.` : "";
  }

  // -- lightbox ---------------------------------------------------------------------------------------
  let lightboxReturn = null;

  function openLightbox(job, output, from) {
    const output2 = (job.outputs || []).find((o) => o.index === output.index) || output;
    const { url } = urlsFor(job, output2);
    const r = job.request;
    lightboxReturn = from || null;
    const img = $("lightbox-img");
    img.alt = `${r.prompt} (seed ${r.seed + output.index})`;
    img.src = url;
    $("lightbox-open").href = url;
    const caption = `${output2.width}×${output2.height} · seed ${r.seed + output.index}${job.model_note ? " · noise" : ""} · ${r.prompt}`;
    $("lightbox-caption").textContent = caption;
    $("lightbox-caption").title = caption;
    $("lightbox").hidden = false;
    $("lightbox-close").focus();
  }

  function closeLightbox() {
    $("lightbox").hidden = true;
    $("lightbox-img").removeAttribute("src");
    if (lightboxReturn) lightboxReturn.focus();
    lightboxReturn = null;
  }

  // -- wiring -----------------------------------------------------------------------------------------
  function init() {
    $("connect-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        $("connect-error").textContent = "Enter an API key.";
        return;
      }
      const base = normaliseBase($("api-base").value);
      if (base && !/^https?:\/\/[^/]+/i.test(base)) {
        $("connect-error").textContent = "Enter the API base as a full URL, for example https://api.example.com/prod.";
        return;
      }
      $("connect-error").textContent = "";
      connect(key, base);
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("job-form").addEventListener("submit", submitJob);
    $("job-form").addEventListener("input", (e) => {
      const name = e.target && e.target.name;
      if (name) setFieldError(name, "");
      state.touched = true;
    });
    $("f-output_format").addEventListener("change", syncQuality);
    $("f-model").addEventListener("change", showModelDefaults);
    $("lightbox-close").addEventListener("click", closeLightbox);
    $("lightbox").addEventListener("click", (e) => {
      if (e.target === e.currentTarget) closeLightbox();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("lightbox").hidden) closeLightbox();
    });
    document.addEventListener("visibilitychange", () => {
      if (state.key) schedule(document.hidden ? POLL_HIDDEN_MS : 0);
    });
    syncQuality();
    const key = store("session", KEY_STORE);
    if (key) connect(key, configuredBase());
    else showConnect("");
  }

  init();
})();
