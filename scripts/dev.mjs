// `npm run dev`: one command from a fresh clone to the whole product on http://localhost:8787.
import { spawn, spawnSync } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { portIsFree, portOrFree } from './ports.mjs'

const port = process.env.PORT ?? '8787'
// wrangler's local explorer wraps each SQLite Durable Object and writes its name on every wake (a
// commit per wake that production does not have); nothing here uses the explorer.
process.env.X_LOCAL_EXPLORER ??= 'false'

/** Fills every empty key of .dev.vars (created from the example) with a fresh secret. */
function ensureDevVars() {
  if (!existsSync('.dev.vars')) copyFileSync('.dev.vars.example', '.dev.vars')
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' })
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')])
  const fresh = {
    JWT_SECRET: randomBytes(32).toString('base64url'),
    VAPID_PUBLIC_KEY: point.toString('base64url'),
    VAPID_PRIVATE_KEY: jwk.d,
    METRICS_SCRAPE_TOKEN: randomBytes(24).toString('base64url'),
  }
  let text = readFileSync('.dev.vars', 'utf8')
  const filled = []
  for (const [key, value] of Object.entries(fresh)) {
    const line = new RegExp(`^${key}=(.*)$`, 'm')
    const current = text.match(line)
    if (current?.[1]) continue
    text = current ? text.replace(line, `${key}=${value}`) : `${text.trimEnd()}\n${key}=${value}\n`
    filled.push(key)
  }
  if (filled.length) {
    writeFileSync('.dev.vars', text)
    console.log(`.dev.vars: generated ${filled.join(', ')}`)
  }
}
ensureDevVars()

// The app's own port is the address people open: when it is taken, say so rather than move it.
if (!(await portIsFree(port))) {
  console.error(`port ${port} is already in use (another \`npm run dev\`?). Stop that, or choose another port: PORT=8790 npm run dev`)
  process.exit(1)
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', env: { ...process.env, CI: 'true' } })
  if (r.status !== 0) process.exit(r.status ?? 1)
}

// State lives under .wrangler/state, so accounts and chats survive restarts.
run('node', ['scripts/migrate.mjs', '--local'])
run('npx', ['vite', 'build'])

// Speech to text locally: the pocketsphinx service on loopback, when its Debian packages are here.
const haveStt = ['ffmpeg', 'pocketsphinx_continuous'].every((cmd) => spawnSync('which', [cmd]).status === 0)
// The transcriber is internal: when its port is taken, any free one does.
const wantedStt = process.env.TRANSCRIBER_PORT ?? '8788'
const sttPort = haveStt ? String(await portOrFree(wantedStt)) : wantedStt
if (haveStt && sttPort !== wantedStt) console.log(`port ${wantedStt} is in use: the speech-to-text service listens on ${sttPort} instead (TRANSCRIBER_PORT chooses)`)
if (!haveStt) console.log('speech to text is off: apt-get install -y ffmpeg pocketsphinx pocketsphinx-en-us to turn it on')

const children = [
  spawn('npx', ['vite', 'build', '--watch', '--logLevel', 'warn'], { stdio: 'inherit' }),
  spawn('npx', ['wrangler', 'dev', '--port', port, '--ip', '127.0.0.1', ...(haveStt ? ['--var', `TRANSCRIBER_URL:http://127.0.0.1:${sttPort}/`] : [])], { stdio: 'inherit' }),
  ...(haveStt ? [spawn('npx', ['tsx', 'scripts/transcriber.ts', '--port', sttPort], { stdio: 'inherit' })] : []),
]
const stop = () => {
  for (const c of children) c.kill('SIGTERM')
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
for (const c of children) c.on('exit', (code) => code && stop())
