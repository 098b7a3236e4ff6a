#!/usr/bin/python3
"""Verifies the DKIM signature of a message with dkimpy, an implementation independent
of mailroom's, for the signing tests.

    dkim-verify.py MESSAGE_FILE RECORD_NAME RECORD_VALUE

RECORD_NAME and RECORD_VALUE are the TXT record `mailroom dkim generate` printed (the
value with its quotes removed and its chunks joined); dkimpy asks for it instead of DNS.
Prints the signed header names and exits 0 when the signature verifies, 1 when not.
Run with Debian's python3 (python3-dkim, python3-nacl; scripts/test-tools.sh).
"""

import re
import sys

import dkim


def main() -> int:
    path, name, value = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(path, "rb") as f:
        message = f.read()

    def dns(qname: bytes, timeout: int = 5) -> bytes:
        asked = qname.decode().rstrip(".")
        if asked != name.rstrip("."):
            print(f"unexpected DNS query for {asked}", file=sys.stderr)
            return b""
        return value.encode()

    verifier = dkim.DKIM(message)
    ok = verifier.verify(dnsfunc=dns)
    signature = dict(verifier.signature_fields or {})
    # Tag values may be folded (white space around h='s colons); print them unfolded.
    print("h=" + re.sub(rb"\s+", b"", signature.get(b"h", b"")).decode())
    print("a=" + signature.get(b"a", b"").decode())
    print("c=" + signature.get(b"c", b"").decode())
    if not ok:
        print("signature does not verify", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
