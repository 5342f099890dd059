/** A press this long on a touch screen opens a menu, as in every messenger. */
export const LONG_PRESS_MS = 450
const SLOP_PX = 10

/**
 * `use:longPress={open}`: calls `open` when a finger rests on the element. iOS Safari fires no
 * contextmenu for it, so it is timed from pointer events; the click that ends the press is eaten,
 * so the menu opens without also opening what was pressed.
 */
export function longPress(node: HTMLElement, onpress: () => void) {
  let press: { x: number; y: number; timer: ReturnType<typeof setTimeout> } | null = null
  let fired = false
  const cancel = () => {
    if (press) clearTimeout(press.timer)
    press = null
  }
  const down = (e: PointerEvent) => {
    if (e.pointerType !== 'touch') return
    cancel()
    fired = false
    press = {
      x: e.clientX,
      y: e.clientY,
      timer: setTimeout(() => {
        fired = true
        press = null
        onpress()
      }, LONG_PRESS_MS),
    }
  }
  const move = (e: PointerEvent) => {
    if (press && Math.hypot(e.clientX - press.x, e.clientY - press.y) > SLOP_PX) cancel()
  }
  const click = (e: MouseEvent) => {
    if (!fired) return
    fired = false
    e.preventDefault()
    e.stopPropagation()
  }
  node.addEventListener('pointerdown', down)
  node.addEventListener('pointermove', move)
  node.addEventListener('pointerup', cancel)
  node.addEventListener('pointercancel', cancel)
  node.addEventListener('click', click, true)
  return {
    update(next: () => void) {
      onpress = next
    },
    destroy() {
      cancel()
      node.removeEventListener('pointerdown', down)
      node.removeEventListener('pointermove', move)
      node.removeEventListener('pointerup', cancel)
      node.removeEventListener('pointercancel', cancel)
      node.removeEventListener('click', click, true)
    },
  }
}
