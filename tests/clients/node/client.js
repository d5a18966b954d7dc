// node's `pg` client through the bastion's `-L` forward, run by
// tests/integration/test_clients_postgres.py. Connection settings come from the
// environment (PGHOST, PGPORT, PGUSER, PGDATABASE; no password anywhere); TABLE names a
// table (id int, v text) to write to. Prints one JSON object: what each step returned.
'use strict';
const { Client } = require('pg');

async function main() {
  const client = new Client({ connectionTimeoutMillis: 10000 });
  await client.connect();
  const out = {};
  try {
    // Simple query protocol (no parameters), two statements in one Query.
    const [who] = await client.query('select current_user as u; select current_database() as d');
    out.user = who.rows[0].u;
    // Extended protocol: parameters, and a named (server-side) prepared statement run twice.
    out.sum = (await client.query('select $1::int + $2::int as sum', [2, 3])).rows[0].sum;
    out.shout = [];
    for (const word of ['a', 'bb']) {
      const res = await client.query({ name: 'shout', text: "select $1::text || '!' as s", values: [word] });
      out.shout.push(res.rows[0].s);
    }
    // A transaction rolled back, then one committed.
    const table = process.env.TABLE;
    await client.query('begin');
    await client.query(`insert into ${table} values ($1, $2)`, [10, 'rolled back']);
    await client.query('rollback');
    await client.query('begin');
    await client.query(`insert into ${table} values ($1, $2)`, [11, 'committed']);
    await client.query('commit');
    out.ids = (await client.query(`select id from ${table} order by id`)).rows.map((r) => r.id);
    // A server error, and the connection is still usable after it.
    try {
      await client.query('select 1/0');
    } catch (err) {
      out.error = err.code;
    }
    out.after = (await client.query('select 42 as n')).rows[0].n;
  } finally {
    await client.end();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
