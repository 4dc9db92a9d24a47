// A WebSocket client on npm `ws`, for tests/test_websocket_clients.py:
//   node ws_client.js URL
// Connects (permessage-deflate offered, as ws does by default), sends a text, a
// binary, a large compressible and a fragmented message, and prints one JSON line
// with what came back and the close code.
"use strict";
const WebSocket = require("ws");

const ws = new WebSocket(process.argv[2], ["chat.v1"]);
const got = [];
const big = "compressible ".repeat(5000);
ws.on("message", (data, isBinary) => {
  got.push(isBinary ? { binary: Buffer.from(data).toString("hex") } : { text: data.toString().slice(0, 60), length: data.length });
  if (got.length === 1) {
    ws.send("hello from node");
    ws.send(Buffer.from([0, 1, 2, 255]));
    ws.send(big);
    ws.send("frag", { fin: false });
    ws.send("mented", { fin: true });
  } else if (got.length === 5) {
    ws.send("close");
  }
});
ws.on("close", (code, reason) => {
  console.log(JSON.stringify({ protocol: ws.protocol, extensions: ws.extensions, got, code, reason: reason.toString() }));
});
ws.on("error", (err) => { console.log(JSON.stringify({ error: String(err) })); process.exit(1); });
