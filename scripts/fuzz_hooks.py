"""schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

A batch is valid only when every one of its emails is, and generated addresses,
attachments and headers are rarely valid (a JSON schema cannot say what RFC 5322
allows): left alone, nearly every generated batch is refused and the batch's own logic
is never reached (schemathesis' `validation_mismatch` warning). POST /api/v1/email
fuzzes those fields one email at a time; here each generated email keeps its subject,
bodies, tags and time, and gets valid addresses, so the batch handling is what gets
fuzzed.
"""

import schemathesis

BATCH = ("POST", "/api/v1/email/batch")
KEPT = ("subject", "message", "html", "tags", "scheduledAt")


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != BATCH:
        return body
    if not isinstance(body, dict) or not isinstance(body.get("emails"), list):
        return body
    emails = []
    for email in body["emails"]:
        if not isinstance(email, dict):
            emails.append(email)
            continue
        kept = {name: email[name] for name in KEPT if name in email}
        emails.append({"from": "Fuzz <fuzz@example.com>", "to": "alice@example.com", **kept})
    return {**body, "emails": emails}
