// The demo page: pick a sample or upload frames, call POST /predict, show the answer; or
// go live: feed the frames one at a time to a stream over its WebSocket.
// Plain JavaScript, no build step. Every URL is relative to the page, so the page also
// works behind a proxy that serves the service under a path prefix.
"use strict";

(() => {
  // The default model's T, from /readyz; 15 (the committed models' and the samples') until
  // it answers.
  let inputFrames = 15;
  // The samples are 15 RGB frames of 40x40: the page shows them with a model that takes those.
  const SAMPLE_SHAPE = { frames: 15, frame_shape: [40, 40, 3] };
  const FRAME_MS = 280;
  // samples.json (sets, samples, the committed model's figures) and /readyz's answer,
  // once they have come.
  let samplesIndex = null;
  let ready = null;
  const HOLD_TICKS = 4; // the animation rests on its last frame this many ticks

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("service-status"),
    form: $("predict-form"),
    sample: $("sample"),
    sampleAbout: $("sample-about"),
    files: $("files"),
    horizon: $("horizon"),
    modelPicker: $("model"),
    apiKey: $("api-key"),
    run: $("run"),
    live: $("live"),
    livePanel: $("live-panel"),
    liveStatus: $("live-status"),
    liveSent: $("live-sent"),
    livePredicted: $("live-predicted"),
    busy: $("busy"),
    error: $("error"),
    info: $("result-info"),
    noResult: $("no-result"),
    model: $("info-model"),
    provider: $("info-provider"),
    inference: $("info-inference"),
    roundtrip: $("info-roundtrip"),
    inputs: $("inputs"),
    truth: $("truth"),
    predicted: $("predicted"),
    movieTruth: $("movie-truth"),
    moviePredicted: $("movie-predicted"),
    play: $("play"),
    step: $("movie-step"),
    scoresNote: $("scores-note"),
    scoresLive: $("scores-live"),
    scoresSet: $("scores-set"),
  };

  /** A problem the page reports in words: from the API, or from the page itself. */
  class PageError extends Error {}

  // What is on screen: the source sequence (`sample`: its samples.json entry, null for
  // uploaded frames), and the last prediction for it with the answer that brought it.
  // A frame is {src, name, base64: () => Promise<string>}.
  // `generation` changes with the sequence, so a late answer for an old one is dropped.
  const view = {
    inputs: [],
    truth: [],
    predicted: [],
    answer: null,
    sample: null,
    objectUrls: [],
    generation: 0,
  };

  // ---- the sequence: a sample or uploaded files --------------------------------------

  async function loadSamples() {
    let index;
    try {
      const response = await fetch("web/samples/samples.json");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      index = await response.json();
    } catch (err) {
      el.sample.replaceChildren(new Option("(no samples: " + err.message + ")", ""));
      return;
    }
    samplesIndex = index;
    // One group per set, in the order samples.json names the sets.
    const groups = Object.entries(index.sets || {}).map(([name, set]) => {
      const group = document.createElement("optgroup");
      group.label = set.label;
      group.append(...index.samples.filter((s) => s.set === name).map((s) => new Option(s.title, s.name)));
      return group;
    });
    el.sample.replaceChildren(...groups, new Option("(your own frames)", ""));
    el.sample.selectedIndex = 0;
    showSample();
  }

  function sampleFrame(name, file) {
    const src = `web/samples/${encodeURIComponent(name)}/${file}`;
    return {
      src,
      name: file,
      base64: async () => {
        const response = await fetch(src);
        if (!response.ok) throw new PageError(`could not load the sample frame ${src}`);
        return bytesToBase64(await response.arrayBuffer());
      },
    };
  }

  function showSample() {
    const option = el.sample.selectedOptions[0];
    const sample = option && samplesIndex && samplesIndex.samples.find((s) => s.name === option.value);
    if (!sample) {
      if (el.files.files.length > 0) showFiles();
      else setSequence([], [], []);
      return;
    }
    el.files.value = "";
    const pad = (i) => String(i).padStart(2, "0");
    const inputs = [];
    const truth = [];
    for (let i = 0; i < sample.input_frames; i++) {
      inputs.push(sampleFrame(sample.name, `input_${pad(i)}.png`));
    }
    for (let i = 0; i < sample.truth_frames; i++) {
      truth.push(sampleFrame(sample.name, `truth_${pad(i)}.png`));
    }
    setSequence(inputs, truth, [], [], sample);
  }

  async function showFiles() {
    const files = [...el.files.files];
    if (files.length === 0) return;
    el.sample.value = "";
    hideError();
    const gifs = files.filter(isGif);
    try {
      if (gifs.length > 0 && files.length > 1) {
        throw new PageError(
          "Upload either PNG/JPEG frames or one animated GIF, not both or several GIFs.",
        );
      }
      if (gifs.length === 1) {
        const frames = await gifFrames(gifs[0]);
        setSequence(frames.slice(0, inputFrames), frames.slice(inputFrames), []);
        return;
      }
      // The API checks each file (type, size, count) and says what is wrong; the page
      // sends the files as they are, in file-name order.
      files.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
      const urls = files.map((f) => URL.createObjectURL(f));
      const frames = files.map((file, i) => ({
        src: urls[i],
        name: file.name,
        base64: async () => bytesToBase64(await file.arrayBuffer()),
      }));
      setSequence(frames, [], [], urls);
    } catch (err) {
      setSequence([], [], []);
      showError(err);
    }
  }

  function isGif(file) {
    return file.type === "image/gif" || /\.gif$/i.test(file.name);
  }

  /** Every frame of an animated GIF as a PNG frame (the API takes PNG or JPEG only). */
  async function gifFrames(file) {
    if (!("ImageDecoder" in window) || !(await ImageDecoder.isTypeSupported("image/gif"))) {
      throw new PageError(
        "This browser cannot split an animated GIF into frames; upload 15 PNG files instead.",
      );
    }
    const frames = [];
    let decoder;
    try {
      decoder = new ImageDecoder({ data: await file.arrayBuffer(), type: "image/gif" });
      await decoder.tracks.ready;
      const count = decoder.tracks.selectedTrack.frameCount;
      const canvas = document.createElement("canvas");
      const context = canvas.getContext("2d");
      for (let i = 0; i < count; i++) {
        const { image } = await decoder.decode({ frameIndex: i });
        canvas.width = image.displayWidth;
        canvas.height = image.displayHeight;
        context.drawImage(image, 0, 0);
        image.close();
        const dataUrl = canvas.toDataURL("image/png");
        frames.push({
          src: dataUrl,
          name: `${file.name} frame ${i + 1}`,
          base64: async () => dataUrl.slice(dataUrl.indexOf(",") + 1),
        });
      }
    } catch (err) {
      throw new PageError(`Could not read the frames of ${file.name}: ${err.message}`);
    } finally {
      if (decoder) decoder.close();
    }
    return frames;
  }

  function setSequence(inputs, truth, predicted, objectUrls = [], sample = null) {
    view.objectUrls.forEach((url) => URL.revokeObjectURL(url));
    Object.assign(view, { inputs, truth, predicted, objectUrls, sample, answer: null });
    view.generation += 1;
    const set = sample && samplesIndex.sets[sample.set];
    el.sampleAbout.textContent = sample ? `${set ? set.label : sample.set}: ${sample.description}.` : "";
    el.sampleAbout.hidden = !sample;
    showNoResult();
    renderScores();
    renderStrip(el.inputs, inputs, 1, "input", "No frames chosen.");
    renderNext();
    restartMovie();
  }

  // ---- the prediction ----------------------------------------------------------------

  async function predict(event) {
    event.preventDefault();
    hideError();
    if (view.inputs.length === 0) {
      showError(new PageError("Choose a sample or upload frames first."));
      return;
    }
    // The old answer goes at once, so that it is never taken for the new one.
    view.predicted = [];
    view.answer = null;
    showNoResult();
    renderScores();
    renderNext();
    restartMovie();
    const generation = view.generation;
    el.run.disabled = true;
    el.busy.hidden = false;
    try {
      const frames = await Promise.all(view.inputs.map((f) => f.base64()));
      const body = { frames, horizon: el.horizon.valueAsNumber };
      if (!Number.isFinite(body.horizon)) {
        throw new PageError("Horizon: enter a whole number of frames to predict.");
      }
      if (el.modelPicker.value) body.model = el.modelPicker.value;
      const { headers, key } = requestHeaders();
      const started = performance.now();
      const answer = await postJson("predict", body, headers, Boolean(key));
      const roundtrip = performance.now() - started;
      if (generation !== view.generation) return;
      const predicted = answer.frames.map((png, i) => {
        const src = `data:image/png;base64,${png}`;
        return { src, name: `predicted frame ${i + 1}`, base64: async () => png };
      });
      view.predicted = predicted;
      view.answer = answer;
      showInfo(answer, roundtrip);
      renderNext();
      restartMovie();
      renderScores();
    } catch (err) {
      showError(err);
    } finally {
      el.run.disabled = false;
      el.busy.hidden = true;
    }
  }

  /** JSON headers with the API key, if one was entered. */
  function requestHeaders() {
    const headers = { "Content-Type": "application/json" };
    const key = el.apiKey.value.trim();
    // fetch() refuses header values outside Latin-1 with an obscure TypeError.
    if (!/^[\x20-\x7e]*$/.test(key)) {
      throw new PageError("API key: only printable ASCII characters can be sent.");
    }
    if (key) headers["X-API-Key"] = key;
    return { headers, key };
  }

  // ---- live: a stream over its WebSocket -----------------------------------------------

  // The socket of the live run under way, if any; Live again stops it.
  const live = { socket: null, streamId: null };

  async function goLive() {
    hideError();
    if (live.socket) {
      stopLive("Stopped.");
      return;
    }
    if (view.inputs.length === 0) {
      showError(new PageError("Choose a sample or upload frames first."));
      return;
    }
    el.livePanel.hidden = false;
    el.liveSent.replaceChildren();
    el.livePredicted.replaceChildren();
    try {
      const { headers, key } = requestHeaders();
      const model = el.modelPicker.value || undefined;
      const opened = await fetch("v1/streams", {
        method: "POST",
        headers,
        body: JSON.stringify(model ? { model } : {}),
      });
      const info = await opened.json().catch(() => null);
      if (!opened.ok) throw new PageError(describeFailure(opened, info, "", Boolean(key)));
      live.streamId = info.stream_id;
      const frames = await Promise.all(view.inputs.map((f) => f.base64()));
      await runLive(info, frames, key);
    } catch (err) {
      stopLive("");
      showError(err);
    }
  }

  function runLive(info, frames, key) {
    const url = new URL(`v1/streams/${encodeURIComponent(info.stream_id)}/ws`, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    live.socket = socket;
    el.live.textContent = "Stop";
    let sent = 0;
    let sentAt = 0;
    const send = () => {
      if (sent >= frames.length) {
        stopLive(`Done: ${frames.length} frames streamed to ${info.model}.`);
        return;
      }
      const bytes = Uint8Array.from(atob(frames[sent]), (c) => c.charCodeAt(0));
      sentAt = performance.now();
      socket.send(bytes); // a binary message: the frame itself
      addLiveFrame(el.liveSent, `data:image/png;base64,${frames[sent]}`, sent + 1, "sent");
      sent += 1;
    };
    return new Promise((resolve) => {
      socket.addEventListener("open", () => {
        // A browser cannot set headers on a WebSocket: the key goes first, as a message.
        if (key) socket.send(JSON.stringify({ api_key: key }));
        el.liveStatus.textContent = `Streaming to ${info.model} (stream ${info.stream_id})\u2026`;
        send();
      });
      socket.addEventListener("message", (event) => {
        const answer = JSON.parse(event.data);
        if (answer.error) {
          showError(new PageError(`The stream refused a frame (${answer.error.type}): ${answer.error.message}`));
          return;
        }
        const ms = performance.now() - sentAt;
        addLiveFrame(el.livePredicted, `data:image/png;base64,${answer.frames[0]}`, sent + 1, "predicted");
        el.liveStatus.textContent =
          `Frame ${sent} of ${frames.length} answered in ${ms.toFixed(0)} ms ` +
          `(${answer.inference_ms.toFixed(1)} ms in the model).`;
        setTimeout(send, FRAME_MS);
      });
      socket.addEventListener("close", (event) => {
        if (live.socket === socket) {
          const why = event.reason ? `: ${event.reason}` : "";
          stopLive(`The stream closed (code ${event.code})${why}.`);
        }
        resolve();
      });
    });
  }

  function addLiveFrame(strip, src, step, kind) {
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = src;
    img.alt = `${kind} frame t=${step}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `t=${step}`;
    figure.append(img, caption);
    strip.append(figure);
  }

  function stopLive(status) {
    const { socket, streamId } = live;
    live.socket = null;
    live.streamId = null;
    el.live.textContent = "Live";
    if (status) el.liveStatus.textContent = status;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, "done");
    if (streamId) {
      // The stream's state is freed now rather than when it expires.
      let headers = {};
      try {
        headers = requestHeaders().headers;
      } catch {
        // the key was refused before the stream opened
      }
      fetch(`v1/streams/${encodeURIComponent(streamId)}`, { method: "DELETE", headers }).catch(
        () => {},
      );
    }
  }

  async function postJson(url, body, headers, sentKey) {
    let response;
    try {
      response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (err) {
      throw new PageError(`Could not reach the service (${err.message}).`);
    }
    const text = await response.text();
    let answer = null;
    try {
      answer = JSON.parse(text);
    } catch {
      // not JSON: described below from the status and the text
    }
    if (response.ok && answer && Array.isArray(answer.frames)) return answer;
    throw new PageError(describeFailure(response, answer, text, sentKey));
  }

  /** The API's error in words: its message, every listed problem, and its status. */
  function describeFailure(response, answer, text, sentKey) {
    const status = `HTTP ${response.status}${response.statusText ? " " + response.statusText : ""}`;
    const error = answer && answer.error;
    if (!error) {
      const snippet = text.trim().slice(0, 300) || "no body";
      return `The service answered ${status} without an error message: ${snippet}`;
    }
    const lines = [`The service refused the request (${status}, ${error.type}): ${error.message}`];
    if (Array.isArray(error.errors) && error.errors.length > 1) {
      lines.push(...error.errors.map((e) => `  \u2022 ${e.message}`));
    }
    if (response.status === 401) {
      lines.push(
        sentKey
          ? "The API key was not accepted; check it."
          : "This service needs an API key: enter it in the API key field.",
      );
    }
    return lines.join("\n");
  }

  function showInfo(answer, roundtrip) {
    el.model.textContent = `${answer.model} ${answer.model_version}`;
    el.provider.textContent = answer.provider;
    const steps = answer.horizon === 1 ? "1 model run" : `${answer.horizon} model runs`;
    el.inference.textContent = `${answer.inference_ms.toFixed(1)} ms in the model (${steps})`;
    el.roundtrip.textContent = `${roundtrip.toFixed(0)} ms in all, seen from this page`;
    el.info.hidden = false;
    el.noResult.hidden = true;
  }

  function showNoResult() {
    el.info.hidden = true;
    el.noResult.hidden = false;
  }

  function showError(err) {
    const message = err instanceof PageError ? err.message : `Unexpected error: ${err}`;
    el.error.textContent = message;
    el.error.hidden = false;
    if (!(err instanceof PageError)) console.error(err);
  }

  function hideError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  // ---- frames on screen --------------------------------------------------------------

  function renderStrip(container, frames, firstStep, kind, empty) {
    if (frames.length === 0) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = empty;
      container.replaceChildren(p);
      return;
    }
    container.replaceChildren(
      ...frames.map((frame, i) => {
        const figure = document.createElement("figure");
        const img = new Image();
        img.src = frame.src;
        img.alt = `${kind} frame t=${firstStep + i}`;
        img.title = frame.name;
        const caption = document.createElement("figcaption");
        caption.textContent = `t=${firstStep + i}`;
        figure.append(img, caption);
        return figure;
      }),
    );
  }

  /** How many frames after the inputs to show: those predicted, else the horizon asked. */
  function shownAfter() {
    const horizon = Math.max(1, Math.min(el.horizon.valueAsNumber || 1, 64));
    return view.predicted.length || horizon;
  }

  function renderNext() {
    const first = view.inputs.length + 1;
    const truth = view.truth.slice(0, shownAfter());
    const noTruth = view.truth.length ? "" : "No ground truth for these frames.";
    renderStrip(el.truth, truth, first, "ground truth", noTruth || "Press Predict.");
    renderStrip(el.predicted, view.predicted, first, "predicted", "Press Predict.");
  }

  // ---- held-out figures: this sequence's, and the committed model's on its set ---------

  /** Score what is on screen (see scores.js); a late result for an old view is dropped. */
  async function renderScores() {
    const { predicted, generation } = view;
    const set = setFigures();
    el.scoresSet.textContent = set.text;
    el.scoresLive.hidden = true;
    if (predicted.length === 0) {
      el.scoresNote.textContent = "Press Predict.";
      return;
    }
    if (view.truth.length === 0) {
      el.scoresNote.textContent =
        "No ground truth for these frames, so nothing to score the prediction against " +
        "(a sample, or an animated GIF with frames after the 15th, has some).";
      return;
    }
    el.scoresNote.textContent = "Scoring\u2026";
    let rows;
    try {
      rows = await HeldOutScores.stepScores(view.inputs, view.truth, predicted);
    } catch (err) {
      if (predicted === view.predicted) el.scoresNote.textContent = `Not scored: ${err.message}.`;
      return;
    }
    if (predicted !== view.predicted || generation !== view.generation) return;
    HeldOutScores.renderRows(el.scoresLive.tBodies[0], rows, view.inputs.length + 1, set.steps);
    el.scoresLive.hidden = false;
    const missing = predicted.length - rows.length;
    el.scoresNote.textContent =
      missing > 0
        ? `${rows.length} of the ${predicted.length} predicted frames have a true frame to score against.`
        : `This sequence, ${rows.length} predicted ${rows.length === 1 ? "frame" : "frames"}:`;
  }

  /**
   * The committed model's figures on the sample's set (on both sets for uploaded frames),
   * and per fed-back step for the table; shown only when the model that answered (or
   * will answer) is the committed graph, as its sha256 in /readyz says.
   */
  function setFigures() {
    const committed = samplesIndex && samplesIndex.committed_model;
    if (!committed) return { text: "", steps: null };
    const who =
      `the committed ConvLSTM (${committed.name} ${committed.version}, ` +
      `sha256 ${committed.sha256.slice(0, 12)}\u2026, from ${committed.card})`;
    const name = view.answer ? view.answer.model : el.modelPicker.value || (ready && ready.model);
    const version = view.answer ? view.answer.model_version : null;
    const served = ready && Array.isArray(ready.served) ? ready.served : [];
    const model = served.find((m) => m.name === name && (!version || m.version === version));
    if (!model) {
      return {
        text: `Figures on whole sets: those of ${who}, shown once the service says it serves that graph.`,
        steps: null,
      };
    }
    if (model.sha256 !== committed.sha256) {
      return {
        text:
          `Figures on whole sets are known for ${who} only; ${model.name} ${model.version} ` +
          `(sha256 ${model.sha256.slice(0, 12)}\u2026) is another graph, so none are shown.`,
        steps: null,
      };
    }
    const sets = view.sample ? [view.sample.set] : Object.keys(committed.figures);
    const lines = sets
      .map((s) => HeldOutScores.describeSet(committed, s, samplesIndex.sets[s].label))
      .filter(Boolean);
    const figures = view.sample && committed.figures[view.sample.set];
    return {
      text: `Whole-set figures of ${who}, from its card: ${lines.join(" ")}`,
      steps: figures ? figures.fed_back_mse_vs_copy_last : null,
    };
  }

  // ---- the animation: both canvases step through the same time line ------------------

  const movie = { tick: 0, timer: null, playing: true, truth: [], predicted: [], inputs: [] };

  function loaded(frames) {
    return frames.map((frame) => {
      const img = new Image();
      img.src = frame.src;
      return img;
    });
  }

  function restartMovie() {
    movie.inputs = loaded(view.inputs);
    movie.truth = loaded(view.truth.slice(0, shownAfter()));
    movie.predicted = loaded(view.predicted);
    movie.tick = 0;
    drawMovie();
  }

  function drawFrame(canvas, img, label) {
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (img && img.complete && img.naturalWidth > 0) {
      context.drawImage(img, 0, 0, canvas.width, canvas.height);
    }
    context.fillStyle = "rgba(255, 255, 255, 0.85)";
    context.font = "12px system-ui, sans-serif";
    context.fillText(label, 6, canvas.height - 8);
  }

  function drawMovie() {
    const after = Math.max(movie.truth.length, movie.predicted.length);
    const length = movie.inputs.length + after;
    if (length === 0) {
      drawFrame(el.movieTruth, null, "");
      drawFrame(el.moviePredicted, null, "");
      el.step.textContent = "";
      return;
    }
    const t = Math.min(movie.tick % (length + HOLD_TICKS), length - 1);
    const step = t + 1;
    if (t < movie.inputs.length) {
      const img = movie.inputs[t];
      drawFrame(el.movieTruth, img, `t=${step} input`);
      drawFrame(el.moviePredicted, img, `t=${step} input`);
      el.step.textContent = `t=${step} of ${length}: input`;
    } else {
      const k = t - movie.inputs.length;
      const truth = movie.truth[k];
      const predicted = movie.predicted[k];
      drawFrame(el.movieTruth, truth, truth ? `t=${step} truth` : `t=${step} (none)`);
      drawFrame(el.moviePredicted, predicted, predicted ? `t=${step} predicted` : `t=${step}`);
      el.step.textContent = `t=${step} of ${length}: ${predicted ? "predicted" : "ground truth"}`;
    }
  }

  function setPlaying(playing) {
    movie.playing = playing;
    clearInterval(movie.timer);
    movie.timer = playing
      ? setInterval(() => {
          movie.tick += 1;
          drawMovie();
        }, FRAME_MS)
      : null;
    el.play.textContent = playing ? "Pause" : "Play";
  }

  // ---- the service's state -----------------------------------------------------------

  async function checkReady() {
    try {
      const response = await fetch("readyz");
      const body = await response.json();
      if (response.ok) {
        ready = body;
        renderScores();
        el.status.textContent =
          `Ready: ${body.model} ${body.model_version} on ${body.provider}.` +
          describeModels(body);
        return;
      }
      el.status.textContent = `Not ready yet: ${body.error ? body.error.message : response.status}.`;
    } catch (err) {
      el.status.textContent = `The service does not answer (${err.message}).`;
    }
    setTimeout(checkReady, 3000);
  }

  /** What this page can show, in words: it calls /predict with the default model. */
  function describeModels(body) {
    const served = Array.isArray(body.served) ? body.served : [];
    const model = served.find((m) => m.name === body.model);
    if (!model) return "";
    const spec = model.predict;
    const words = [];
    if (!spec) {
      words.push(
        `The default model answers tensors, not frames: this page cannot show it; ` +
          `use POST /v2/models/${body.model}/infer.`,
      );
    } else {
      inputFrames = spec.frames;
      const [h, w] = spec.frame_shape;
      words.push(
        `This page shows the default model: ${spec.frames} frames of ${w}x${h} ` +
          `(${spec.input_mode}) in, ${spec.output_mode} frames out.`,
      );
      const fits =
        spec.frames === SAMPLE_SHAPE.frames &&
        spec.frame_shape.join() === SAMPLE_SHAPE.frame_shape.join();
      if (!fits) words.push("The samples (15 RGB frames of 40x40) do not fit it: upload your own.");
    }
    fillModelPicker(served, body.model);
    const others = served.filter((m) => m.name !== body.model && !m.predict).map((m) => m.name);
    if (others.length > 0) {
      words.push(`Also served, through the API only: ${others.join(", ")}.`);
    }
    const failed = Array.isArray(body.failed) ? body.failed.map((f) => f.name) : [];
    if (failed.length > 0) words.push(`Failed to load: ${failed.join(", ")}.`);
    return " " + words.join(" ");
  }

  /** Every served frame model in the picker (tensor and series models have no frames). */
  function fillModelPicker(served, defaultName) {
    const chosen = el.modelPicker.value;
    const frameModels = served.filter((m) => m.predict);
    el.modelPicker.replaceChildren(
      ...frameModels.map((m) => {
        const [h, w] = m.predict.frame_shape;
        const label = `${m.name} ${m.version} (${m.predict.frames} frames of ${w}x${h})`;
        const option = new Option(m.name === defaultName ? `${label}, default` : label, m.name);
        option.selected = chosen ? m.name === chosen : m.name === defaultName;
        return option;
      }),
    );
  }

  // ---- start ---------------------------------------------------------------------------

  function bytesToBase64(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  el.form.addEventListener("submit", predict);
  el.live.addEventListener("click", goLive);
  el.sample.addEventListener("change", () => {
    hideError();
    showSample();
  });
  el.files.addEventListener("change", showFiles);
  el.modelPicker.addEventListener("change", renderScores);
  el.horizon.addEventListener("input", () => {
    if (view.predicted.length > 0) return;
    renderNext();
    restartMovie();
  });
  el.play.addEventListener("click", () => setPlaying(!movie.playing));
  setPlaying(!window.matchMedia("(prefers-reduced-motion: reduce)").matches);
  checkReady();
  loadSamples();
})();
