// What the current e2b JS SDK does beyond the core calls, against a real
// `hearth server` (configured only by E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY): timeout policies with and without memory, auto-resume by
// traffic, filesystem-only pauses, signed file URLs, a sandbox killed under
// a streaming command, and forks with per-copy results.
//
// usage: NODE_PATH=<dir>/node_modules node current_drive.cjs
// Ends with `all checks passed`.

const { Sandbox } = require('e2b')

const API = process.env.E2B_API_URL
const KEY = process.env.E2B_API_KEY

function check(name, cond, detail = '') {
  if (!cond) {
    console.log(`FAILED: ${name} ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`)
    process.exit(1)
  }
  console.log(`ok: ${name}`)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function stateOf(id) {
  const r = await fetch(`${API}/sandboxes/${id}`, { headers: { 'X-API-Key': KEY } })
  return r.status === 200 ? (await r.json()).state : `status ${r.status}`
}

async function waitState(id, want) {
  for (let i = 0; i < 240; i++) {
    if ((await stateOf(id)) === want) return true
    await sleep(250)
  }
  return false
}

async function alive(sbx, pid) {
  const r = await sbx.commands.run(`kill -0 ${pid} && echo alive || echo gone`)
  return r.stdout.trim()
}

async function lifecycles() {
  // Auto-pause with memory, then auto-resume by the next request.
  const woken = await Sandbox.create({ timeoutMs: 120_000, lifecycle: { onTimeout: 'pause', autoResume: true } })
  const info = await woken.getInfo()
  check('js: getInfo lifecycle', info.lifecycle?.onTimeout === 'pause' && info.lifecycle?.autoResume === true, info.lifecycle)
  const pid = (await woken.commands.run('sleep 600', { background: true })).pid
  await woken.setTimeout(1_000)
  check('js: paused at its timeout', await waitState(woken.sandboxId, 'paused'))
  check('js: a request wakes it and is answered by its processes', (await alive(woken, pid)) === 'alive')
  await woken.kill()

  // Auto-pause of the disk only: a resume boots it again.
  const cold = await Sandbox.create({
    timeoutMs: 120_000,
    lifecycle: { onTimeout: { action: 'pause', keepMemory: false } },
  })
  await cold.files.write('/home/user/kept.txt', 'js kept')
  const coldPid = (await cold.commands.run('sleep 600', { background: true })).pid
  await cold.setTimeout(1_000)
  check('js: keepMemory false: paused at its timeout', await waitState(cold.sandboxId, 'paused'))
  const booted = await Sandbox.connect(cold.sandboxId, { timeoutMs: 60_000 })
  check('js: files kept across a filesystem-only pause', (await booted.files.read('/home/user/kept.txt')) === 'js kept')
  check('js: processes not kept', (await alive(booted, coldPid)) === 'gone')

  // An explicit filesystem-only pause.
  await booted.pause({ keepMemory: false })
  check('js: pause({ keepMemory: false }) pauses', (await stateOf(booted.sandboxId)) === 'paused')
  const again = await Sandbox.connect(booted.sandboxId, { timeoutMs: 60_000 })
  check('js: and connect boots it with its files', (await again.files.read('/home/user/kept.txt')) === 'js kept')
  await again.kill()
}

async function signedUrls() {
  const sbx = await Sandbox.create({ secure: true })
  await sbx.files.write('/home/user/signed.txt', 'js signed')
  const url = await sbx.downloadUrl('/home/user/signed.txt')
  check('js: the download URL names no sandbox', !url.includes(sbx.sandboxId) && url.includes('signature='), url)
  let r = await fetch(url)
  check('js: a signed download URL works with no key or token', r.status === 200 && (await r.text()) === 'js signed', r.status)
  const up = await sbx.uploadUrl('/home/user/up.txt')
  const form = new FormData()
  form.append('file', new Blob(['js uploaded']), 'up.txt')
  r = await fetch(up, { method: 'POST', body: form })
  check('js: a signed upload URL works', r.status === 200, r.status)
  check('js: the upload landed', (await sbx.files.read('/home/user/up.txt')) === 'js uploaded')
  const expiring = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 1 })
  await sleep(2200)
  r = await fetch(expiring)
  check('js: an expired signature → 403', r.status === 403 && (await r.text()).includes('expired'), r.status)
  await sbx.kill()
  r = await fetch(url)
  check("js: a killed sandbox's URL → 403", r.status === 403, r.status)
}

async function killedWhileStreaming() {
  const sbx = await Sandbox.create()
  const handle = await sbx.commands.run('sleep 120', { background: true })
  setTimeout(() => Sandbox.kill(sbx.sandboxId), 1000)
  const started = Date.now()
  try {
    await handle.wait()
    check('js: a kill ends a streaming command', false)
  } catch (e) {
    const elapsed = (Date.now() - started) / 1000
    check("js: a kill ends a streaming command at once with E2B's error",
      elapsed < 10 && String(e.message).includes('killed or reached its end of life'), `${elapsed} ${e}`)
  }
  const t = Date.now()
  const running = await sbx.isRunning()
  check('js: isRunning() of a killed sandbox is false, quickly', running === false && Date.now() - t < 5000, running)
}

async function forks() {
  const sbx = await Sandbox.create()
  await sbx.files.write('/home/user/parent.txt', 'js parent')
  const copies = await sbx.fork({ count: 3 })
  check('js: fork({ count: 3 }) answers per copy', copies.length === 3 && copies.every((c) => c instanceof Sandbox), copies.map(String))
  for (const c of copies) {
    check('js: a copy has the parent\'s file', (await c.files.read('/home/user/parent.txt')) === 'js parent')
    await c.kill()
  }
  await sbx.kill()
}

async function main() {
  await lifecycles()
  await signedUrls()
  await killedWhileStreaming()
  await forks()
  console.log('all checks passed')
}

main().catch((e) => {
  console.log(`FAILED: ${e.stack || e}`)
  process.exit(1)
})
