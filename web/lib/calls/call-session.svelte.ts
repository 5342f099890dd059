import { SvelteMap } from 'svelte/reactivity'
import type { CallEndReason, CallInfo, CallSignal, ClientMessage, ServerMessage } from '../../../worker/shared/protocol'
import { api } from '../api'

export type CallPhase = 'idle' | 'outgoing' | 'incoming' | 'connecting' | 'connected' | 'reconnecting' | 'ended'

interface Peer {
  pc: RTCPeerConnection
  userId: string
  /** This side made the offer, so it also restarts ICE. */
  initiator: boolean
  /** Candidates that came before the remote description. */
  early: RTCIceCandidateInit[]
}

export interface CallQuality {
  rttMs: number | null
  lossPct: number | null
  kbps: number | null
}

/**
 * One call at a time on this device: a full mesh of RTCPeerConnections (up to four people), the
 * signalling on the chat socket, media from `getUserMedia` with echo cancellation, noise
 * suppression and gain control, VP8 preferred for video.
 */
export class CallSession {
  phase = $state<CallPhase>('idle')
  call = $state<CallInfo | null>(null)
  endReason = $state<CallEndReason | null>(null)
  error = $state<string | null>(null)
  local = $state<MediaStream | null>(null)
  /** Remote media by the device (session) it comes from. */
  remote = new SvelteMap<string, MediaStream>()
  muted = $state(false)
  cameraOff = $state(false)
  quality = $state<CallQuality>({ rttMs: null, lossPct: null, kbps: null })

  #peers = new Map<string, Peer>()
  #iceServers: RTCIceServer[] = []
  #statsTimer: ReturnType<typeof setInterval> | null = null
  #lastBytes = { at: 0, bytes: 0 }
  #facing: 'user' | 'environment' = 'user'

  constructor(
    private readonly io: { send(m: ClientMessage): boolean; sessionId(): string | null },
    readonly selfId: string,
  ) {}

  get video() {
    return this.call?.video ?? false
  }

  // ---- starting, answering, ending ----

  async start(conversationId: string, video: boolean) {
    if (this.phase !== 'idle' && this.phase !== 'ended') return
    this.#reset()
    const callId = crypto.randomUUID()
    this.phase = 'outgoing'
    this.call = { callId, conversationId, video, callerId: this.selfId, startedAt: Date.now(), answeredAt: null, people: [] }
    if (!(await this.#media(video))) return
    this.io.send({ type: 'call-start', conversationId, callId, video })
  }

  async accept() {
    const call = this.call
    if (this.phase !== 'incoming' || !call) return
    this.phase = 'connecting'
    if (!(await this.#media(call.video))) return
    this.io.send({ type: 'call-accept', callId: call.callId })
  }

  decline() {
    if (this.phase !== 'incoming' || !this.call) return
    this.io.send({ type: 'call-decline', callId: this.call.callId })
    this.#finish('declined')
  }

  hangup() {
    if (!this.call || this.phase === 'idle' || this.phase === 'ended') return
    this.io.send({ type: 'call-hangup', callId: this.call.callId })
    this.#finish('hangup')
  }

  /** Opened from an "incoming call" notification: ring here if the call still rings for us. */
  async resume(callId: string) {
    if (this.phase !== 'idle' && this.phase !== 'ended') return
    const r = await api<{ call: CallInfo }>(`/api/calls/${callId}`).catch(() => null)
    const me = r?.call.people.find((p) => p.userId === this.selfId)
    if (!r || me?.state !== 'ringing') return
    this.#reset()
    this.call = r.call
    this.phase = 'incoming'
  }

  dismiss() {
    if (this.phase === 'ended') this.#reset()
  }

  /** Muted means nothing goes out: the audio sender sends no track (a disabled one still sends silence). */
  toggleMute() {
    this.muted = !this.muted
    const track = this.local?.getAudioTracks()[0] ?? null
    if (track) track.enabled = !this.muted
    for (const { pc } of this.#peers.values()) {
      for (const t of pc.getTransceivers()) if (t.receiver.track.kind === 'audio') void t.sender.replaceTrack(this.muted ? null : track)
    }
    this.#sendMedia()
  }

  toggleCamera() {
    this.cameraOff = !this.cameraOff
    for (const t of this.local?.getVideoTracks() ?? []) t.enabled = !this.cameraOff
    this.#sendMedia()
  }

  /**
   * The next camera (front and back on a phone, any others on a computer): the new track replaces
   * the old one in every connection, with no renegotiation. A camera whose picture cannot be sent
   * (a depth camera, as Chromium's second fake camera is) is skipped for the one after it; when no
   * other camera gives a picture, the current one stays.
   */
  async switchCamera() {
    if (!this.local) return
    const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput')
    const current = this.local.getVideoTracks()[0]?.getSettings().deviceId
    const at = cams.findIndex((c) => c.deviceId === current)
    for (let step = 1; step <= Math.max(1, cams.length - 1); step++) {
      const next = cams[(at + step) % Math.max(1, cams.length)]
      this.#facing = this.#facing === 'user' ? 'environment' : 'user'
      const constraints: MediaTrackConstraints = next && next.deviceId !== current ? { deviceId: { exact: next.deviceId } } : { facingMode: this.#facing }
      const track = (await navigator.mediaDevices.getUserMedia({ video: constraints }).catch(() => null))?.getVideoTracks()[0]
      if (!track) return
      if (!this.local) return track.stop()
      // The new camera goes out first, then the old one is let go (no gap, no renegotiation).
      track.enabled = !this.cameraOff
      await this.#sendVideo(track)
      // A camera turned off sends hardly any frames: nothing to judge it by.
      const flows = this.cameraOff || (await this.#framesFlow())
      // The call may have ended meanwhile: the new camera must not stay on.
      if (!this.local) return track.stop()
      if (!flows) {
        // No picture from it: the current camera goes back out, and the one after is tried.
        await this.#sendVideo(this.local.getVideoTracks()[0] ?? null)
        track.stop()
        continue
      }
      const old = this.local.getVideoTracks()
      this.local.addTrack(track)
      for (const o of old) {
        this.local.removeTrack(o)
        o.stop()
      }
      // The self view follows (a new stream object, so the <video> element picks it up).
      this.local = new MediaStream(this.local.getTracks())
      return
    }
  }

  async #sendVideo(track: MediaStreamTrack | null) {
    for (const { pc } of this.#peers.values()) {
      for (const t of pc.getTransceivers()) if (t.receiver.track.kind === 'video') await t.sender.replaceTrack(track).catch((e: unknown) => (this.error = String(e)))
    }
  }

  /** Video frames encoded for the peers so far; null while nobody is connected (nothing to check). */
  async #videoFramesOut(): Promise<number | null> {
    let frames: number | null = null
    for (const { pc } of this.#peers.values()) {
      if (pc.connectionState !== 'connected') continue
      ;(await pc.getStats()).forEach((r: { type: string; kind?: string; framesEncoded?: number }) => {
        if (r.type === 'outbound-rtp' && r.kind === 'video') frames = (frames ?? 0) + (r.framesEncoded ?? 0)
      })
    }
    return frames
  }

  /** Whether the camera just put in reaches the encoder within two seconds (true when there is no one to check with). */
  async #framesFlow(): Promise<boolean> {
    const before = await this.#videoFramesOut()
    if (before === null) return true
    for (let waited = 0; waited < 2000; waited += 250) {
      await new Promise((r) => setTimeout(r, 250))
      // A couple of frames may still come from the old camera's queue.
      if (((await this.#videoFramesOut()) ?? 0) > before + 2) return true
    }
    return false
  }

  // ---- frames from the server ----

  onFrame(m: Extract<ServerMessage, { type: `call-${string}` }>) {
    switch (m.type) {
      case 'call-ring':
        // Busy here already: the server tells the caller; this device just does not ring.
        if (this.phase !== 'idle' && this.phase !== 'ended') return
        this.#reset()
        this.call = m.call
        this.phase = 'incoming'
        return
      case 'call-update':
        if (!this.call || m.call.callId !== this.call.callId) return
        this.call = m.call
        void this.#connectNew()
        return
      case 'call-ended':
        if (this.call?.callId === m.callId) this.#finish(m.reason)
        return
      case 'call-signal':
        if (this.call?.callId === m.callId) void this.#signal(m.fromUser, m.fromSession, m.data)
        return
    }
  }

  // ---- peers ----

  /**
   * Exactly one side of each pair offers, decided the same way on both: whoever accepted offers to
   * the caller, and between two who accepted, the greater user id offers.
   */
  async #connectNew() {
    const me = this.io.sessionId()
    const call = this.call!
    const mine = call.people.find((p) => p.userId === this.selfId && p.sessionId === me)
    if (mine?.state !== 'joined') return
    if (this.phase === 'outgoing' && call.answeredAt) this.phase = 'connecting'
    const iOffer = (other: string) => other === call.callerId || (this.selfId !== call.callerId && this.selfId > other)
    for (const p of call.people) {
      if (p.userId === this.selfId || p.state !== 'joined' || !p.sessionId || this.#peers.has(p.sessionId)) continue
      if (!iOffer(p.userId)) continue
      const peer = await this.#peer(p.sessionId, p.userId, true)
      await peer.pc.setLocalDescription(await peer.pc.createOffer())
      this.#send(p.sessionId, { kind: 'offer', sdp: peer.pc.localDescription!.sdp })
    }
    for (const [session, peer] of this.#peers) if (!call.people.some((p) => p.sessionId === session && p.state === 'joined')) this.#drop(session, peer)
  }

  async #signal(fromUser: string, fromSession: string, data: CallSignal) {
    let peer = this.#peers.get(fromSession)
    if (data.kind === 'offer') {
      peer ??= await this.#peer(fromSession, fromUser, false)
      await peer.pc.setRemoteDescription({ type: 'offer', sdp: data.sdp })
      for (const c of peer.early.splice(0)) await peer.pc.addIceCandidate(c).catch(() => undefined)
      await peer.pc.setLocalDescription(await peer.pc.createAnswer())
      this.#send(fromSession, { kind: 'answer', sdp: peer.pc.localDescription!.sdp })
    } else if (data.kind === 'answer' && peer) {
      await peer.pc.setRemoteDescription({ type: 'answer', sdp: data.sdp })
      for (const c of peer.early.splice(0)) await peer.pc.addIceCandidate(c).catch(() => undefined)
    } else if (data.kind === 'ice' && peer) {
      if (!peer.pc.remoteDescription) peer.early.push(data.candidate)
      else await peer.pc.addIceCandidate(data.candidate).catch(() => undefined)
    }
  }

  async #peer(session: string, userId: string, initiator: boolean): Promise<Peer> {
    const pc = new RTCPeerConnection({ iceServers: this.#iceServers })
    const peer: Peer = { pc, userId, initiator, early: [] }
    this.#peers.set(session, peer)
    for (const track of this.local?.getTracks() ?? []) pc.addTrack(track, this.local!)
    this.#preferVp8(pc)
    pc.onicecandidate = (e) => {
      const c = e.candidate
      if (c) this.#send(session, { kind: 'ice', candidate: { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex, usernameFragment: c.usernameFragment } })
    }
    pc.ontrack = (e) => this.remote.set(session, e.streams[0] ?? new MediaStream([e.track]))
    pc.oniceconnectionstatechange = () => {
      const s = pc.iceConnectionState
      if (s === 'connected' || s === 'completed') {
        this.phase = 'connected'
        this.#startStats()
      } else if (s === 'disconnected' || s === 'failed') {
        this.phase = 'reconnecting'
        // The side that offered restarts ICE (the network changed, or a blip).
        if (peer.initiator && s === 'failed') void this.#restart(session, peer)
      }
    }
    return peer
  }

  async #restart(session: string, peer: Peer) {
    peer.pc.restartIce()
    await peer.pc.setLocalDescription(await peer.pc.createOffer({ iceRestart: true }))
    this.#send(session, { kind: 'offer', sdp: peer.pc.localDescription!.sdp })
  }

  /** VP8 first (every browser decodes it), then whatever else the browser offers (VP9, H.264). */
  #preferVp8(pc: RTCPeerConnection) {
    const caps = RTCRtpReceiver.getCapabilities?.('video')
    if (!caps) return
    const codecs = [...caps.codecs].sort((a, b) => Number(b.mimeType === 'video/VP8') - Number(a.mimeType === 'video/VP8'))
    for (const t of pc.getTransceivers()) if (t.sender.track?.kind === 'video') t.setCodecPreferences(codecs)
  }

  #send(toSession: string, data: CallSignal) {
    if (this.call) this.io.send({ type: 'call-signal', callId: this.call.callId, toSession, data })
  }

  #sendMedia() {
    if (this.call) this.io.send({ type: 'call-media', callId: this.call.callId, audio: !this.muted, video: !this.cameraOff })
  }

  async #media(video: boolean): Promise<boolean> {
    try {
      this.#iceServers = (await api<{ iceServers: RTCIceServer[] }>('/api/calls/ice-servers').catch(() => ({ iceServers: [] }))).iceServers
      this.local = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: video ? { facingMode: this.#facing, width: { ideal: 1280 }, height: { ideal: 720 } } : false,
      })
      return true
    } catch (e) {
      this.error = e instanceof Error ? e.message : String(e)
      if (this.call) this.io.send({ type: this.phase === 'outgoing' ? 'call-hangup' : 'call-decline', callId: this.call.callId })
      this.#finish('cancelled')
      return false
    }
  }

  // ---- quality ----

  #startStats() {
    if (this.#statsTimer) return
    this.#statsTimer = setInterval(() => void this.#readStats(), 2000)
  }

  async #readStats() {
    let rtt: number | null = null
    let lost = 0
    let received = 0
    let bytes = 0
    for (const { pc } of this.#peers.values()) {
      const stats = await pc.getStats()
      stats.forEach((s: Record<string, unknown>) => {
        if (s.type === 'candidate-pair' && s.nominated && typeof s.currentRoundTripTime === 'number') rtt = Math.max(rtt ?? 0, s.currentRoundTripTime * 1000)
        if (s.type === 'inbound-rtp') {
          lost += Number(s.packetsLost ?? 0)
          received += Number(s.packetsReceived ?? 0)
          bytes += Number(s.bytesReceived ?? 0)
        }
      })
    }
    const now = performance.now()
    const kbps = this.#lastBytes.at ? ((bytes - this.#lastBytes.bytes) * 8) / (now - this.#lastBytes.at) : null
    this.#lastBytes = { at: now, bytes }
    this.quality = { rttMs: rtt, lossPct: received + lost > 0 ? (100 * lost) / (received + lost) : null, kbps }
  }

  // ---- tidy up ----

  /** Out of a conversation (removed, or left on another device): its call stops ringing or talking here. */
  leftConversation(conversationId: string) {
    if (this.call?.conversationId === conversationId && this.phase !== 'idle' && this.phase !== 'ended') this.#finish('removed')
  }

  #drop(session: string, peer: Peer) {
    peer.pc.close()
    this.#peers.delete(session)
    this.remote.delete(session)
  }

  #finish(reason: CallEndReason) {
    for (const [session, peer] of this.#peers) this.#drop(session, peer)
    for (const t of this.local?.getTracks() ?? []) t.stop()
    this.local = null
    if (this.#statsTimer) clearInterval(this.#statsTimer)
    this.#statsTimer = null
    this.endReason = reason
    this.phase = 'ended'
  }

  #reset() {
    this.phase = 'idle'
    this.call = null
    this.endReason = null
    this.error = null
    this.muted = false
    this.cameraOff = false
    this.quality = { rttMs: null, lossPct: null, kbps: null }
    this.#lastBytes = { at: 0, bytes: 0 }
  }
}
