const en = {
  'app.signIn': 'Sign in to your account',
  'app.createAccount': 'Create an account',
  'auth.handle': 'Handle',
  'auth.displayName': 'Display name',
  'auth.password': 'Password',
  'auth.submitLogin': 'Sign in',
  'auth.submitRegister': 'Create account',
  'auth.toRegister': 'New here? Create an account',
  'auth.toLogin': 'Have an account? Sign in',
  'auth.failed': 'Something went wrong. Try again.',
  'nav.chats': 'Chats',
  'nav.people': 'People',
  'nav.me': 'Me',
  'nav.signOut': 'Sign out',
  'status.online': 'online',
  'status.connecting': 'connecting',
  'status.offline': 'offline',
  'banner.offline': 'You are offline. Messages you write are kept and sent when you are back.',
  'banner.update': 'A new version of echovalley is ready.',
  'banner.reload': 'Reload',
  'banner.install': 'Install echovalley',
  'banner.iosInstall': 'To install: tap Share, then “Add to Home Screen”.',
  'chat.empty': 'Pick a conversation, or start one by handle.',
  'chat.newChat': 'Start a chat: @handle',
  'chat.start': 'Chat',
  'chat.newGroup': '+ New group',
  'chat.message': 'Message',
  'chat.send': 'Send',
  'chat.loadOlder': 'Load older messages',
  'chat.typing': '{names} typing…',
  'chat.members': '{n} members',
  'chat.byDate': 'By date',
  'chat.info': 'Info',
  'chat.back': 'Back to conversations',
  'chat.searchMessages': 'Search messages',
  'chat.noConversations': 'No conversations yet.',
  'chat.jumpToUnread': 'Jump to first unread',
  'chat.newMessages': 'New messages',
  'chat.today': 'Today',
  'chat.you': 'You',
  'chat.shortcuts': 'Shortcuts: Alt+↑/↓ switch chats · Ctrl+K search · / write · Esc close',
  'chat.yesterday': 'Yesterday',
  'msg.recalled': 'This message was recalled',
  'msg.youRecalled': 'You recalled a message',
  'msg.removedByAdmin': 'Removed by an admin',
  'msg.edited': 'edited',
  'msg.edit': 'Edit',
  'msg.recall': 'Recall',
  'msg.copy': 'Copy',
  'msg.copied': 'Copied',
  'msg.reply': 'Reply',
  'msg.react': 'React',
  'msg.replyingTo': 'Replying to {name}',
  'msg.cancelReply': 'Cancel reply',
  'msg.retry': 'Retry',
  'msg.delete': 'Delete',
  'msg.state.pending': 'sending',
  'msg.state.failed': 'not sent',
  'msg.state.sent': 'sent',
  'msg.state.delivered': 'delivered',
  'msg.state.read': 'read',
  'me.language': 'Language',
  'me.notifications': 'Notifications',
  'me.notificationsWhy': 'Get a notification when a message arrives while echovalley is closed. You can turn this off at any time.',
  'me.enableNotifications': 'Turn on notifications',
  'me.disableNotifications': 'Turn off notifications',
  'me.notificationsOn': 'Notifications are on for this device.',
  'me.notificationsDenied': 'Notifications are blocked in your browser settings.',
  'me.notificationsUnsupported': 'This browser cannot show notifications.',
  'me.previews': 'Show sender and text in notifications',
  'me.save': 'Save',
  'me.saved': 'Saved',
} as const

export type MessageKey = keyof typeof en

const zh: Record<MessageKey, string> = {
  'app.signIn': '登录你的账户',
  'app.createAccount': '创建账户',
  'auth.handle': '用户名',
  'auth.displayName': '昵称',
  'auth.password': '密码',
  'auth.submitLogin': '登录',
  'auth.submitRegister': '创建账户',
  'auth.toRegister': '第一次来？创建账户',
  'auth.toLogin': '已有账户？登录',
  'auth.failed': '出了点问题，请重试。',
  'nav.chats': '聊天',
  'nav.people': '联系人',
  'nav.me': '我',
  'nav.signOut': '退出登录',
  'status.online': '在线',
  'status.connecting': '连接中',
  'status.offline': '离线',
  'banner.offline': '你已离线。写下的消息会保存，恢复连接后自动发送。',
  'banner.update': 'echovalley 有新版本可用。',
  'banner.reload': '重新加载',
  'banner.install': '安装 echovalley',
  'banner.iosInstall': '安装方法：点“分享”，再选“添加到主屏幕”。',
  'chat.empty': '选择一个会话，或输入用户名开始聊天。',
  'chat.newChat': '开始聊天：@用户名',
  'chat.start': '聊天',
  'chat.newGroup': '+ 新建群组',
  'chat.message': '消息',
  'chat.send': '发送',
  'chat.loadOlder': '加载更早的消息',
  'chat.typing': '{names} 正在输入…',
  'chat.members': '{n} 位成员',
  'chat.byDate': '按日期',
  'chat.info': '群信息',
  'chat.back': '返回会话列表',
  'chat.searchMessages': '搜索消息',
  'chat.noConversations': '还没有会话。',
  'chat.jumpToUnread': '跳到第一条未读',
  'chat.newMessages': '新消息',
  'chat.today': '今天',
  'chat.you': '你',
  'chat.shortcuts': '快捷键：Alt+↑/↓ 切换会话 · Ctrl+K 搜索 · / 输入 · Esc 关闭',
  'chat.yesterday': '昨天',
  'msg.recalled': '此消息已撤回',
  'msg.youRecalled': '你撤回了一条消息',
  'msg.removedByAdmin': '已被管理员删除',
  'msg.edited': '已编辑',
  'msg.edit': '编辑',
  'msg.recall': '撤回',
  'msg.copy': '复制',
  'msg.copied': '已复制',
  'msg.reply': '回复',
  'msg.react': '表情回应',
  'msg.replyingTo': '回复 {name}',
  'msg.cancelReply': '取消回复',
  'msg.retry': '重试',
  'msg.delete': '删除',
  'msg.state.pending': '发送中',
  'msg.state.failed': '未发送',
  'msg.state.sent': '已发送',
  'msg.state.delivered': '已送达',
  'msg.state.read': '已读',
  'me.language': '语言',
  'me.notifications': '通知',
  'me.notificationsWhy': '在 echovalley 关闭时收到新消息通知。你可以随时关闭。',
  'me.enableNotifications': '开启通知',
  'me.disableNotifications': '关闭通知',
  'me.notificationsOn': '此设备已开启通知。',
  'me.notificationsDenied': '浏览器设置已禁止通知。',
  'me.notificationsUnsupported': '此浏览器无法显示通知。',
  'me.previews': '通知中显示发送者和内容',
  'me.save': '保存',
  'me.saved': '已保存',
}

export type Locale = 'en' | 'zh-CN'
export const LOCALES: { id: Locale; label: string }[] = [
  { id: 'en', label: 'English' },
  { id: 'zh-CN', label: '简体中文' },
]
const dictionaries: Record<Locale, Record<MessageKey, string>> = { en, 'zh-CN': zh }
const STORAGE_KEY = 'echovalley.locale'

function initial(): Locale {
  const saved = localStorage.getItem(STORAGE_KEY)
  if (saved === 'en' || saved === 'zh-CN') return saved
  return navigator.languages.some((l) => l.toLowerCase().startsWith('zh')) ? 'zh-CN' : 'en'
}

class I18n {
  #locale = $state<Locale>(initial())

  get locale() {
    return this.#locale
  }
  set locale(l: Locale) {
    this.#locale = l
    localStorage.setItem(STORAGE_KEY, l)
    document.documentElement.lang = l
  }

  t = (key: MessageKey, params: Record<string, string | number> = {}): string =>
    dictionaries[this.#locale][key].replace(/\{(\w+)\}/g, (_, k: string) => String(params[k] ?? ''))
}

/** The app's language: from the browser at first, then whatever the user picked. */
export const i18n = new I18n()
export const t = i18n.t
document.documentElement.lang = i18n.locale
