"""schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

A batch is valid only when every one of its emails is, and generated addresses,
attachments and headers are rarely valid (a JSON schema cannot say what RFC 5322
allows): left alone, nearly every generated batch is refused and the batch's own logic
is never reached (schemathesis' `validation_mismatch` warning). POST /api/v1/email
fuzzes those fields one email at a time; here each generated email keeps its subject,
bodies, tags and time, and gets valid addresses, so the batch handling is what gets
fuzzed.

Template names are unique, and a template keeps its name: a generated name that is well
formed is made unique for POST /api/v1/templates (else nearly every save after the
first is a 409), and is the fixture's own for PUT (else every change is a rename, a
400). Malformed names are left as generated, for the checks of names.

A bounce report is a raw message (`message/rfc822`) that a JSON schema cannot describe:
generated text alone is nearly always refused as not a report. Here it goes into the
fields of a well-formed delivery status notification (the recipient, its status and
diagnostic, the returned Message-ID), so what gets fuzzed is the reading of reports.
"""

import re
import uuid

import schemathesis

# POST /api/v1/bounces takes a raw message: generated text goes as it is.
schemathesis.serializer.alias("message/rfc822", "text/plain")

BATCH = ("POST", "/api/v1/email/batch")
KEPT = ("subject", "message", "html", "tags", "scheduledAt")
BOUNCES = ("POST", "/api/v1/bounces")
SAVE_TEMPLATE = ("POST", "/api/v1/templates")
CHANGE_TEMPLATE = ("PUT", "/api/v1/templates/{idOrName}")
# scripts/fuzz.sh makes it, and scripts/schemathesis.toml points PUT at it.
FIXTURE_TEMPLATE = "welcome"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def report_with(text):
    """A DSN about one recipient, with the generated text in its fields."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return text
    return (
        "From: MAILER-DAEMON@mx.example\r\nTo: bounces@acme.example\r\n"
        "Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example\r\n\r\n"
        f"Final-Recipient: rfc822; {text or 'nobody'}@x.example\r\nAction: failed\r\n"
        f"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 {text}\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{text}@acme.example>\r\nSubject: {text}\r\n"
        "--b--\r\n"
    )


def template_body(key, body):
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return body
    if not NAME.fullmatch(body["name"]):
        return body
    if key == SAVE_TEMPLATE:
        return {**body, "name": body["name"][:50] + "-" + uuid.uuid4().hex[:8]}
    return {**body, "name": FIXTURE_TEMPLATE}


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is None:
        return body
    key = (operation.method.upper(), operation.path)
    if key == BOUNCES:
        return report_with(body)
    if key in (SAVE_TEMPLATE, CHANGE_TEMPLATE):
        return template_body(key, body)
    if key != BATCH:
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
