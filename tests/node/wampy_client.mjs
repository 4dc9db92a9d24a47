// A WAMP round trip with npm `wampy`, for tests/test_wamp.py:
//   node wampy_client.mjs URL SERIALIZER(json|msgpack)
// (msgpack: wampy 8's msgpackr decodes 64-bit integers, such as WAMP ids above
// 2^32, as BigInt, which wampy then cannot use; JSON works.)
// A callee and a caller on two connections: register, call, subscribe, publish;
// prints one JSON line with what came back.
import WebSocket from "ws";
import { Wampy } from "wampy";
import { MsgpackSerializer } from "wampy/MsgpackSerializer.js";

const [url, serializer] = process.argv.slice(2);
const options = () => ({
  realm: "realm1", ws: WebSocket, autoReconnect: false,
  ...(serializer === "msgpack" ? { serializer: new MsgpackSerializer() } : {}),
});

try {
  const callee = new Wampy(url, options());
  const caller = new Wampy(url, options());
  await callee.connect();
  await caller.connect();
  await callee.register("node.mul", ({ argsList }) => [argsList[0] * argsList[1]]);
  const product = await caller.call("node.mul", [6, 7]);
  const lua = await caller.call("lua.add", [40, 2]);
  const event = new Promise((resolve) => {
    callee.subscribe("node.topic", ({ argsList, argsDict }) => resolve({ argsList, argsDict }));
  });
  await new Promise((r) => setTimeout(r, 50));
  await caller.publish("node.topic", { argsList: ["hi"], argsDict: { n: 1 } }, { acknowledge: true });
  const got = await event;
  let missing;
  try {
    await caller.call("node.missing");
  } catch (err) {
    missing = err.errorUri || String(err);
  }
  await callee.disconnect();
  await caller.disconnect();
  console.log(JSON.stringify({ product: product.argsList, lua: lua.argsList, event: got, missing }));
  process.exit(0);
} catch (err) {
  console.log(JSON.stringify({ error: String(err && err.stack || err) }));
  process.exit(1);
}
