"""The two front doors of a stream and what they share.

A stream request reaches the hub through one of two doors: the fast path
(`ssehub.fast`, ``ssehub serve``'s default: the socket itself) or the portable path
(`ssehub.front.portable`, an ASGI application under any server, which notices a client
leaving with `ssehub.front.watch`). Both check a request with `ssehub.front.checks`,
answer refusals with `ssehub.front.answers`, hold frames until their response head is
out with `ssehub.front.hold`, write at the end of the loop step with
`ssehub.front.writes`, and, under ``ssehub serve``, read HTTP/1.x with
`ssehub.front.http1`, uvicorn's protocol with the corrections the conformance suite
asks for.
"""
