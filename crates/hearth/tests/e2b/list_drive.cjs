// Lists sandboxes on a real `hearth server` with the stock e2b JS SDK:
// oldest or newest first a page at a time, started after a time, of a
// template. Configured only by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY.
//
// usage: NODE_PATH=<dir>/node_modules node list_drive.cjs
// Ends with `all checks passed`.

const { Sandbox } = require('e2b')

function check(name, cond, detail = '') {
  if (!cond) {
    console.log(`FAILED: ${name} ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`)
    process.exit(1)
  }
  console.log(`ok: ${name}`)
}

/** Every id a paginator yields, a page at a time. */
async function all(paginator) {
  const ids = []
  while (paginator.hasNext) {
    for (const s of await paginator.nextItems()) ids.push(s.sandboxId)
  }
  return ids
}

async function main() {
  const metadata = { suite: 'jslist' }
  const first = await Sandbox.create({ metadata })
  const second = await Sandbox.create({ metadata })
  try {
    const query = { metadata }
    const asc = await all(Sandbox.list({ query, order: 'asc', limit: 1 }))
    check('list order asc', JSON.stringify(asc) === JSON.stringify([first.sandboxId, second.sandboxId]), asc)
    const desc = await all(Sandbox.list({ query, order: 'desc', limit: 1 }))
    check('list order desc', JSON.stringify(desc) === JSON.stringify([second.sandboxId, first.sandboxId]), desc)
    const info = await second.getInfo()
    const after = await all(Sandbox.list({ query: { ...query, startedAfter: info.startedAt } }))
    check('list startedAfter', JSON.stringify(after) === JSON.stringify([second.sandboxId]), after)
    const base = await all(Sandbox.list({ query: { ...query, template: 'base' } }))
    check('list template=base', base.length === 2, base)
    const none = await all(Sandbox.list({ query: { ...query, template: 'nope' } }))
    check('list template=nope is empty', none.length === 0, none)
  } finally {
    await first.kill()
    await second.kill()
  }
  console.log('all checks passed')
}

main().catch((e) => {
  console.log(`FAILED: ${e.stack || e}`)
  process.exit(1)
})
