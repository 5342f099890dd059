declare module 'parse-prometheus-text-format' {
  /** Metric families as the parser reads them from the Prometheus text format. */
  export default function parse(text: string): unknown[]
}
