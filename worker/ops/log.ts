const LEVELS = { debug: 0, info: 1, warn: 2, error: 3 } as const
type Level = keyof typeof LEVELS

/** One JSON object per line: `wrangler tail --format json` and Workers Logs filter on its fields. */
export function log(env: { LOG_LEVEL?: string }, level: Level, msg: string, fields: Record<string, unknown> = {}) {
  if (LEVELS[level] < (LEVELS[(env.LOG_LEVEL ?? 'info') as Level] ?? LEVELS.info)) return
  const line = JSON.stringify({ level, msg, ...fields })
  if (level === 'error') console.error(line)
  else if (level === 'warn') console.warn(line)
  else console.log(line)
}
