#!/usr/bin/env python3
"""A tiny SMTP relay for trying suppression by hand: it takes every message, except that
it refuses RCPT TO of any address whose local part starts with "nobody" with
`550 5.1.1 ... User unknown`, as a real relay refuses a mailbox that does not exist.

    scripts/refusing-relay.py [PORT]       # default 2525, on 127.0.0.1 only

Each message taken is printed (envelope and size). Standard library only; not for
production: it keeps nothing and speaks no TLS.
"""

import asyncio
import sys


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    def reply(line: str) -> None:
        writer.write((line + "\r\n").encode())

    reply("220 refusing-relay ESMTP")
    sender, recipients = None, []
    while True:
        raw = await reader.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip("\r\n")
        verb = line[:4].upper()
        if verb in ("EHLO", "HELO"):
            reply("250-refusing-relay" if verb == "EHLO" else "250 refusing-relay")
            if verb == "EHLO":
                reply("250 8BITMIME")
        elif verb == "MAIL":
            sender, recipients = line[10:].strip(), []
            reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            address = line[8:].strip().strip("<>").split(">")[0]
            if address.lower().startswith("nobody"):
                reply(f"550 5.1.1 <{address}>: Recipient address rejected: User unknown")
            else:
                recipients.append(address)
                reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if not recipients:
                reply("554 5.5.1 No valid recipients")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            await writer.drain()
            size = 0
            while True:
                chunk = await reader.readline()
                if not chunk or chunk in (b".\r\n", b".\n"):
                    break
                size += len(chunk)
            print(f"took a message from {sender} to {', '.join(recipients)} ({size} bytes)",
                  flush=True)
            reply("250 2.0.0 Ok: queued")
        elif verb == "RSET":
            sender, recipients = None, []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            await writer.drain()
            break
        else:
            reply("502 5.5.2 Command not recognized")
        await writer.drain()
    writer.close()


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2525
    server = await asyncio.start_server(session, "127.0.0.1", port)
    print(f"refusing-relay: listening on 127.0.0.1:{port}; refusing nobody*@…", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
