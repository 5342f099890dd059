import parsePrometheus from 'parse-prometheus-text-format'
import { api } from './helpers'

export const SCRAPE = 'test-scrape-token-0123456789'

export interface PromFamily {
  name: string
  type: string
  metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }[]
}

/** The service's Prometheus answer, read by an independent parser. */
export async function scrape(token = SCRAPE): Promise<PromFamily[]> {
  const res = await api('/api/admin/metrics', { token })
  if (res.status !== 200) throw new Error(`metrics: ${res.status} ${await res.text()}`)
  return parsePrometheus(await res.text()) as PromFamily[]
}

export function value(families: PromFamily[], name: string, labels: Record<string, string> = {}): number {
  const f = families.find((x) => x.name === `echovalley_${name}`)
  const m = f?.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v))
  return Number(m?.value ?? 0)
}

export function histogram(families: PromFamily[]) {
  const m = families.find((x) => x.name === 'echovalley_send_ack_ms')!.metrics[0]!
  return { count: Number(m.count), sum: Number(m.sum), buckets: Object.fromEntries(Object.entries(m.buckets ?? {}).map(([k, v]) => [k, Number(v)])) }
}
