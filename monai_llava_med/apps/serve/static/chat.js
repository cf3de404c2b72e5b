// Copyright (c) monai-llava-med contributors. Licensed under the Apache License, Version 2.0.
// The server's web page: choose an image, see the views the model is given (POST /v1/views), ask questions and
// watch the answers stream (POST /v1/chat/completions, stream: true). Plain browser JavaScript, no dependencies.
// Model output and server messages are written with textContent only, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PNG_URL = "data:image/png;base64,";

  const state = {
    imageUrl: null,      // the chosen file as a data: URL (it goes in the first user message)
    fileName: "",        // its name, shown beside the views
    viewsShown: false,   // whether the views of imageUrl are on the page
    messages: [],        // the conversation so far, in OpenAI's message format
    controller: null,    // the AbortController of the answer being streamed
    epoch: 0,            // bumped by a new image or a reset: late results of older requests are dropped
  };

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function setBusy(busy) {
    document.body.dataset.state = busy ? "streaming" : "idle";
    $("ask").disabled = busy;
    $("stop").disabled = !busy;
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    const el = $("error");
    el.textContent = "";
    el.hidden = true;
  }

  // The message of an error response: OpenAI's {"error": {"message": ...}} when the body has it.
  async function responseError(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (_) {
      // no body: fall back to the status line
    }
    const message = errorMessage(text);
    return message || `the server answered ${response.status} ${response.statusText}`.trim();
  }

  function errorMessage(text) {
    try {
      const body = JSON.parse(text);
      if (body && body.error && typeof body.error.message === "string") return body.error.message;
    } catch (_) {
      // not JSON
    }
    return null;
  }

  async function postJson(path, body, signal) {
    return fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  }

  // ---- the image and its views ----

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(new Error("the file could not be read"));
      reader.readAsDataURL(file);
    });
  }

  function viewCaption(view, i) {
    const parts = [String(view.kind || "view")];
    if (view.plane) parts.push(String(view.plane));
    if (view.index !== undefined && view.index !== null) parts.push("#" + String(view.index));
    return `${i + 1}: ${parts.join(" ")}`;
  }

  function renderViews(body) {
    const box = $("views");
    box.replaceChildren();
    const views = Array.isArray(body.views) ? body.views : [];
    views.forEach((view, i) => {
      if (typeof view.png !== "string" || !view.png.startsWith(PNG_URL)) return;
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = view.png;
      img.alt = "view " + viewCaption(view, i);
      const caption = document.createElement("figcaption");
      caption.textContent = viewCaption(view, i);
      figure.append(img, caption);
      box.append(figure);
    });
    box.dataset.loaded = "true";
    return views.length;
  }

  async function loadViews() {
    if (!state.imageUrl) return;
    const epoch = state.epoch;
    const status = $("image-status");
    status.textContent = "Preparing the views the model sees...";
    let response;
    try {
      response = await postJson("/v1/views", { image_url: { url: state.imageUrl } });
    } catch (err) {
      if (epoch === state.epoch) showError("the server could not be reached: " + err.message);
      return;
    }
    if (epoch !== state.epoch) return;
    if (!response.ok) {
      status.textContent = "The views could not be shown.";
      showError(await responseError(response));
      return;
    }
    const body = await response.json();
    if (epoch !== state.epoch) return;
    const n = renderViews(body);
    state.viewsShown = true;
    const modality = body.modality ? `, ${body.modality}` : "";
    status.textContent = `${state.fileName}: ${n} view${n === 1 ? "" : "s"}${modality}.`;
  }

  async function chooseImage() {
    const file = $("image-file").files[0];
    resetConversation();
    state.imageUrl = null;
    state.viewsShown = false;
    $("views").replaceChildren();
    delete $("views").dataset.loaded;
    if (!file) {
      $("image-status").textContent = "No image: questions are asked without one.";
      return;
    }
    const epoch = state.epoch;
    state.fileName = file.name;
    $("image-status").textContent = `Reading ${file.name}...`;
    let url;
    try {
      url = await readAsDataUrl(file);
    } catch (err) {
      if (epoch === state.epoch) showError(`${file.name}: ${err.message}`);
      return;
    }
    if (epoch !== state.epoch) return;
    state.imageUrl = url;
    await loadViews();
  }

  // ---- the conversation ----

  function addTurn(role, text) {
    const li = document.createElement("li");
    li.className = "turn " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "LLaVA-Med";
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    li.append(who, body);
    $("transcript").append(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  // The per-answer extension field: confidence (n/a until the predictor reports it), abstained, reason.
  function trustItems(ext, finish) {
    const items = [];
    const conf = ext && typeof ext.confidence === "number" && Number.isFinite(ext.confidence)
      ? ext.confidence.toFixed(2) : "n/a";
    items.push(["confidence", "confidence: " + conf]);
    if (ext && typeof ext.image_reliance === "number" && Number.isFinite(ext.image_reliance)) {
      items.push(["image-reliance", "image reliance: " + ext.image_reliance.toFixed(2)]);
    }
    if (ext && ext.abstained === true) items.push(["abstained", "abstained"]);
    if (ext && ext.reason !== undefined && ext.reason !== null && String(ext.reason)) {
      items.push(["reason", "reason: " + String(ext.reason)]);
    }
    if (ext && ext.modality) items.push(["modality", "modality: " + String(ext.modality)]);
    if (finish === "length") items.push(["finish", "cut at the token limit"]);
    return items;
  }

  // The line under an answer: one <span> per item of trustItems, text only.
  function trustLine(ext, finish) {
    const meta = document.createElement("p");
    meta.className = "meta";
    for (const [kind, text] of trustItems(ext, finish)) {
      const span = document.createElement("span");
      span.className = kind;
      span.textContent = text;
      meta.append(span);
    }
    return meta;
  }

  function showTrust(li, ext, finish) {
    if (ext && ext.abstained === true) li.classList.add("abstained");
    li.append(trustLine(ext, finish));
  }

  // Read a server-sent-events body; call onEvent with each parsed JSON payload until [DONE].
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    try {
      await readChunks(reader, onEvent);
    } catch (err) {
      reader.cancel().catch(() => {});
      throw err;
    }
  }

  async function readChunks(reader, onEvent) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
        if (!data.length) continue;
        const payload = data.join("\n");
        if (payload === "[DONE]") return;
        onEvent(JSON.parse(payload));
      }
      if (done) throw new Error("the answer stream ended early");
    }
  }

  async function ask(question) {
    clearError();
    const epoch = state.epoch;
    const first = state.messages.length === 0;
    const content = first && state.imageUrl
      ? [{ type: "text", text: question }, { type: "image_url", image_url: { url: state.imageUrl } }]
      : question;
    const messages = [...state.messages, { role: "user", content }];
    const userLi = addTurn("user", question);
    const li = addTurn("assistant", "");
    li.dataset.done = "false";
    const text = li.querySelector(".text");
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let answer = "", ext = null, finish = null;
    try {
      const response = await postJson("/v1/chat/completions",
        { messages, stream: true, stream_options: { include_usage: true } }, controller.signal);
      if (!response.ok) throw new Error(await responseError(response));
      await readEvents(response, (event) => {
        if (event.error) throw new Error(event.error.message || "the answer could not be generated");
        for (const choice of event.choices || []) {
          const piece = choice.delta && choice.delta.content;
          if (piece) {
            answer += piece;
            text.textContent = answer;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
          if (choice.llava_med) ext = choice.llava_med;
        }
      });
      if (epoch !== state.epoch) return;
      showTrust(li, ext, finish);
      li.dataset.done = "true";
      state.messages = [...messages, { role: "assistant", content: answer }];
    } catch (err) {
      if (epoch !== state.epoch) return;
      li.dataset.done = "error";
      userLi.classList.add("dropped");
      li.classList.add("dropped");
      const stopped = err.name === "AbortError";
      const note = document.createElement("p");
      note.className = "meta";
      note.textContent = stopped ? "stopped: this turn is left out of the conversation"
        : "failed: this turn is left out of the conversation";
      li.append(note);
      if (!stopped) showError(err.message);
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  function resetConversation() {
    state.epoch += 1;
    if (state.controller) state.controller.abort();
    state.controller = null;
    state.messages = [];
    $("transcript").replaceChildren();
    clearError();
    setBusy(false);
  }

  function init() {
    $("image-file").addEventListener("change", chooseImage);
    $("api-key").addEventListener("change", () => {
      if (state.imageUrl && !state.viewsShown) {
        clearError();
        loadViews();
      }
    });
    $("ask-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const question = $("question").value.trim();
      if (!question || state.controller) return;
      $("question").value = "";
      ask(question);
    });
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("ask-form").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => {
      if (state.controller) state.controller.abort();
    });
    $("reset").addEventListener("click", resetConversation);
    setBusy(false);
  }

  init();
  // The answer-line formatting, for the browser tests (it builds elements, it changes nothing on the page).
  window.LlavaMedPage = Object.freeze({ trustItems, trustLine });
})();
