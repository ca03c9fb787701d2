// Drives one running sandbox's agent with the stock e2b JS SDK, at the URL
// given as the first argument: what envd 0.6.2 to 0.6.4 added, answered as
// envd answers it (file metadata, makeDir of an existing directory, the
// events of a written file on a watch with entries). The envd version the
// agent claims is in HEARTH_ENVD_VERSION.
//
// usage: NODE_PATH=<dir>/node_modules HEARTH_ENVD_VERSION=x.y.z node agent_drive.cjs URL
// Ends with `all checks passed`.

const { Sandbox } = require('e2b')

function check(name, cond, detail = '') {
  if (!cond) {
    console.log(`FAILED: ${name} ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`)
    process.exit(1)
  }
  console.log(`ok js ${name}`)
}

// Equal as JSON, whatever the order of object keys (metadata is a map).
const canonical = (v) =>
  Array.isArray(v)
    ? v.map(canonical)
    : v && typeof v === 'object'
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]))
      : v
const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))

async function metadata(sbx, d) {
  const path = `${d}/meta.txt`
  const tags = { author: 'ann', purpose: 'js test' }
  const w = await sbx.files.write(path, 'meta', { metadata: { Author: 'ann', purpose: 'js test' } })
  check('write with metadata (keys lowercased)', same(w.metadata, tags) && w.path === path, w)
  const info = await sbx.files.getInfo(path)
  check('getInfo metadata', same(info.metadata, tags), info)
  const listed = (await sbx.files.list(d)).map((e) => [e.name, e.metadata])
  check('list metadata', same(listed, [['meta.txt', tags]]), listed)
  const moved = await sbx.files.rename(path, `${d}/moved.txt`)
  check('rename keeps metadata', same(moved.metadata, tags), moved)
  const octets = await sbx.files.write(`${d}/moved.txt`, 'raw', { metadata: { k: 'v' }, useOctetStream: true })
  check('octet-stream upload replaces metadata', same(octets.metadata, { k: 'v' }), octets)
  const again = await sbx.files.write(`${d}/moved.txt`, 'again')
  const after = await sbx.files.getInfo(`${d}/moved.txt`)
  check('overwrite clears metadata', again.metadata === undefined && after.metadata === undefined, [again, after])
}

async function makeDir(sbx, d) {
  check('makeDir new is true', (await sbx.files.makeDir(`${d}/w`)) === true)
  check('makeDir existing is false', (await sbx.files.makeDir(`${d}/w`)) === false)
}

async function watch(sbx, d) {
  const events = []
  const waiting = []
  /** Resolves once an event `[name, type]` has come, or after 10 s. */
  const arrival = (name, type) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, 10000)
      waiting.push([name, type, () => (clearTimeout(timer), resolve())])
    })
  const handle = await sbx.files.watchDir(
    `${d}/w`,
    (e) => {
      events.push(e)
      for (const [name, type, resolve] of waiting) if (e.name === name && e.type === type) resolve()
    },
    { includeEntry: true, allowNetworkMounts: true }
  )
  const written = arrival('new.txt', 'write')
  await sbx.files.write(`${d}/w/new.txt`, 'x')
  // Entries are read when the agent sees an event: remove the file only
  // once its events are in.
  await written
  const ended = arrival('end', 'create')
  await sbx.files.remove(`${d}/w/new.txt`)
  await sbx.files.makeDir(`${d}/w/end`)
  await ended
  await handle.stop()
  const seen = events.map((e) => [e.name, e.type])
  const want = [
    ['new.txt', 'create'],
    ['new.txt', 'chmod'],
    ['new.txt', 'write'],
    ['new.txt', 'remove'],
    ['end', 'create'],
  ]
  check("a written file makes envd's events", same(seen, want), seen)
  const entries = events.map((e) => (e.entry ? e.entry.name : null))
  check('events carry entries, but a remove', same(entries, ['new.txt', 'new.txt', 'new.txt', null, 'end']), entries)
}

async function main(url) {
  const sbx = new Sandbox({
    sandboxId: 'hearth-test',
    envdVersion: process.env.HEARTH_ENVD_VERSION,
    sandboxUrl: url,
    apiKey: 'e2b_hearth_test',
  })
  const d = (await sbx.commands.run('mktemp -d -p "$HOME"')).stdout.trim()
  for (const part of [metadata, makeDir, watch]) await part(sbx, d)
  await sbx.files.remove(d)
  console.log('all checks passed')
}

main(process.argv[2]).catch((e) => {
  console.log(`FAILED: ${e.stack || e}`)
  process.exit(1)
})
