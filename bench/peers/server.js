// The Node.js peer of `python bench/run.py peers`: the central system a Node user would write
// on ocpp-rpc. strictMode checks every CALL a station sends, and every reply this server
// gives, against the OCPP 1.6 JSON schemas; it answers BootNotification, Heartbeat,
// StatusNotification and MeterValues.
//
//   node server.js PORT [--store DB]        prints "ready" once listening
//
// --store DB: the writes `edrvctl serve` makes for these messages, with better-sqlite3 (WAL,
// synchronous=NORMAL, as edrvctl), each committed before its answer: the station record
// (read, changed, written) on a boot and on a StatusNotification that changes a connector;
// one row per MeterValues; the last-message time of every other message kept in memory and
// written once a second in one transaction. Without it, nothing is stored.
'use strict';
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2]);
const at = process.argv.indexOf('--store');
const store = at > 0 ? openStore(process.argv[at + 1]) : null;
const iso = () => new Date().toISOString();

function openStore(path) {
  const Database = require('better-sqlite3');
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec(`
    CREATE TABLE IF NOT EXISTS stations (endpoint TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meter_values (
      id INTEGER PRIMARY KEY AUTOINCREMENT, station_id TEXT NOT NULL, tx_key TEXT,
      connector INTEGER NOT NULL, doc TEXT NOT NULL)`);
  const get = db.prepare('SELECT doc FROM stations WHERE endpoint = ?');
  const put = db.prepare(
    'INSERT INTO stations (endpoint, doc) VALUES (?, ?) ' +
      'ON CONFLICT(endpoint) DO UPDATE SET doc = excluded.doc');
  const meter = db.prepare(
    'INSERT INTO meter_values (station_id, tx_key, connector, doc) VALUES (?, ?, ?, ?)');
  const pending = new Map(); // endpoint -> last-message time not written yet
  const doc = (ep) => { const row = get.get(ep); return row ? JSON.parse(row.doc) : { endpoint: ep }; };
  const flush = db.transaction((items) => {
    for (const [ep, when] of items) { const d = doc(ep); d.lastMessageAt = when; put.run(ep, JSON.stringify(d)); }
  });
  setInterval(() => {
    if (pending.size) { const items = [...pending]; pending.clear(); flush(items); }
  }, 1000).unref();
  return {
    seen(ep) { pending.set(ep, iso()); },
    change(ep, fn) { // read-modify-write of the record, one autocommitted statement
      const d = doc(ep), now = iso();
      fn(d, now);
      d.lastMessageAt = d.updatedAt = now;
      pending.delete(ep);
      put.run(ep, JSON.stringify(d));
    },
    meter(ep, p) {
      pending.set(ep, iso());
      meter.run(ep, p.transactionId == null ? null : String(p.transactionId), p.connectorId,
        JSON.stringify(p.meterValue));
    },
    close() { db.close(); },
  };
}

const server = new RPCServer({ protocols: ['ocpp1.6'], strictMode: true });

server.on('client', (client) => {
  const ep = client.identity;
  const connectors = new Map(); // connectorId -> what it last said: only a change is written
  client.handle('BootNotification', ({ params }) => {
    store?.change(ep, (d) => { d.bootInfo = params; d.online = true; });
    return { status: 'Accepted', interval: 60, currentTime: iso() };
  });
  client.handle('Heartbeat', () => {
    store?.seen(ep);
    return { currentTime: iso() };
  });
  client.handle('StatusNotification', ({ params: p }) => {
    const said = `${p.status}|${p.errorCode}|${p.info ?? ''}`;
    if (!store) return {};
    if (connectors.get(p.connectorId) === said) {
      store.seen(ep);
    } else {
      store.change(ep, (d, now) => {
        d.connectors = d.connectors || {};
        d.connectors[p.connectorId] = { status: p.status, errorCode: p.errorCode, info: p.info, updatedAt: now };
      });
      connectors.set(p.connectorId, said);
    }
    return {};
  });
  client.handle('MeterValues', ({ params }) => {
    store?.meter(ep, params);
    return {};
  });
});

server.listen(port, '127.0.0.1').then(() => console.log('ready'));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, async () => {
    await server.close({ awaitPending: false, force: true }).catch(() => {});
    store?.close();
    process.exit(0);
  });
}
