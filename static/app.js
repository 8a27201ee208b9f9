/* The page: camera / upload / samples -> POST /api/explain -> caption and evidence.
 * Everything the server sends is put into the page with textContent or as image
 * sources (data: URLs), never as HTML. */
(() => {
  'use strict';
  document.documentElement.classList.add('js');

  const $ = (id) => document.getElementById(id);
  let METHODS = [];     // the server's registry of explanation methods (from the page's data)
  let COLORMAP = [];    // 256 RGB rows: the same colour scale as the legend and the PNG files
  const el = {};

  const state = {
    stream: null,        // the camera's MediaStream
    busy: false,         // an explanation is on its way
    result: null,        // the last /api/explain JSON
    blob: null,          // the image it explains (re-sent for per-word saliency)
    frameUrl: null,      // object URL of that image
    selected: null,      // selected word index, null for the whole caption
    reference: null,     // reference caption of a sample scene
    roundTripMs: null,
    pendingSaliency: new Set(),
    pendingContrast: new Set(),
    drawn: new Map(),    // "method:word" -> overlay data URL drawn from a heatmap
    trust: new Map(),    // "method:word" -> trust score (deletion curves) of that map
    pendingTrust: new Set(),
  };

  // -- small helpers ------------------------------------------------------------------
  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function showError(message) {
    el.error.textContent = message || '';
    el.error.hidden = !message;
    if (message) el.error.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function clearError() { showError(''); }

  class ServerError extends Error {}

  async function postForm(url, form) {
    let res;
    try {
      res = await fetch(url, { method: 'POST', body: form, headers: { Accept: 'application/json' } });
    } catch (err) {
      throw new ServerError('Could not reach the server. Is it still running?');
    }
    let body = null;
    if ((res.headers.get('Content-Type') || '').includes('application/json')) {
      try { body = await res.json(); } catch (err) { body = null; }
    }
    if (!res.ok) {
      let message = (body && body.error) ||
        (res.status === 413 ? 'The image is too large to upload.' : `The server answered ${res.status} ${res.statusText}.`);
      const retry = res.headers.get('Retry-After');
      if (res.status === 503 && retry) message += ` (retry in about ${retry} s)`;
      throw new ServerError(capitalize(message));
    }
    if (!body) throw new ServerError('The server sent an answer this page cannot read.');
    return body;
  }

  function fixed2(x) { return (Math.abs(x) < 0.005 ? 0 : x).toFixed(2); }   // no "-0.00"

  function capitalize(s) { return s ? s.charAt(0).toUpperCase() + s.slice(1) : s; }

  function blobToDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = make('a');
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function stamp() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
  }

  // -- model status -------------------------------------------------------------------
  async function pollHealth() {
    try {
      const res = await fetch('/healthz', { headers: { Accept: 'application/json' } });
      const body = await res.json();
      if (body.status === 'ok') {
        setStatus('ready', `model ${(body.model && body.model.name) || 'ready'}`);
        return;
      }
      if (body.status === 'loading') {
        setStatus('loading', 'model loading…');
        setTimeout(pollHealth, 2000);
        return;
      }
      setStatus('error', 'model unavailable');
    } catch (err) {
      setStatus('error', 'server unreachable');
      setTimeout(pollHealth, 5000);
    }
  }

  // The model picker: the server loads the chosen shipped bundle, then the page reloads
  // (samples and vocabulary belong to the bundle).
  async function switchBundle(name) {
    setStatus('loading', 'model loading…');
    try {
      const res = await fetch('/api/bundle', {
        method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ name }) });
      if (!res.ok) throw new Error((await res.json()).error || `HTTP ${res.status}`);
      const waitReady = async () => {
        const body = await (await fetch('/healthz', { headers: { Accept: 'application/json' } })).json();
        if (body.status === 'ok') { window.location.reload(); return; }
        if (body.status === 'loading') { setTimeout(waitReady, 1000); return; }
        setStatus('error', 'model unavailable');
      };
      waitReady();
    } catch (err) {
      setStatus('error', `could not switch model: ${err.message}`);
    }
  }

  function setStatus(kind, text) {
    el.status.className = `pill pill-${kind}`;
    el.status.textContent = text;
  }

  // -- camera -------------------------------------------------------------------------
  function cameraMessage(err) {
    switch (err && err.name) {
      case 'NotAllowedError':
      case 'SecurityError':
        return 'Camera permission was denied. Allow camera access for this page in the browser\'s site settings (the camera icon in the address bar), then press Start camera again. You can also upload an image.';
      case 'NotFoundError':
      case 'OverconstrainedError':
        return 'No camera was found. Connect a camera and try again, or upload an image instead.';
      case 'NotReadableError':
      case 'AbortError':
        return 'The camera is busy or blocked: another application (a video call?) may be using it. Close it and press Start camera again.';
      default:
        return `The camera could not be started (${(err && (err.message || err.name)) || 'unknown error'}).`;
    }
  }

  async function startCamera() {
    if (state.stream) { stopCamera(); return; }
    clearError();
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const port = location.port ? `:${location.port}` : '';
      showError(`Browsers only allow the camera on localhost or over HTTPS, and this page was opened at ${location.origin}. ` +
                `Open http://localhost${port} on the machine running the server (or serve it over HTTPS). ` +
                'Upload and the sample scenes work from anywhere.');
      return;
    }
    el.startCamera.disabled = true;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        video: true, audio: false,
      });
      state.stream = stream;
      el.video.srcObject = stream;
      el.video.hidden = false;
      el.stageHint.hidden = true;
      el.stage.classList.add('live');
      await el.video.play().catch(() => {});
      stream.getVideoTracks().forEach((t) => t.addEventListener('ended', stopCamera));
      el.capture.disabled = false;
      el.live.disabled = false;
      el.startCamera.textContent = 'Stop camera';
      el.capture.focus();
    } catch (err) {
      showError(cameraMessage(err));
    } finally {
      el.startCamera.disabled = false;
    }
  }

  function stopCamera() {
    if (state.liveOn) stopLive(false);
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    el.video.srcObject = null;
    el.video.hidden = true;
    el.stageHint.hidden = false;
    el.stage.classList.remove('live');
    el.capture.disabled = true;
    el.live.disabled = true;
    el.startCamera.textContent = 'Start camera';
  }

  function capture() {
    const v = el.video;
    if (!state.stream || state.busy || state.liveOn) return;
    if (v.readyState < 2 || !v.videoWidth) {
      showError('The camera has not delivered a picture yet; try again in a moment.');
      return;
    }
    const canvas = make('canvas');
    canvas.width = v.videoWidth;
    canvas.height = v.videoHeight;
    canvas.getContext('2d').drawImage(v, 0, 0, canvas.width, canvas.height);
    el.stage.classList.add('flash');
    setTimeout(() => el.stage.classList.remove('flash'), 180);
    canvas.toBlob((blob) => {
      if (blob) explain(blob, {});
      else showError('Could not read a frame from the camera.');
    }, 'image/png');
  }

  // -- live mode ------------------------------------------------------------------------
  // One frame in flight at a time: the next frame is grabbed only when the answer to the
  // last one has arrived, so neither the page nor the server ever holds a backlog, and
  // what is drawn is always the newest frame's evidence.
  const LIVE_SIDE = 320;          // frames are sent at most this wide (the model reads 160-224 px)
  const liveClient = Math.random().toString(36).slice(2, 12);

  function grabFrame(maxSide, type, quality) {
    const v = el.video;
    if (v.readyState < 2 || !v.videoWidth) return Promise.resolve(null);
    const scale = Math.min(1, maxSide / Math.max(v.videoWidth, v.videoHeight));
    const canvas = make('canvas');
    canvas.width = Math.round(v.videoWidth * scale);
    canvas.height = Math.round(v.videoHeight * scale);
    canvas.getContext('2d').drawImage(v, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, type, quality));
  }

  function toggleLive() {
    if (state.liveOn) stopLive(true); else startLive();
  }

  function startLive() {
    if (!state.stream || state.busy) return;
    clearError();
    state.liveOn = true;
    state.liveTimes = [];
    state.liveFrames = 0;
    el.live.setAttribute('aria-pressed', 'true');
    el.live.textContent = 'Pause';
    el.capture.disabled = true;
    el.liveInfo.hidden = false;
    el.liveOverlay.hidden = false;
    el.liveFps.textContent = 'starting…';
    liveLoop();
  }

  // Pausing keeps the last live frame and explains it fully (every method, every word).
  function stopLive(explore) {
    state.liveOn = false;
    el.live.setAttribute('aria-pressed', 'false');
    el.live.textContent = 'Live';
    el.capture.disabled = !state.stream;
    el.liveInfo.hidden = true;
    el.liveOverlay.hidden = true;
    if (explore && state.liveBlob) explain(state.liveBlob, {});
  }

  async function liveLoop() {
    while (state.liveOn) {
      const blob = await grabFrame(LIVE_SIDE, 'image/jpeg', 0.9);
      if (!blob) { await new Promise((r) => setTimeout(r, 50)); continue; }
      const form = new FormData();
      form.append('image', blob, 'live.jpg');
      form.append('methods', 'gradcam');
      form.append('live', liveClient);
      // the caption's map alone (one backward pass) unless a word's map is wanted
      if (state.selected === null) form.append('gradcam_scope', 'caption');
      let result;
      try {
        result = await postForm('/api/explain', form);
      } catch (err) {
        if (state.liveOn) { stopLive(false); showError(err.message); }
        return;
      }
      if (!state.liveOn) return;
      state.liveBlob = blob;
      state.liveResult = result;
      drawLive(result);
      const now = performance.now();
      state.liveFrames += 1;
      state.liveTimes.push(now);
      while (state.liveTimes.length && now - state.liveTimes[0] > 3000) state.liveTimes.shift();
      const n = state.liveTimes.length;
      const fps = n > 1 ? (1000 * (n - 1)) / (now - state.liveTimes[0]) : 0;
      el.liveFps.textContent = `${fps.toFixed(1)} frames/s`;
      el.liveOverlay.dataset.frames = String(state.liveFrames);
      el.liveOverlay.dataset.fps = fps.toFixed(2);
    }
  }

  // The chosen word's Grad-CAM (or the caption's) coloured over the preview: the canvas
  // covers the stage and the map is drawn where the video shows (object-fit: contain).
  function drawLive(result) {
    el.liveCaption.textContent = result.caption || '(empty caption)';
    el.liveCaption.classList.toggle('guess', result.familiar === false);
    const cam = (result.explanations || {}).gradcam;
    const sel = state.selected;
    const map = cam && (sel !== null && cam.words[sel] ? cam.words[sel] : cam.caption);
    const canvas = el.liveOverlay;
    const g = canvas.getContext('2d');
    const box = el.stage.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(box.width / 2));
    canvas.height = Math.max(1, Math.round(box.height / 2));
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!map || !map.heatmap || !map.heatmap.length) return;
    const v = el.video;
    const s = Math.min(canvas.width / v.videoWidth, canvas.height / v.videoHeight);
    const w = Math.max(1, Math.round(v.videoWidth * s)), h = Math.max(1, Math.round(v.videoHeight * s));
    const x0 = Math.round((canvas.width - w) / 2), y0 = Math.round((canvas.height - h) / 2);
    const image = g.createImageData(w, h);
    const grid = map.heatmap, gh = grid.length, gw = grid[0].length;
    let peak = -1, peakX = 0, peakY = 0;
    for (let y = 0; y < h; y += 1) {
      for (let x = 0; x < w; x += 1) {
        const m = Math.max(0, Math.min(1, sampleBilinear(grid, gh, gw, (y + 0.5) * gh / h - 0.5, (x + 0.5) * gw / w - 0.5)));
        if (m > peak) { peak = m; peakX = x; peakY = y; }
        const c = COLORMAP[Math.min(255, Math.floor(m * 256))];
        const i = 4 * (y * w + x);
        image.data[i] = c[0]; image.data[i + 1] = c[1]; image.data[i + 2] = c[2];
        image.data[i + 3] = Math.round(255 * 0.5 * (0.35 + 0.65 * m));
      }
    }
    g.putImageData(image, x0, y0);
    canvas.dataset.peakX = (peakX / w).toFixed(3);    // where the evidence peaks (0 left, 1 right)
    canvas.dataset.peakY = (peakY / h).toFixed(3);
  }

  // -- explaining -----------------------------------------------------------------------
  function setBusy(busy) {
    state.busy = busy;
    el.progress.hidden = !busy;
    el.resultPanel.setAttribute('aria-busy', String(busy));
    el.capture.disabled = busy || !state.stream || Boolean(state.liveOn);
    el.live.disabled = busy || !state.stream;
    el.uploadInput.disabled = busy;
    document.querySelectorAll('.sample').forEach((b) => { b.disabled = busy; });
    if (busy) {
      const t0 = performance.now();
      const tick = () => {
        if (!state.busy) return;
        el.progressText.textContent = `Explaining… ${((performance.now() - t0) / 1000).toFixed(1)} s`;
        state.ticker = setTimeout(tick, 100);
      };
      tick();
    } else {
      clearTimeout(state.ticker);
    }
  }

  function chosenMethods() {
    const boxes = [...document.querySelectorAll('input[name="methods"]')];
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    return chosen.length ? chosen : METHODS.filter((m) => m.default && m.available).map((m) => m.name);
  }

  function options() {
    return {
      methods: chosenMethods().join(','),
      saliency_method: el.saliencyMethod ? el.saliencyMethod.value : 'vanilla',
      adversarial: el.adversarial && !el.adversarial.checked ? '0' : '1',
      attack: el.attack ? el.attack.value : 'fgsm',
    };
  }

  async function explain(blob, meta) {
    if (state.busy) return;
    clearError();
    const maxBytes = Number(el.uploadForm.dataset.maxBytes || 0);
    if (maxBytes && blob.size > maxBytes) {
      showError(`The image is too large (${(blob.size / 1048576).toFixed(1)} MB); the limit is ${(maxBytes / 1048576).toFixed(0)} MB.`);
      return;
    }
    setBusy(true);
    const form = new FormData();
    form.append('image', blob, blob.name || 'frame.png');
    const opts = options();
    if (meta.caption) opts.caption = meta.caption;
    Object.keys(opts).forEach((k) => form.append(k, opts[k]));
    const t0 = performance.now();
    try {
      const result = await postForm('/api/explain', form);
      state.roundTripMs = Math.round(performance.now() - t0);
      if (state.frameUrl) URL.revokeObjectURL(state.frameUrl);
      state.frameUrl = URL.createObjectURL(blob);
      state.blob = blob;
      state.result = result;
      state.selected = null;
      state.reference = meta.reference || null;
      state.ownCaption = Boolean(meta.caption);
      state.pendingSaliency = new Set();
      state.pendingContrast = new Set();
      state.drawn = new Map();
      state.trust = new Map();
      state.pendingTrust = new Set();
      render();
    } catch (err) {
      showError(err instanceof ServerError ? err.message : `Something went wrong: ${err.message}`);
    } finally {
      setBusy(false);
    }
  }

  async function requestSaliency(index) {
    const result = state.result;
    if (state.pendingSaliency.has(index)) return;
    state.pendingSaliency.add(index);
    const form = new FormData();
    form.append('image', state.blob, state.blob.name || 'frame.png');
    form.append('methods', 'saliency');
    form.append('words', String(index));
    form.append('caption', result.caption);   // the same words, not a second decode
    form.append('adversarial', '0');
    const sal = result.explanations.saliency;
    form.append('saliency_method', (sal && sal.method) || 'vanilla');
    try {
      const answer = await postForm('/api/explain', form);
      if (state.result !== result) return;              // a newer frame replaced it
      if (answer.words.join(' ') !== result.words.join(' ')) {
        throw new ServerError('The model captioned the frame differently the second time; capture it again.');
      }
      const map = answer.explanations.saliency && answer.explanations.saliency.words[index];
      if (map) sal.words[index] = map;
      if (answer.timings_ms && answer.timings_ms.saliency !== undefined) {
        result.timings_ms[`saliency (word ${index + 1})`] = answer.timings_ms.saliency;
        renderTimings();
      }
    } catch (err) {
      if (state.result === result) showError(err.message);
    } finally {
      state.pendingSaliency.delete(index);
      if (state.result === result) renderSelection();
    }
  }

  // "Why this word and not that one?": the contrastive map for a chosen alternative.
  async function requestContrast(index, alternative) {
    const result = state.result;
    const key = `${index}:${alternative}`;
    if (state.pendingContrast.has(key)) return;
    state.pendingContrast.add(key);
    const form = new FormData();
    form.append('image', state.blob, state.blob.name || 'frame.png');
    form.append('methods', 'contrastive');
    form.append('caption', result.caption);
    form.append('contrast', key);
    try {
      const answer = await postForm('/api/explain', form);
      if (state.result !== result) return;
      const section = answer.explanations.contrastive;
      result.explanations.contrastive = result.explanations.contrastive || section;
      result.explanations.contrastive.words[index] = section.words[index];
      state.drawn.delete(`contrastive:${index}`);
    } catch (err) {
      if (state.result === result) showError(err.message);
    } finally {
      state.pendingContrast.delete(key);
      if (state.result === result) renderSelection();
    }
  }

  // -- maps drawn in the page -------------------------------------------------------------
  // A heatmap (rows of values in [0, 1] spanning the frame) upsampled bilinearly to the
  // frame, coloured with the legend's scale and blended as the server's PNGs are:
  // weak evidence shows the frame, strong evidence the colour.
  function sampleBilinear(grid, gh, gw, y, x) {
    const y0 = Math.max(0, Math.min(gh - 1, Math.floor(y))), x0 = Math.max(0, Math.min(gw - 1, Math.floor(x)));
    const y1 = Math.min(gh - 1, y0 + 1), x1 = Math.min(gw - 1, x0 + 1);
    const fy = Math.max(0, Math.min(1, y - y0)), fx = Math.max(0, Math.min(1, x - x0));
    const top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx;
    const bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx;
    return top * (1 - fy) + bottom * fy;
  }

  function drawHeatmap(ctx, frame, grid, width, height) {
    ctx.drawImage(frame, 0, 0, width, height);
    const image = ctx.getImageData(0, 0, width, height);
    const px = image.data;
    const gh = grid.length, gw = grid[0].length;
    let lo = Infinity, hi = -Infinity;
    grid.forEach((row) => row.forEach((v) => { lo = Math.min(lo, v); hi = Math.max(hi, v); }));
    const span = hi - lo > 1e-12 ? hi - lo : 0;
    for (let y = 0; y < height; y += 1) {
      const gy = (y + 0.5) * gh / height - 0.5;
      for (let x = 0; x < width; x += 1) {
        const v = sampleBilinear(grid, gh, gw, gy, (x + 0.5) * gw / width - 0.5);
        const m = span ? Math.max(0, Math.min(1, (v - lo) / span)) : 0;
        const c = COLORMAP[Math.min(255, Math.floor(m * 256))];
        const a = 0.5 * (0.35 + 0.65 * m);
        const i = 4 * (y * width + x);
        px[i] = px[i] * (1 - a) + c[0] * a;
        px[i + 1] = px[i + 1] * (1 - a) + c[1] * a;
        px[i + 2] = px[i + 2] * (1 - a) + c[2] * a;
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  // A heatmap drawn over the frame at most maxSide pixels a side, as a data URL, kept
  // under ``key`` so switching back to it costs nothing.
  function drawnUrl(key, heatmap, maxSide) {
    if (!state.drawn.has(key)) {
      const frame = el.frame;
      if (!frame.complete || !frame.naturalWidth || !heatmap || !heatmap.length) return null;
      const scale = Math.min(1, maxSide / Math.max(frame.naturalWidth, frame.naturalHeight));
      const canvas = make('canvas');
      canvas.width = Math.max(1, Math.round(frame.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(frame.naturalHeight * scale));
      drawHeatmap(canvas.getContext('2d'), frame, heatmap, canvas.width, canvas.height);
      state.drawn.set(key, canvas.toDataURL('image/png'));
    }
    return state.drawn.get(key);
  }

  function overlayUrl(key, map) {
    if (map.overlay) return map.overlay;            // the server drew it (overlays=1)
    return drawnUrl(key, map.heatmap, 480);
  }

  // -- rendering ------------------------------------------------------------------------
  function render() {
    const r = state.result;
    el.emptyState.hidden = true;
    el.result.hidden = false;
    el.frame.onload = () => { renderAdversarial(); renderSelection(); };   // maps are drawn over the loaded frame
    el.frame.src = state.frameUrl;

    el.caption.replaceChildren();
    r.words.forEach((word, i) => {
      const b = make('button', 'caption-word', word);
      b.type = 'button';
      b.dataset.index = String(i);
      b.setAttribute('aria-pressed', 'false');
      const info = (r.word_scores || [])[i];
      b.title = `Evidence for “${word}”` + (info ? ` (p = ${info.p.toFixed(2)})` : '');
      if (info && !info.model_choice) {
        b.classList.add('unlikely');                 // the model would have written another word
        b.title += ': not the model’s own choice here';
      }
      el.caption.appendChild(b);
      if (i < r.words.length - 1) el.caption.appendChild(document.createTextNode(' '));
    });
    if (!r.words.length) el.caption.appendChild(make('span', 'muted', '(the model wrote an empty caption)'));

    el.reference.hidden = !state.reference;
    el.reference.textContent = state.reference ? `reference: ${state.reference}` : '';
    el.logprob.textContent = typeof r.logprob === 'number' ? `log p = ${fixed2(r.logprob)}` : '';
    // A frame unlike the model's training world: the caption is shown as a guess.
    el.unfamiliar.hidden = r.familiar !== false;
    el.caption.classList.toggle('guess', r.familiar === false);
    el.familiarity.textContent = typeof r.familiarity === 'number' ? r.familiarity.toFixed(2) : '';

    renderAce();
    renderAdversarial();
    renderTimings();
    renderSelection();
    el.result.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function currentMap(section, index) {
    if (!section) return undefined;
    if (index === null) return section.caption;
    return (section.words || [])[index];
  }

  function renderSelection() {
    const r = state.result;
    if (!r) return;
    const sel = state.selected;
    const ex = r.explanations || {};
    el.caption.querySelectorAll('.caption-word').forEach((b) => {
      const on = Number(b.dataset.index) === sel;
      b.classList.toggle('selected', on);
      b.setAttribute('aria-pressed', String(on));
    });
    el.wholeCaption.setAttribute('aria-pressed', String(sel === null));
    el.selectionLabel.textContent = sel === null
      ? 'Evidence for the whole caption'
      : `Evidence for “${r.words[sel]}” (word ${sel + 1} of ${r.words.length})`;
    renderTrust();      // first: its request goes ahead of an on-demand saliency map's

    METHODS.filter((m) => m.available).forEach(({ name: m }) => {
      const card = $(`card-${m}`);
      if (!card) return;
      const img = $(`overlay-${m}`);
      const spinner = card.querySelector('.card-spinner');
      const missing = card.querySelector('.card-missing');
      const score = $(`score-${m}`);
      const section = ex[m];
      card.hidden = !section;
      spinner.hidden = true;
      missing.textContent = '';
      score.textContent = '';
      if (!section) return;
      const map = currentMap(section, sel);
      const url = map && overlayUrl(`${m}:${sel}`, map);
      if (url) {
        img.src = url;
        card.classList.remove('stale');
        if (typeof map.alternative === 'string') {
          score.textContent = `vs “${map.alternative}”: p ${fixed2(map.p_word)} vs ${fixed2(map.p_alternative)}`;
        } else if (typeof map.score === 'number') {
          score.textContent = `log p ${fixed2(map.score)}`;
        }
      } else if (m === 'saliency' && sel !== null) {
        spinner.hidden = false;                    // keep the old picture, dimmed, meanwhile
        card.classList.add('stale');
        requestSaliency(sel);
      } else {
        img.removeAttribute('src');
        missing.textContent = map ? 'drawing…' : 'not computed';
      }
      if (section.note) $(`hint-${m}`).textContent = section.note;
    });
    renderWordPanel();
    renderAceSegments();
  }

  // -- the trust score: the selected map's deletion curve on this frame vs random maps ----
  function trustKey() {
    return `${el.trustMethod.value}:${state.selected}`;
  }

  function renderTrust() {
    const r = state.result;
    el.trustSection.hidden = !r || !r.words.length;
    if (el.trustSection.hidden) return;
    const key = trustKey();
    const known = state.trust.get(key);
    if (known) { drawTrust(known); return; }
    el.trustVerdict.textContent = '';
    clearTrustPlot();
    el.trustStatus.textContent = 'measuring…';
    const [method, sel] = key.split(':');
    requestTrust(method, sel === 'null' ? null : [Number(sel)]);
  }

  // One request for the caption's map (indices null) or for the maps of some words. The
  // caption's answer is followed by one for every word, in the background: the server
  // keeps the frame's random baseline from the first, and a click finds its word's score
  // here instead of waiting for a request.
  async function requestTrust(method, indices) {
    const result = state.result;
    const keys = indices === null ? [`${method}:null`] : indices.map((i) => `${method}:${i}`);
    const todo = keys.filter((k) => !state.pendingTrust.has(k) && !state.trust.has(k));
    if (!todo.length) return;
    todo.forEach((k) => state.pendingTrust.add(k));
    const form = new FormData();
    form.append('image', state.blob, state.blob.name || 'frame.png');
    form.append('methods', method);
    form.append('caption', result.caption);
    form.append('faithfulness', '1');
    form.append('adversarial', '0');
    if (indices !== null) form.append('words', todo.map((k) => k.split(':')[1]).join(','));
    const sal = (result.explanations || {}).saliency;
    if (method === 'saliency' && sal) form.append('saliency_method', sal.method || 'vanilla');
    const t0 = performance.now();
    try {
      const answer = await postForm('/api/explain', form);
      if (state.result !== result) return;
      const section = answer.explanations[method];
      todo.forEach((key) => {
        const sel = key.split(':')[1];
        const map = sel === 'null' ? section.caption : section.words[Number(sel)];
        const trust = map && map.faithfulness;
        if (!trust) return;
        trust.roundTripMs = Math.round(performance.now() - t0);
        trust.key = key;
        state.trust.set(key, trust);
      });
      el.trustSection.dataset.scored = [...state.trust.keys()].join(' ');   // for bench/trust.py
      if (todo.includes(trustKey())) renderTrust();
      if (indices === null) requestTrust(method, result.words.map((_, i) => i));
    } catch (err) {
      if (state.result === result && todo.includes(trustKey())) {
        el.trustStatus.textContent = `could not measure: ${err.message}`;
      }
    } finally {
      todo.forEach((k) => state.pendingTrust.delete(k));
    }
  }

  function clearTrustPlot() {
    const g = el.trustPlot.getContext('2d');
    g.clearRect(0, 0, el.trustPlot.width, el.trustPlot.height);
  }

  function drawTrust(trust) {
    el.trustVerdict.textContent = capitalize(trust.verdict);
    el.trustStatus.textContent = `area under the curve ${fixed2(trust.auc)} (random ${fixed2(trust.random_auc)}), measured in ${trust.roundTripMs} ms`;
    el.trustPlot.dataset.auc = String(trust.auc);
    el.trustPlot.dataset.key = trust.key;                    // read by bench/trust.py
    clearTrustPlot();
    const g = el.trustPlot.getContext('2d');
    const W = el.trustPlot.width, H = el.trustPlot.height, pad = 24;
    const top = Math.max(1e-6, ...trust.probability, ...trust.random_probability);
    const xy = (f, p) => [pad + f * (W - 2 * pad), H - pad - (p / top) * (H - 2 * pad)];
    g.strokeStyle = '#9ca3af';
    g.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
    const line = (values, colour) => {
      g.strokeStyle = colour;
      g.lineWidth = 2;
      g.beginPath();
      values.forEach((p, i) => {
        const [x, y] = xy(trust.fractions[i], p);
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
      });
      g.stroke();
    };
    line(trust.random_probability, '#9ca3af');
    line(trust.probability, '#4f46e5');
    g.fillStyle = '#374151';
    g.font = '11px system-ui, sans-serif';
    g.fillText('fraction of pixels deleted →', pad, H - 6);
    g.fillText('this map', W - pad - 90, pad + 12);
    g.fillStyle = '#9ca3af';
    g.fillText('random maps', W - pad - 90, pad + 26);
  }

  function renderWordPanel() {
    const r = state.result;
    const sel = state.selected;
    const info = sel === null ? null : (r.word_scores || [])[sel];
    el.wordPanel.hidden = !info;
    el.alternatives.replaceChildren();
    if (!info) return;
    el.wordProbability.textContent = `p(${info.word}) = ${fixed2(info.p)}` +
      (info.model_choice ? '' : ' (not the model’s own choice)');
    info.alternatives.forEach((alt) => {
      const b = make('button', 'chip', `${alt.word} ${fixed2(alt.p)}`);
      b.type = 'button';
      b.title = `Why “${info.word}” and not “${alt.word}”?`;
      b.addEventListener('click', () => requestContrast(sel, alt.word));
      el.alternatives.appendChild(b);
    });
    el.alternativesLabel.hidden = !info.alternatives.length;
  }

  // -- ACE: named concepts, ranked for the selected word ------------------------------------
  function renderAce() {
    const ace = (state.result.explanations || {}).ace;
    el.aceSection.hidden = !ace;
    if (!ace) return;
    const bank = ace.bank;
    const present = (ace.concepts || []).length;
    el.aceNote.textContent = ace.note || (bank
      ? `${present} of the bank’s ${bank.concepts} concepts lie in this frame` +
        (ace.unmatched_area ? ` (${Math.round(100 * ace.unmatched_area)} % of it matches none)` : '') +
        '. Click a word to rank them for it.'
      : '');
  }

  function aceConceptInfo(ace) {
    const info = new Map();
    (ace.concepts || []).forEach((c) => info.set(c.id, c));
    return info;
  }

  // Where a concept lies in this frame: its location map drawn over the frame, small.
  function aceWhereUrl(entry) {
    return drawnUrl(`ace-where:${entry.id}`, entry.heatmap, 160);
  }

  function aceTcavText(entry, word) {
    if (typeof entry.tcav !== 'number') {
      return word === null ? 'no TCAV score for these words' : `no TCAV score for “${word}” (too few examples)`;
    }
    const target = word === null ? (entry.tcav_word ? `“${entry.tcav_word}”` : 'its words') : `“${word}”`;
    const p = typeof entry.p_value === 'number' ? `, p = ${entry.p_value.toPrecision(2)}` : '';
    return `TCAV for ${target}: ${fixed2(entry.tcav)}${p}`;
  }

  function aceCard(entry, info, word, topEvidence) {
    const card = make('article', `concept ace-card${entry.significant ? ' significant' : ''}`);
    card.dataset.concept = entry.id;
    const head = make('div', 'concept-head');
    const title = make('strong', entry.named ? null : 'unnamed', entry.name);
    head.appendChild(title);
    head.appendChild(make('span', 'concept-id muted', entry.id));
    card.appendChild(head);

    const facts = make('div', 'concept-facts');
    if (typeof entry.purity === 'number') {
      const purity = make('span', 'chip purity', `purity ${Math.round(100 * entry.purity)} %`);
      purity.title = 'share of the concept’s example segments whose ground truth agrees with its name';
      facts.appendChild(purity);
    } else if (entry.named_by) {
      facts.appendChild(make('span', 'chip purity', `named by ${entry.named_by}`));
    }
    const lowers = Boolean(entry.lowers);   // significant, with a TCAV score below one half
    const sig = make('span', `chip sig ${entry.significant ? 'yes' : 'no'}${lowers ? ' lowers' : ''}`,
      entry.significant ? (lowers ? 'significant: lowers it' : 'significant') : 'not significant');
    sig.title = 'two-sided t-test of the TCAV score against random concept vectors, Bonferroni-corrected';
    facts.appendChild(sig);
    card.appendChild(facts);

    card.appendChild(make('p', 'concept-tcav', aceTcavText(entry, word)));
    if (word === null && (entry.significant_for || []).length) {
      card.appendChild(make('p', 'muted concept-words', `significant for: ${entry.significant_for.join(', ')}`));
    }

    const sens = Number(entry.sensitivity || 0);
    const ev = Number(entry.evidence || 0);
    const bar = make('div', `bar${ev < 0 ? ' negative' : ''}`);
    bar.title = 'evidence where the concept lies: how much the word’s log-probability rises along the concept’s direction, in the cells it covers (the ranking)';
    const fill = make('span');
    fill.style.width = `${Math.max(2, Math.round(100 * Math.abs(ev) / topEvidence))}%`;
    bar.appendChild(fill);
    card.appendChild(bar);
    const signed = (x) => `${x >= 0 ? '+' : '−'}${Math.abs(x).toPrecision(2)}`;
    card.appendChild(make('p', 'muted concept-evidence',
      `where it lies ${signed(ev)} · over the whole frame ${signed(sens)}`));

    const pics = make('div', 'concept-pics');
    const where = aceWhereUrl(entry);
    if (where) {
      const fig = make('figure', 'concept-where');
      const img = make('img');
      img.src = where;
      img.alt = `where ${entry.name} lies in this frame`;
      fig.appendChild(img);
      // the entry's own area: for a word, a concept may also stand on segments matched
      // among that word's own concepts
      const share = typeof entry.area === 'number' ? entry.area : info && info.area;
      const area = typeof share === 'number' ? ` (${Math.round(100 * share)} %)` : '';
      fig.appendChild(make('figcaption', null, `in this frame${area}`));
      pics.appendChild(fig);
    }
    const patches = make('div', 'patches');
    ((info && info.patches) || []).forEach((src) => {
      const img = make('img');
      img.src = src;
      img.alt = `example segment of ${entry.name}`;
      img.loading = 'lazy';
      patches.appendChild(img);
    });
    if (patches.childNodes.length) pics.appendChild(patches);
    card.appendChild(pics);
    return card;
  }

  // Called on every selection change: the concept cards ranked by their evidence for the
  // selected word (or the caption); insignificant concepts folded into a <details>.
  function renderAceSegments() {
    el.aceConcepts.replaceChildren();
    el.aceSegments.replaceChildren();
    const more = $('ace-insignificant');
    const ace = state.result && (state.result.explanations || {}).ace;
    if (!ace) { if (more) more.hidden = true; return; }
    const sel = state.selected;
    const word = sel === null ? null : state.result.words[sel];
    const map = currentMap(ace, sel);
    const ranked = (map && map.concepts) || [];
    const info = aceConceptInfo(ace);
    const topEvidence = Math.max(1e-12, ...ranked.map((c) => Math.abs(Number(c.evidence || 0))));
    const significant = ranked.filter((c) => c.significant);
    const others = ranked.filter((c) => !c.significant);
    significant.forEach((c) => el.aceConcepts.appendChild(aceCard(c, info.get(c.id), word, topEvidence)));
    others.forEach((c) => el.aceSegments.appendChild(aceCard(c, info.get(c.id), word, topEvidence)));
    if (!significant.length) {
      el.aceConcepts.appendChild(make('p', 'muted', ranked.length
        ? `No concept in this frame has a significant TCAV score for ${word === null ? 'the caption' : `“${word}”`}.`
        : (ace.note ? '' : 'No concept of the bank matched this frame.')));
    }
    if (more) {
      more.hidden = !others.length;
      const summary = $('ace-insignificant-summary');
      if (summary) summary.textContent = `${others.length} more concept${others.length === 1 ? '' : 's'} in this frame, not significant for ${word === null ? 'the caption' : `“${word}”`}`;
    }
  }

  function renderAdversarial() {
    const ace = (state.result.explanations || {}).ace;
    const adv = ace && ace.adversarial;
    el.advSection.hidden = !adv;
    el.advChanges.replaceChildren();
    if (!adv) return;
    const whole = adv.all_pixels || adv;
    const perturbation = adv.perturbation || whole.perturbation;
    if (whole.perturbed_image) el.advImage.src = whole.perturbed_image; else el.advImage.removeAttribute('src');
    const perturbationUrl = perturbation && overlayUrl('perturbation', perturbation);
    if (perturbationUrl) el.advPerturbation.src = perturbationUrl; else el.advPerturbation.removeAttribute('src');
    el.advEpsilon.textContent = adv.epsilon !== undefined ? `±${Math.round(adv.epsilon)}/255 per pixel` : '';
    el.advCaption.textContent = adv.new_caption || '';
    const changes = adv.changed_words || [];
    el.advVerdict.textContent = changes.length
      ? `${changes.length} change${changes.length > 1 ? 's' : ''}: the caption is fragile`
      : 'unchanged: the caption held';
    el.advVerdict.className = `verdict ${changes.length ? 'bad' : 'good'}`;
    changes.forEach((c) => {
      const li = make('li');
      li.appendChild(make('span', 'before', (c.before || []).join(' ') || '∅'));
      li.appendChild(document.createTextNode(' → '));
      li.appendChild(make('span', 'after', (c.after || []).join(' ') || '∅'));
      el.advChanges.appendChild(li);
    });
    const salient = adv.salient_pixels;
    el.advSalient.textContent = salient
      ? `Only the ${Math.round(100 * (salient.fraction_of_pixels || 0))} % most salient pixels perturbed: “${salient.new_caption}”` +
        (salient.caption_changed ? ' (changed)' : ' (unchanged)')
      : '';
  }

  function renderTimings() {
    const t = state.result.timings_ms || {};
    el.timings.replaceChildren();
    const entries = Object.entries(t).filter(([k]) => k !== 'total');
    const max = Math.max(1, ...entries.map(([, v]) => v));
    const row = (name, ms, total) => {
      const tr = make('tr', total ? 'total' : null);
      const th = make('th', null, name.replace(/_/g, ' '));
      th.scope = 'row';
      const bar = make('td', 'bar-cell');
      if (!total) {
        const fill = make('span', 'time-bar');
        fill.style.width = `${Math.max(2, Math.round(100 * ms / max))}%`;
        bar.appendChild(fill);
      }
      tr.append(th, bar, make('td', 'ms', `${Math.round(ms)} ms`));
      el.timings.appendChild(tr);
    };
    entries.forEach(([k, v]) => row(k, v, false));
    if (t.total !== undefined) row('total (server)', t.total, true);
    if (state.roundTripMs !== null) row('round trip (browser)', state.roundTripMs, true);
  }

  // -- saving and speaking --------------------------------------------------------------
  async function downloadJson() {
    if (!state.result) return;
    const payload = {
      saved_at: new Date().toISOString(),
      reference: state.reference,
      frame: state.blob ? await blobToDataUrl(state.blob) : null,
      result: state.result,
    };
    download(new Blob([JSON.stringify(payload, null, 1)], { type: 'application/json' }),
             `caption-explanation-${stamp()}.json`);
  }

  function loadImage(src) {
    return new Promise((resolve) => {
      if (!src) { resolve(null); return; }
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => resolve(null);
      img.src = src;
    });
  }

  async function downloadPng() {
    if (!state.result) return;
    const shown = METHODS.filter((m) => $(`card-${m.name}`) && !$(`card-${m.name}`).hidden);
    const tiles = [['frame', el.frame]].concat(shown.map((m) => [m.label, $(`overlay-${m.name}`)]));
    const images = await Promise.all(tiles.map(([, img]) => loadImage(img.getAttribute('src'))));
    const side = 256, pad = 16, head = 64, foot = 28;
    const canvas = make('canvas');
    canvas.width = pad + tiles.length * (side + pad);
    canvas.height = head + side + foot + pad;
    const g = canvas.getContext('2d');
    g.fillStyle = '#ffffff';
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = '#111827';
    g.font = '600 20px system-ui, sans-serif';
    g.fillText(state.result.caption || '(empty caption)', pad, 30);
    g.font = '14px system-ui, sans-serif';
    g.fillStyle = '#4b5563';
    g.fillText(el.selectionLabel.textContent, pad, 52);
    tiles.forEach(([name], i) => {
      const x = pad + i * (side + pad);
      const img = images[i];
      if (img) {
        const s = Math.min(side / img.naturalWidth, side / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        g.drawImage(img, x + (side - w) / 2, head + (side - h) / 2, w, h);
      } else {
        g.strokeStyle = '#d1d5db';
        g.strokeRect(x, head, side, side);
      }
      g.fillStyle = '#111827';
      g.fillText(name, x, head + side + 20);
    });
    canvas.toBlob((blob) => { if (blob) download(blob, `caption-overlays-${stamp()}.png`); }, 'image/png');
  }

  function speak() {
    if (!state.result || !('speechSynthesis' in window)) return;
    window.speechSynthesis.cancel();
    const u = new SpeechSynthesisUtterance(state.result.caption || 'The model wrote an empty caption.');
    u.lang = 'en-US';
    window.speechSynthesis.speak(u);
  }

  // -- inputs ---------------------------------------------------------------------------
  function takeFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith('image/')) {
      showError(`“${file.name}” is not an image. Choose a JPEG, PNG, GIF, WebP, BMP or TIFF file.`);
      return;
    }
    explain(file, {});
  }

  async function explainSample(button) {
    if (state.busy) return;
    try {
      const res = await fetch(button.dataset.url);
      if (!res.ok) throw new Error(`the sample could not be loaded (${res.status})`);
      const blob = await res.blob();
      explain(new File([blob], `sample-${button.value}.png`, { type: 'image/png' }),
              { reference: button.dataset.caption });
    } catch (err) {
      showError(`Could not load the sample scene: ${err.message}`);
    }
  }

  function typingIn(target) {
    const tag = (target && target.tagName) || '';
    return ['INPUT', 'TEXTAREA', 'SELECT'].includes(tag) || (target && target.isContentEditable);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || !state.stream) return;
    const key = e.key.toLowerCase();
    if (key === 'c' && !typingIn(e.target)) {
      e.preventDefault();
      capture();
    } else if (key === ' ' && !typingIn(e.target)) {
      const tag = (e.target && e.target.tagName) || '';
      if (['BUTTON', 'A', 'SUMMARY'].includes(tag)) return;   // Space presses the focused control
      e.preventDefault();
      capture();
    }
  }

  function bind() {
    [
      ['error', 'error'], ['status', 'model-status'], ['stage', 'stage'], ['stageHint', 'stage-hint'],
      ['video', 'preview'], ['startCamera', 'start-camera'], ['capture', 'capture'],
      ['live', 'live'], ['liveOverlay', 'live-overlay'], ['liveInfo', 'live-info'],
      ['liveCaption', 'live-caption'], ['liveFps', 'live-fps'],
      ['uploadForm', 'upload-form'], ['uploadInput', 'upload-input'], ['samplesForm', 'samples-form'],
      ['saliencyMethod', 'saliency-method'], ['adversarial', 'adversarial'], ['attack', 'attack'],
      ['overlays', 'overlays'], ['wordPanel', 'word-panel'], ['wordProbability', 'word-probability'],
      ['alternatives', 'alternatives'], ['alternativesLabel', 'alternatives-label'],
      ['ownCaptionForm', 'own-caption-form'], ['ownCaption', 'own-caption'],
      ['trustSection', 'trust-section'], ['trustMethod', 'trust-method'], ['trustPlot', 'trust-plot'],
      ['trustVerdict', 'trust-verdict'], ['trustStatus', 'trust-status'],
      ['resultPanel', 'result-panel'], ['progress', 'progress'], ['progressText', 'progress-text'],
      ['emptyState', 'empty-state'], ['result', 'result'], ['caption', 'caption'], ['speak', 'speak'],
      ['wholeCaption', 'whole-caption'], ['selectionLabel', 'selection-label'], ['reference', 'reference'],
      ['logprob', 'logprob'], ['unfamiliar', 'unfamiliar'], ['familiarity', 'familiarity'], ['frame', 'frame'],
      ['aceSection', 'ace-section'], ['aceConcepts', 'ace-concepts'], ['aceNote', 'ace-note'],
      ['aceSegments', 'ace-segments'], ['advSection', 'adversarial-section'], ['advImage', 'adv-image'],
      ['advPerturbation', 'adv-perturbation'], ['advEpsilon', 'adv-epsilon'], ['advCaption', 'adv-caption'],
      ['advVerdict', 'adv-verdict'], ['advChanges', 'adv-changes'], ['advSalient', 'adv-salient'],
      ['timings', 'timings'], ['downloadJson', 'download-json'], ['downloadPng', 'download-png'],
    ].forEach(([key, id]) => { el[key] = $(id); });

    METHODS = JSON.parse(el.overlays.dataset.methods || '[]');
    COLORMAP = JSON.parse(el.overlays.dataset.colormap || '[]');
    el.startCamera.addEventListener('click', startCamera);
    el.ownCaptionForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = el.ownCaption.value.trim();
      if (!state.blob) { showError('Capture or upload a frame first, then type a caption for it.'); return; }
      if (!text) { showError('Type a caption first.'); return; }
      explain(state.blob, { caption: text, reference: state.reference });
    });
    const picker = document.getElementById('bundle-picker');
    if (picker) picker.addEventListener('change', () => switchBundle(picker.value));
    el.capture.addEventListener('click', capture);
    el.live.addEventListener('click', toggleLive);
    el.trustMethod.addEventListener('change', () => { if (state.result) renderTrust(); });
    document.addEventListener('keydown', onKey);

    el.uploadForm.addEventListener('submit', (e) => {
      e.preventDefault();
      takeFile(el.uploadInput.files[0]);
    });
    el.uploadInput.addEventListener('change', () => {
      takeFile(el.uploadInput.files[0]);
      el.uploadInput.value = '';
    });
    el.samplesForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const button = e.submitter || document.activeElement;
      if (button && button.classList.contains('sample')) explainSample(button);
    });

    ['dragenter', 'dragover'].forEach((type) => el.stage.addEventListener(type, (e) => {
      e.preventDefault();
      el.stage.classList.add('dragging');
    }));
    ['dragleave', 'drop'].forEach((type) => el.stage.addEventListener(type, () => {
      el.stage.classList.remove('dragging');
    }));
    el.stage.addEventListener('drop', (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) takeFile(file); else showError('Drop an image file here.');
    });
    document.addEventListener('paste', (e) => {
      const item = [...((e.clipboardData && e.clipboardData.items) || [])].find((i) => i.type.startsWith('image/'));
      if (item) { e.preventDefault(); takeFile(item.getAsFile()); }
    });

    el.caption.addEventListener('click', (e) => {
      const b = e.target.closest('.caption-word');
      if (!b || !state.result) return;
      const i = Number(b.dataset.index);
      state.selected = state.selected === i ? null : i;
      renderSelection();
    });
    el.wholeCaption.addEventListener('click', () => { state.selected = null; renderSelection(); });
    el.downloadJson.addEventListener('click', downloadJson);
    el.downloadPng.addEventListener('click', downloadPng);
    if ('speechSynthesis' in window) el.speak.addEventListener('click', speak);
    else el.speak.hidden = true;
  }

  function init() {
    bind();
    pollHealth();
    // A result rendered by the server (the form was posted before scripts ran) stays as is.
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
