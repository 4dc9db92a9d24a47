// The chat demo's client: plain browser JavaScript, no library.
(function () {
  "use strict";
  var status = document.getElementById("status");
  var log = document.getElementById("log");
  var form = document.getElementById("chat-form");
  var nameInput = document.getElementById("name");
  var textInput = document.getElementById("text");
  var socket = null;
  var retry = 500;

  function show(text, cls) {
    var item = document.createElement("li");
    item.textContent = text; // never innerHTML: messages come from other people
    if (cls) item.className = cls;
    log.appendChild(item);
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/chat/ws");
    socket.onopen = function () { retry = 500; };
    socket.onmessage = function (event) {
      var msg = JSON.parse(event.data);
      if (msg.type === "welcome") {
        status.textContent = "connected to worker " + msg.worker;
        status.dataset.worker = String(msg.worker);
      } else if (msg.type === "message") {
        show(msg.name + ": " + msg.text, "message");
      }
    };
    socket.onclose = function (event) {
      status.textContent = "disconnected (" + event.code + "), reconnecting…";
      delete status.dataset.worker;
      setTimeout(connect, retry); // 1001/1012: the server restarts; come back
      retry = Math.min(retry * 2, 10000);
    };
  }

  /** Send one chat message; returns false while not connected. */
  function send(name, text) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify({ name: name, text: text }));
    return true;
  }
  window.chat = { send: send };

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (send(nameInput.value, textInput.value)) textInput.value = "";
  });
  connect();
})();
