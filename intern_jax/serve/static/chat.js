// The chat page: multi-turn, streamed from this server's /v1/chat/completions (server-sent events).
//
// The conversation lives in this page (window.chatState.messages, OpenAI's message objects); each
// turn sends all of it with the system prompt, temperature and max tokens of the fields, and the API
// key as 'Authorization: Bearer'. Stop aborts the fetch: the server sees the client go away and ends
// the request at once, freeing its KV pages. The part of a reply that arrived before Stop stays in
// the conversation.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {messages: [], controller: null, model: null, busy: false};
  window.chatState = state;

  const KEY_STORE = "intern-jax-api-key";
  try {
    $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  } catch (e) { /* storage may be off */ }
  $("api-key").addEventListener("change", () => {
    state.model = null;
    try { sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()); } catch (e) { /* storage may be off */ }
  });

  function headers() {
    const h = {"Content-Type": "application/json"};
    const key = $("api-key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function errorText(response) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON */ }
    if (response.status === 401) message += " (enter the server's key in the API key field)";
    return message;
  }

  async function modelName() {
    if (state.model) return state.model;
    const response = await fetch("/v1/models", {headers: headers()});
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    state.model = body.data[0].id;
    $("model").textContent = state.model;
    return state.model;
  }

  // The server-sent events of a streamed response, parsed; ends at 'data: [DONE]'.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    div.append(who, body, meta);
    $("messages").append(div);
    setText(div, text);
    return div;
  }

  function setText(div, text) {
    const body = div.querySelector(".body");
    if (div.classList.contains("user")) body.textContent = text;
    else body.innerHTML = window.renderMarkdown(text);
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    document.body.dataset.state = busy ? "streaming" : "idle";
  }

  function number(id, fallback) {
    const value = parseFloat($(id).value);
    return Number.isFinite(value) ? value : fallback;
  }

  async function send(text) {
    state.messages.push({role: "user", content: text});
    bubble("user", text);
    const reply = bubble("assistant", "");
    reply.dataset.state = "streaming";
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let answer = "";
    let pieces = 0;
    let usage = null;
    let finish = null;
    const start = performance.now();
    let first = null;
    const show = (note) => {
      const now = performance.now();
      const tokens = usage ? usage.completion_tokens : pieces;
      const parts = [`${tokens} tokens`];
      if (first !== null && tokens > 1 && now > first) {
        parts.push(`${((tokens - 1) / ((now - first) / 1000)).toFixed(1)} tok/s`);
      }
      if (first !== null) parts.push(`first token ${((first - start) / 1000).toFixed(2)} s`);
      if (note) parts.push(note);
      reply.querySelector(".meta").textContent = parts.join(" · ");
    };
    try {
      const model = await modelName();
      const system = $("system").value.trim();
      const messages = (system ? [{role: "system", content: system}] : []).concat(state.messages);
      const body = {model, messages, stream: true, stream_options: {include_usage: true},
                    temperature: number("temperature", 0.7), max_tokens: Math.max(1, Math.round(number("max-tokens", 512)))};
      const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body),
                                                           signal: controller.signal});
      if (!response.ok) throw new Error(await errorText(response));
      for await (const chunk of events(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const piece = choice.delta && choice.delta.content;
          if (piece) {
            if (first === null) first = performance.now();
            answer += piece;
            pieces += 1;
            setText(reply, answer);
            show();
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      reply.dataset.state = "done";
      show(finish === "length" ? "stopped at max tokens" : "");
      $("status").textContent = "";
    } catch (e) {
      if (e.name === "AbortError") {
        reply.dataset.state = "stopped";
        show("stopped");
      } else {
        reply.dataset.state = "error";
        $("status").textContent = "Error: " + e.message;
      }
    } finally {
      if (answer) {
        state.messages.push({role: "assistant", content: answer});
      } else {  // nothing came back: the turn is not part of the conversation
        state.messages.pop();
        if (reply.dataset.state === "error") {  // and the text goes back to the box to send again
          reply.previousElementSibling.remove();
          reply.remove();
          $("input").value = text;
        }
      }
      reply.dataset.finish = finish || "";
      state.controller = null;
      setBusy(false);
      $("input").focus();
    }
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value;
    if (state.busy || !text.trim()) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
  });
  $("reset").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    state.messages = [];
    $("messages").replaceChildren();
    $("status").textContent = "";
  });
  setBusy(false);
  modelName().catch(() => { /* shown on the first send */ });
})();
