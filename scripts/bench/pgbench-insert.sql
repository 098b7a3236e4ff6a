-- One email per transaction, as mailroom's create does (RETURNING included).
INSERT INTO emails (email_id, address_from, address_to, subject, message, html, idempotency_key)
VALUES (gen_random_uuid(), 'bench@example.com', 'rcpt' || :client_id || '@example.com',
        'pgbench ' || :client_id,
        'Hello, this is a message of the mailroom benchmark. Your order has shipped and will arrive within three working days. Track it in your account; reply to this email if anything is missing. Thank you for shopping with us.',
        NULL, NULL)
RETURNING email_id, status, created_at;
