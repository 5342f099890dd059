// Real, decodable pictures for tests (the browser downscales what it attaches, so a header is not enough).
import { execFileSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

/** A PNG of ffmpeg's test pattern at this size, written to a fresh temporary folder; its path. */
export function testPng(width: number, height: number): string {
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'echovalley-png-')), `${width}x${height}.png`)
  execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `testsrc=size=${width}x${height}`, '-frames:v', '1', file])
  return file
}
