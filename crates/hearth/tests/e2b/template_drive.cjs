// Builds a template on a real `hearth server` with the stock e2b JS SDK's
// `Template()` builder, configured only by E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY; then starts a sandbox from it and reaches its app through
// the proxy. The JS twin of template_drive.py's main phase.
//
// usage: NODE_PATH=<dir>/node_modules node template_drive.cjs CONTEXT_DIR
// Prints `figure name=value` lines and ends with `all checks passed`.

const crypto = require('node:crypto')
const fs = require('node:fs')
const http = require('node:http')
const path = require('node:path')
const { BuildError, Sandbox, Template, waitForPort } = require('e2b')

const API = process.env.E2B_API_URL
const KEY = process.env.E2B_API_KEY
const APP = 'sdk-js-app'
const FAILING = 'sdk-js-fail'
const GREETING = `hello from a template built by the e2b JS SDK (${crypto.randomBytes(8).toString('hex')})\n`

function check(name, cond, detail = '') {
  if (!cond) {
    console.log(`FAILED: ${name} ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`)
    process.exit(1)
  }
  console.log(`ok: ${name}`)
}

/** A raw request to the server; resolves to {status, body}. */
function request(method, urlPath, { headers = {}, body } = {}) {
  const url = new URL(urlPath, API)
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }))
    })
    req.on('error', reject)
    if (body !== undefined) req.write(body)
    req.end()
  })
}

const api = (method, urlPath, body) =>
  request(method, urlPath, {
    headers: { 'X-API-Key': KEY, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })

function appTemplate(context) {
  return Template({ fileContextPath: context })
    .fromTemplate('base')
    .copy('app.py', '/home/user/app.py')
    .runCmd('echo built > /home/user/marker')
    .setStartCmd('python3 /home/user/app.py', waitForPort(8000))
}

async function build(template, name) {
  const messages = []
  const started = performance.now()
  const info = await Template.build(template, name, {
    onBuildLogs: (entry) => messages.push(String(entry.message)),
  })
  return { info, secs: (performance.now() - started) / 1000, messages }
}

async function main(context) {
  fs.writeFileSync(
    path.join(context, 'app.py'),
    [
      'import http.server',
      'class H(http.server.BaseHTTPRequestHandler):',
      '    def do_GET(self):',
      `        body = ${JSON.stringify(GREETING)}.encode()`,
      '        self.send_response(200)',
      "        self.send_header('Content-Length', str(len(body)))",
      '        self.end_headers()',
      '        self.wfile.write(body)',
      "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H).serve_forever()",
      '',
    ].join('\n'),
  )

  let { info, secs, messages } = await build(appTemplate(context), APP)
  console.log(`figure sdk_js_build_s=${secs.toFixed(1)}`)
  check('the build is named after the template', info.templateId === APP, info)
  check('the file was uploaded', messages.some((m) => m.includes("Uploaded 'app.py'")), messages)
  check('the log shows the builder\'s steps', messages.some((m) => m.startsWith('step 2/2 RUN echo built')), messages)
  check('Template.exists sees it', await Template.exists(APP))

  const started = performance.now()
  const sbx = await Sandbox.create(APP)
  const res = await request('GET', '/', { headers: { Host: sbx.getHost(8000) } })
  console.log(`figure sdk_js_template_create_and_first_request_ms=${(performance.now() - started).toFixed(0)}`)
  check('the app answers through the proxy', res.status === 200 && res.body === GREETING, res)
  const marker = await sbx.commands.run('cat /home/user/marker')
  check('the RUN step\'s file is there', marker.stdout === 'built\n', marker.stdout)

  ;({ secs, messages } = await build(appTemplate(context), APP))
  console.log(`figure sdk_js_rebuild_unchanged_s=${secs.toFixed(1)}`)
  check('the rebuild skips the upload', messages.some((m) => m.includes('already cached')), messages)
  check('the rebuild takes every step from the cache', messages.some((m) => m.includes('2 of 2 steps cached')), messages)

  const tags = await Template.getTags(APP)
  check('the current build holds the default tag', tags.some((t) => t.tag === 'default'), tags)

  const failing = Template({ fileContextPath: context }).fromTemplate('base').runCmd('echo doomed; exit 3')
  try {
    await Template.build(failing, FAILING)
    check('a failing RUN fails the build', false)
  } catch (e) {
    check('a failing RUN raises BuildError', e instanceof BuildError, String(e))
    const message = String(e.message)
    check(
      'a failing RUN names its step and status',
      message.includes('step 1') && message.includes('status 3') && message.includes('doomed'),
      message,
    )
  }

  await sbx.kill()
  for (const name of [APP, FAILING]) {
    const deleted = await api('DELETE', `/templates/${name}`)
    check(`${name} is deleted`, deleted.status === 204, deleted)
  }
  check('Template.exists no longer sees it', !(await Template.exists(APP)))
  console.log('all checks passed')
}

main(process.argv[2]).catch((e) => {
  console.log(`FAILED: ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
