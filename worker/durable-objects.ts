import type { Env } from './env'

export function getConversationRoom(env: Env, conversationId: string) {
  return env.CONVERSATION.get(env.CONVERSATION.idFromName(conversationId))
}

export function getUserHub(env: Env, userId: string) {
  return env.USER.get(env.USER.idFromName(userId))
}

export function getUploadSession(env: Env, uploadId: string) {
  return env.UPLOAD.get(env.UPLOAD.idFromName(uploadId))
}

/** One voice room per conversation: at most one is live at a time. */
export function getVoiceRoom(env: Env, conversationId: string) {
  return env.VOICE.get(env.VOICE.idFromName(conversationId))
}

/** One per call (by the call's id): its state and its signalling. */
export function getCallRoom(env: Env, callId: string) {
  return env.CALL.get(env.CALL.idFromName(callId))
}

/** One of METRICS_SHARDS objects that sum the metrics of the objects hashed to it. */
export function getMetricsShard(env: Env, shard: number) {
  return env.METRICS_SHARD.get(env.METRICS_SHARD.idFromName(`metrics-${shard}`))
}
