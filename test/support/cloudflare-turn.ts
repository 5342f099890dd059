// Cloudflare Realtime TURN's credential call as its documentation shows it, answered in Node by
// the test pool's outbound service (the real one is on the internet, which tests never reach).
export const TURN_KEY = { id: 'test-turn-key', token: 'test-turn-token' }

export async function cloudflareTurn(request: Request): Promise<Response> {
  const url = new URL(request.url)
  if (request.method !== 'POST' || url.pathname !== `/v1/turn/keys/${TURN_KEY.id}/credentials/generate-ice-servers`) return new Response('not found', { status: 404 })
  if (request.headers.get('authorization') !== `Bearer ${TURN_KEY.token}`) return Response.json({ error: 'unauthorized' }, { status: 401 })
  const { ttl } = (await request.json()) as { ttl?: number }
  if (typeof ttl !== 'number' || ttl <= 0 || ttl > 172_800) return Response.json({ error: 'ttl must be between 1 s and 48 h' }, { status: 400 })
  return Response.json(
    {
      iceServers: [
        {
          urls: [
            'stun:stun.cloudflare.com:3478',
            'stun:stun.cloudflare.com:53',
            'turn:turn.cloudflare.com:3478?transport=udp',
            'turn:turn.cloudflare.com:53?transport=udp',
            'turn:turn.cloudflare.com:3478?transport=tcp',
            'turn:turn.cloudflare.com:80?transport=tcp',
            'turns:turn.cloudflare.com:5349?transport=tcp',
            'turns:turn.cloudflare.com:443?transport=tcp',
          ],
          username: `minted-${ttl}`,
          credential: crypto.randomUUID(),
        },
      ],
    },
    { status: 201 },
  )
}
