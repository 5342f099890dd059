/** Light, dark, or whatever the system says: chosen per device, applied before the first paint. */
export type Theme = 'system' | 'light' | 'dark'
export const THEMES: Theme[] = ['system', 'light', 'dark']
const STORAGE_KEY = 'echovalley.theme'

function read(): Theme {
  const v = localStorage.getItem(STORAGE_KEY)
  return v === 'light' || v === 'dark' ? v : 'system'
}

function apply(theme: Theme) {
  const root = document.documentElement
  if (theme === 'system') delete root.dataset.theme
  else root.dataset.theme = theme
}

class ThemeSetting {
  #theme = $state<Theme>(read())

  constructor() {
    apply(this.#theme)
  }
  get value() {
    return this.#theme
  }
  set value(theme: Theme) {
    this.#theme = theme
    if (theme === 'system') localStorage.removeItem(STORAGE_KEY)
    else localStorage.setItem(STORAGE_KEY, theme)
    apply(theme)
  }
}

export const theme = new ThemeSetting()
