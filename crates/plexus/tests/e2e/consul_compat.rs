//! Compatibility suite: two Consul client libraries nobody here wrote, in two languages
//! (py-consul from PyPI in `.tools/venv`, the `consul` package from npm in `.tools/npm-consul`,
//! both installed by `scripts/setup-test-env.sh`), drive sessions, locks, transactions, the
//! query-meta headers, catalog register/deregister, agent checks, maintenance mode, members,
//! `?filter=` and prepared queries of `plexus dev` (and py-consul `?node-meta=` and `?near=`).
//! A missing library fails the test naming it.

use std::path::PathBuf;

use crate::consul_client::python;
use crate::dev;

const PY: &str = r#"
import sys, base64, consul
host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)

# Sessions: create (lower-case fields, as py-consul sends them), info, node, list, renew.
s1 = c.session.create(name="py-leader", lock_delay=1, ttl=20)
s2 = c.session.create(name="py-other", behavior="delete")
index, info = c.session.info(s1)
assert int(index) > 0 and info["ID"] == s1 and info["TTL"] == "20s", info
assert info["LockDelay"] == 1_000_000_000, info
node = info["Node"]
_, on_node = c.session.node(node)
assert {s["ID"] for s in on_node} >= {s1, s2}, on_node
_, everything = c.session.list()
assert {s["ID"] for s in everything} >= {s1, s2}, everything
assert c.session.renew(s1)["ID"] == s1

# Locks: one holder, the holder re-acquires, release frees.
assert c.kv.put("py/lock", "a", acquire=s1) is True
assert c.kv.put("py/lock", "b", acquire=s2) is False
_, item = c.kv.get("py/lock")
assert item["Session"] == s1 and item["LockIndex"] == 1 and item["Value"] == b"a", item
assert c.kv.put("py/lock", "c", release=s1) is True
_, item = c.kv.get("py/lock")
assert "Session" not in item, item
# Behavior delete: destroying the holder deletes the key.
assert c.kv.put("py/ephemeral", "x", acquire=s2) is True
assert c.session.destroy(s2) is True
_, gone = c.kv.get("py/ephemeral")
assert gone is None, gone
_, none = c.session.info(s2)
assert none is None, none

# Transactions: all or nothing.
b64 = lambda s: base64.b64encode(s.encode()).decode()
r = c.txn.put([
    {"KV": {"Verb": "set", "Key": "py/t/a", "Value": b64("1")}},
    {"KV": {"Verb": "set", "Key": "py/t/b", "Value": b64("2")}},
    {"KV": {"Verb": "get", "Key": "py/lock"}},
])
assert len(r["Results"]) == 3 and r["Errors"] is None, r
assert r["Results"][0]["KV"]["ModifyIndex"] == r["Results"][1]["KV"]["ModifyIndex"], r
try:
    c.txn.put([
        {"KV": {"Verb": "set", "Key": "py/t/c", "Value": b64("3")}},
        {"KV": {"Verb": "check-not-exists", "Key": "py/t/a"}},
    ])
    raise AssertionError("a failed check must not commit")
except consul.ConsulException as e:
    assert "409" in str(e) or "check" in str(e).lower() or "exists" in str(e), e
_, missing = c.kv.get("py/t/c")
assert missing is None, missing
# Catalog operations in the same transaction as a key, and the lock verbs.
r = c.txn.put([
    {"Node": {"Verb": "set", "Node": {"Node": "py-txn", "Address": "192.0.2.40"}}},
    {"Service": {"Verb": "set", "Node": "py-txn", "Service": {"ID": "py-txn-1", "Service": "py-txn", "Port": 7}}},
    {"KV": {"Verb": "lock", "Key": "py/t/owner", "Value": b64("py-txn-1"), "Session": s1}},
])
assert r["Results"][0]["Node"]["Node"] == "py-txn" and r["Results"][1]["Service"]["Port"] == 7, r
_, rows = c.catalog.service("py-txn")
assert [x["ServiceID"] for x in rows] == ["py-txn-1"], rows
_, owner = c.kv.get("py/t/owner")
assert owner["Session"] == s1, owner
c.txn.put([{"Node": {"Verb": "delete", "Node": {"Node": "py-txn"}}}])
_, rows = c.catalog.service("py-txn")
assert rows == [], rows

# A 404 still carries the index (py-consul reads X-Consul-Index from it).
index, nothing = c.kv.get("py/no-such-key")
assert nothing is None and int(index) > 0, index
c.session.destroy(s1)

# User events, watchable by index; node reads.
fired = c.event.fire("py-deploy", "v2", service="web")
assert fired["Name"] == "py-deploy" and fired["ServiceFilter"] == "web", fired
index, events = c.event.list(name="py-deploy")
assert [e["ID"] for e in events] == [fired["ID"]] and events[0]["Payload"] == b"v2", events
_, node_info = c.catalog.node(node)
assert node_info is None or node_info["Node"]["Node"] == node, node_info
_, checks = c.health.node(node)
assert isinstance(checks, list), checks
print("py-consul sessions locks txn OK")
"#;

const JS: &str = r#"
const assert = require('assert');
const Consul = require(process.argv[1]);
const port = Number(process.argv[2]);
const consul = new Consul({ host: '127.0.0.1', port });
const b64 = (s) => Buffer.from(s).toString('base64');
(async () => {
  const s1 = (await consul.session.create({ name: 'js-leader', ttl: '15s', lockdelay: '1s' })).ID;
  const s2 = (await consul.session.create({ name: 'js-other', behavior: 'delete' })).ID;
  const info = await consul.session.info(s1);
  assert.strictEqual(info.ID, s1);
  assert.strictEqual(info.TTL, '15s');
  const onNode = await consul.session.node(info.Node);
  assert(onNode.some((s) => s.ID === s2));
  assert((await consul.session.list()).length >= 2);
  const renewed = await consul.session.renew(s1);
  assert.strictEqual(renewed[0].ID, s1);

  assert.strictEqual(await consul.kv.set({ key: 'js/lock', value: 'a', acquire: s1 }), true);
  // The library turns a `false` body into undefined.
  assert(!(await consul.kv.set({ key: 'js/lock', value: 'b', acquire: s2 })));
  const held = await consul.kv.get('js/lock');
  assert.strictEqual(held.Session, s1);
  assert.strictEqual(held.LockIndex, 1);
  assert.strictEqual(held.Value, 'a');
  assert.strictEqual(await consul.kv.set({ key: 'js/lock', value: 'c', release: s1 }), true);
  assert.strictEqual((await consul.kv.get('js/lock')).Session, undefined);

  const done = await consul.transaction.create([
    { KV: { Verb: 'set', Key: 'js/t/a', Value: b64('1') } },
    { KV: { Verb: 'cas', Key: 'js/t/b', Value: b64('2'), Index: 0 } },
  ]);
  assert.strictEqual(done.Results.length, 2);
  let refused = null;
  try {
    await consul.transaction.create([
      { KV: { Verb: 'set', Key: 'js/t/c', Value: b64('3') } },
      { KV: { Verb: 'cas', Key: 'js/t/b', Value: b64('x'), Index: 0 } },
    ]);
  } catch (e) {
    refused = e;
  }
  assert(refused, 'a stale cas must fail the transaction');
  assert.strictEqual(refused.message, 'conflict');
  assert.strictEqual(await consul.kv.get('js/t/c'), undefined);

  // Query meta on a 404 and on a read.
  const res = await fetch(`http://127.0.0.1:${port}/v1/kv/js/no-such-key`);
  assert.strictEqual(res.status, 404);
  assert(Number(res.headers.get('x-consul-index')) > 0);
  assert.strictEqual(res.headers.get('x-consul-knownleader'), 'true');
  assert.strictEqual(res.headers.get('x-consul-lastcontact'), '0');

  await consul.session.destroy(s1);
  await consul.session.destroy(s2);

  const fired = await consul.event.fire({ name: 'js-deploy', payload: 'v3' });
  assert.strictEqual(fired.Name, 'js-deploy');
  const events = await consul.event.list({ name: 'js-deploy' });
  assert.deepStrictEqual(events.map((e) => e.ID), [fired.ID]);
  assert.strictEqual(events[0].Payload, 'v3');
  assert.deepStrictEqual(await consul.catalog.datacenters(), ['dc1']);
  console.log('npm consul sessions locks txn OK');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
"#;

/// Catalog writes for an external node, agent checks, maintenance mode and members.
const PY_WRITES: &str = r#"
import sys, consul
host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)
me = c.agent.self()["Config"]["NodeName"]

# Catalog register/deregister of an external node (py-consul sends lower-case keys).
service = {"Service": "py-redis", "ID": "py-redis-1", "Tags": ["primary"], "Port": 6379}
check = {"CheckID": "py-redis-alive", "Name": "redis alive", "Status": "passing",
         "ServiceID": "py-redis-1"}
assert c.catalog.register("py-ext", "192.0.2.20", service=service, check=check) is True
_, rows = c.catalog.service("py-redis")
assert [(r["Node"], r["Address"], r["ServicePort"]) for r in rows] == [("py-ext", "192.0.2.20", 6379)], rows
_, healthy = c.health.service("py-redis", passing=True)
assert len(healthy) == 1, healthy
try:
    c.catalog.register("py-ext", "192.0.2.20", service={"Port": 1})
    raise AssertionError("a service without a name must be refused")
except consul.ConsulException as e:
    assert "Service.Service" in str(e), e

# Filters, node meta and near, through the library's own parameters.
service2 = {"Service": "py-redis", "ID": "py-redis-2", "Tags": ["replica"], "Port": 6380}
# (py-consul's register passes node_meta as a query parameter, which Consul ignores: the
# node's meta goes in the body, as other clients send it.)
import json, urllib.request
body = {"Node": "py-ext2", "Address": "192.0.2.21", "NodeMeta": {"rack": "r2"}, "Service": service2}
put = urllib.request.Request(f"http://{host}:{port}/v1/catalog/register", method="PUT",
                             data=json.dumps(body).encode())
assert urllib.request.urlopen(put).read().strip() == b"true"
_, rows = c.catalog.service("py-redis", filter_expr='ServiceTags contains "replica"')
assert [r["ServiceID"] for r in rows] == ["py-redis-2"], rows
_, rows = c.catalog.service("py-redis", node_meta={"rack": "r2"})
assert [r["Node"] for r in rows] == ["py-ext2"] and rows[0]["NodeMeta"] == {"rack": "r2"}, rows
_, entries = c.health.service("py-redis", filter_expr='Service.Port == 6379')
assert [e["Service"]["ID"] for e in entries] == ["py-redis-1"], entries
_, nodes = c.catalog.nodes(filter_expr='Meta.rack == r2')
assert [n["Node"] for n in nodes] == ["py-ext2"], nodes
_, rows = c.catalog.service("py-redis", near="_agent")
assert [r["Node"] for r in rows] == ["py-ext", "py-ext2"], rows
try:
    c.catalog.service("py-redis", filter_expr="ServiceTags contains")
    raise AssertionError("a bad filter must be refused")
except consul.ConsulException as e:
    assert "column 21" in str(e), e

# Prepared queries: create, list, get, execute by name and by ID, explain, delete.
q = c.query.create("py-redis", name="py-redis-q", onlypassing=True, ttl="10s")
qid = q["ID"]
assert qid in {x["ID"] for x in c.query.list()}
assert c.query.get(qid)[0]["Name"] == "py-redis-q"
run = c.query.execute("py-redis-q")
# (py-redis-2 has no checks: passing, as in Consul; the order is shuffled.)
assert run["Service"] == "py-redis" and sorted(n["Service"]["ID"] for n in run["Nodes"]) == ["py-redis-1", "py-redis-2"], run
assert c.query.execute(qid)["Service"] == "py-redis"
assert c.query.explain("py-redis-q")["Query"]["ID"] == qid
assert c.query.delete(qid) is True
try:
    gone = c.query.execute("py-redis-q")
except consul.NotFound:
    gone = None
assert gone is None, gone
assert c.catalog.deregister("py-ext2") is True
assert c.catalog.deregister("py-ext", service_id="py-redis-1") is True
_, rows = c.catalog.service("py-redis")
assert rows == [], rows

# Members: this agent's node and the external one.
members = {m["Name"]: m for m in c.agent.members()}
assert members[me]["Status"] == 1 and members[me]["Port"] == 8301, members
assert "py-ext" in members, members
assert c.catalog.deregister("py-ext") is True
assert "py-ext" not in {m["Name"] for m in c.agent.members()}

# Agent checks: a node TTL check, passed, then deregistered.
assert c.agent.check.register("py-mem", check=consul.Check.ttl("30s"), notes="memory") is True
assert c.agent.check.ttl_pass("py-mem") is True
checks = c.agent.checks()
assert checks["py-mem"]["Status"] == "passing" and checks["py-mem"]["Notes"] == "memory", checks
assert c.agent.check.deregister("py-mem") is True
assert "py-mem" not in c.agent.checks()

# Maintenance: a service's and the node's critical check, with the reason as notes.
c.agent.service.register("py-web", service_id="py-web-1", port=8080)
assert c.agent.service.maintenance("py-web-1", True, reason="py deploy") is True
maint = c.agent.checks()["_service_maintenance:py-web-1"]
assert maint["Status"] == "critical" and maint["Notes"] == "py deploy", maint
assert c.agent.service.maintenance("py-web-1", False) is True
assert "_service_maintenance:py-web-1" not in c.agent.checks()
assert c.agent.maintenance(True) is True
_, node_checks = c.health.node(me)
node_maint = [x for x in node_checks if x["CheckID"] == "_node_maintenance"]
assert len(node_maint) == 1 and node_maint[0]["Status"] == "critical", node_checks
assert "no reason was provided" in node_maint[0]["Notes"], node_maint
assert c.agent.maintenance(False) is True
assert "_node_maintenance" not in c.agent.checks()
c.agent.service.deregister("py-web-1")
print("py-consul catalog writes checks maintenance members OK")
"#;

const JS_WRITES: &str = r#"
const assert = require('assert');
const Consul = require(process.argv[1]);
const port = Number(process.argv[2]);
const consul = new Consul({ host: '127.0.0.1', port });
(async () => {
  const me = (await consul.agent.self()).Config.NodeName;

  await consul.catalog.register({
    node: 'js-ext', address: '192.0.2.30',
    service: { service: 'js-db', id: 'js-db-1', port: 5432, tags: ['replica'] },
    check: { checkid: 'js-db-alive', name: 'db alive', status: 'warning', serviceid: 'js-db-1' },
  });
  const rows = await consul.catalog.service.nodes('js-db');
  assert.deepStrictEqual(rows.map((r) => [r.Node, r.ServiceID, r.ServicePort]), [['js-ext', 'js-db-1', 5432]]);
  const health = await consul.health.node('js-ext');
  assert.strictEqual(health.find((c) => c.CheckID === 'js-db-alive').Status, 'warning');
  let refused = null;
  try {
    await consul.catalog.register({ node: 'js-ext', address: '192.0.2.30', check: { name: 'x', status: 'fine' } });
  } catch (e) {
    refused = e;
  }
  assert(refused, 'a bad check status must be refused');
  assert.strictEqual(refused.statusCode, 400);
  assert(String(refused.message).includes('Check.Status') || JSON.stringify(refused.response?.body ?? '').includes('Check.Status'), refused);

  // Filters and prepared queries through the library's own options.
  const filtered = await consul.catalog.service.nodes({ service: 'js-db', filter: 'ServiceTags contains "replica"' });
  assert.deepStrictEqual(filtered.map((r) => r.ServiceID), ['js-db-1']);
  const none = await consul.health.service({ service: 'js-db', filter: 'Service.Port != 5432' });
  assert.deepStrictEqual(none, []);
  let badFilter = null;
  try {
    await consul.health.service({ service: 'js-db', filter: 'Service.Port ==' });
  } catch (e) {
    badFilter = e;
  }
  assert(badFilter && badFilter.statusCode === 400, badFilter);
  const query = await consul.query.create({ name: 'js-db-q', service: { service: 'js-db', onlypassing: false } });
  const ran = await consul.query.execute(query.ID);
  assert.strictEqual(ran.Service, 'js-db');
  assert.deepStrictEqual(ran.Nodes.map((n) => n.Service.ID), ['js-db-1']);
  assert.strictEqual((await consul.query.list()).filter((q) => q.ID === query.ID).length, 1);
  await consul.query.destroy(query.ID);

  const members = await consul.agent.members();
  const byName = Object.fromEntries(members.map((m) => [m.Name, m]));
  assert.strictEqual(byName[me].Status, 1);
  assert.strictEqual(byName['js-ext'].Tags.role, 'node');
  await consul.catalog.deregister({ node: 'js-ext', checkid: 'js-db-alive' });
  assert.strictEqual((await consul.health.node('js-ext')).length, 0);
  await consul.catalog.deregister('js-ext');
  // The library turns a `null` body into undefined.
  assert.strictEqual((await consul.catalog.node.services('js-ext')) ?? null, null);

  await consul.agent.check.register({ name: 'js-disk', id: 'js-disk', ttl: '30s', notes: 'disk' });
  await consul.agent.check.fail('js-disk');
  const checks = await consul.agent.check.list();
  assert.strictEqual(checks['js-disk'].Status, 'critical');
  assert.strictEqual(checks['js-disk'].Notes, 'disk');
  await consul.agent.check.deregister('js-disk');
  assert.strictEqual((await consul.agent.check.list())['js-disk'], undefined);

  await consul.agent.service.register({ name: 'js-web', id: 'js-web-1', port: 8081 });
  await consul.agent.service.maintenance({ id: 'js-web-1', enable: true, reason: 'js deploy' });
  const maint = (await consul.agent.check.list())['_service_maintenance:js-web-1'];
  assert.strictEqual(maint.Status, 'critical');
  assert.strictEqual(maint.Notes, 'js deploy');
  const passing = await consul.health.service({ service: 'js-web', passing: true });
  assert.strictEqual(passing.length, 0, 'an instance in maintenance is not passing');
  await consul.agent.service.maintenance({ id: 'js-web-1', enable: false });
  await consul.agent.maintenance({ enable: true, reason: 'js node work' });
  assert.strictEqual((await consul.agent.check.list())._node_maintenance.Notes, 'js node work');
  await consul.agent.maintenance(false);
  const after = await consul.agent.check.list();
  assert.strictEqual(after._node_maintenance, undefined);
  assert.strictEqual(after['_service_maintenance:js-web-1'], undefined);
  await consul.agent.service.deregister('js-web-1');
  console.log('npm consul catalog writes checks maintenance members OK');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
"#;

fn npm_consul() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/npm-consul/node_modules/consul")
}

async fn run(program: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed\nstdout: {stdout}\nstderr: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn py_consul_drives_sessions_locks_transactions_and_headers() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let dev = dev(&[]).await;
    let port = dev.http.port().to_string();
    let out = run(&python, &["-c", PY, "127.0.0.1", &port]).await;
    assert!(out.contains("py-consul sessions locks txn OK"), "{out}");
}

#[tokio::test]
async fn npm_consul_drives_sessions_locks_transactions_and_headers() {
    let library = npm_consul();
    assert!(
        library.join("package.json").exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        library.display()
    );
    let dev = dev(&[]).await;
    let port = dev.http.port().to_string();
    let node = PathBuf::from("node");
    let out = run(&node, &["-e", JS, library.to_str().unwrap(), &port]).await;
    assert!(out.contains("npm consul sessions locks txn OK"), "{out}");
}

#[tokio::test]
async fn py_consul_drives_catalog_writes_checks_maintenance_and_members() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let dev = dev(&[]).await;
    let port = dev.http.port().to_string();
    let out = run(&python, &["-c", PY_WRITES, "127.0.0.1", &port]).await;
    assert!(
        out.contains("py-consul catalog writes checks maintenance members OK"),
        "{out}"
    );
}

#[tokio::test]
async fn npm_consul_drives_catalog_writes_checks_maintenance_and_members() {
    let library = npm_consul();
    assert!(
        library.join("package.json").exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        library.display()
    );
    let dev = dev(&[]).await;
    let port = dev.http.port().to_string();
    let node = PathBuf::from("node");
    let out = run(&node, &["-e", JS_WRITES, library.to_str().unwrap(), &port]).await;
    assert!(
        out.contains("npm consul catalog writes checks maintenance members OK"),
        "{out}"
    );
}

#[tokio::test]
async fn plexus_event_fires_a_user_event_the_list_shows() {
    let dev = dev(&[]).await;
    let addr = format!("127.0.0.1:{}", dev.http.port());
    let out = tokio::process::Command::new(crate::bin())
        .args([
            "event",
            "--http-addr",
            &addr,
            "--service",
            "web",
            "deploy",
            "v9",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout.trim().strip_prefix("Event ID: ").unwrap().to_owned();
    let events: serde_json::Value =
        reqwest::get(format!("http://{addr}/v1/event/list?name=deploy"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(events[0]["ID"], id.as_str());
    assert_eq!(events[0]["ServiceFilter"], "web");
    // Bad input: the server's refusal, named.
    let out = tokio::process::Command::new(crate::bin())
        .args(["event", "--http-addr", &addr, "--tag", "v1", "deploy"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tag filter without service filter"),
        "{stderr}"
    );
}
