"""anyio shells that drive the sans-I/O engines of `ringkit.proto` through a transport.

- `ringkit._async.channel`  `FrontRingChannel` / `BackRingChannel`: object streams of ring slots
- `ringkit._async.stream`   `PipeStream`: a byte stream over a console-style byte ring

Private: drivers import these from `ringkit.channel` (or `ringkit.device`).
"""
