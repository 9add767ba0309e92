"""The pods' ``portforward`` subresource over the websocket protocol the official client speaks.

As the kubelet serves it (``v4.channel.k8s.io``, or the unversioned ``channel.k8s.io``):
each requested port ``i`` has a data channel ``2*i`` and an error channel ``2*i+1``;
every binary message starts with its channel byte; the server opens both channels of a
port with a frame holding the port number (2 bytes, little-endian). Data frames from the
client are written to ``podIP:port`` over TCP and what comes back is sent on the data
channel. A port nothing listens on gets a message on its error channel (the client then
closes that port's socket). When every pod-side connection has ended the websocket is
closed; when the client closes it, every pod-side connection is closed.

One difference from a cluster: the kubelet dials ``localhost`` inside the pod's network
namespace; pods here share the host's loopback, so the double dials the pod's own
address (``status.podIP``, 127.R.S.N). A pod must listen on its pod IP (or 0.0.0.0).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

__all__ = ["PROTOCOLS", "serve"]

PROTOCOLS = ("v4.channel.k8s.io", "channel.k8s.io")


async def _pump(reader: asyncio.StreamReader, ws: web.WebSocketResponse, channel: int) -> None:
    try:
        while data := await reader.read(256 * 1024):
            await ws.send_bytes(bytes([channel]) + data)
    except (ConnectionError, RuntimeError):
        pass


async def serve(request: web.Request, pod_ip: str, ports: list[int], pod: str, uid: str
                ) -> web.WebSocketResponse:
    """Relay one port-forward websocket to the pod's ports until either side ends."""
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps: list[asyncio.Task[None]] = []
    for i, port in enumerate(ports):
        head = port.to_bytes(2, "little")
        await ws.send_bytes(bytes([2 * i]) + head)
        await ws.send_bytes(bytes([2 * i + 1]) + head)
        try:
            reader, writer = await asyncio.open_connection(pod_ip, port)
        except OSError as exc:
            reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
            await ws.send_bytes(bytes([2 * i + 1]) + (
                f"error forwarding port {port} to pod {pod}, uid {uid}: failed to connect to "
                f"localhost:{port} inside namespace: dial tcp4 {pod_ip}:{port}: connect: "
                f"{reason}").encode())
            continue
        writers[i] = writer
        pumps.append(asyncio.create_task(_pump(reader, ws, 2 * i)))

    async def close_when_pods_end() -> None:
        if pumps:
            await asyncio.gather(*pumps)
        await ws.close()

    closer = asyncio.create_task(close_when_pods_end())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or len(msg.data) < 1:
                continue
            channel, data = msg.data[0], msg.data[1:]
            target = writers.get(channel // 2) if channel % 2 == 0 else None
            if target is not None and data and not target.is_closing():
                target.write(data)
                with contextlib.suppress(ConnectionError):
                    await target.drain()
    finally:
        for writer in writers.values():
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        for task in [*pumps, closer]:
            task.cancel()
        await asyncio.gather(*pumps, closer, return_exceptions=True)
        await ws.close()
    return ws
