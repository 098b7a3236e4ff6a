-- One email per transaction, as mailroom's create does: the message and its delivery
-- state in one statement, RETURNING included.
WITH message AS (
  INSERT INTO email_messages (email_id, address_from, address_to, subject, message, html, idempotency_key)
  VALUES (gen_random_uuid(), 'bench@example.com', 'rcpt' || :client_id || '@example.com',
          'pgbench ' || :client_id,
          'Hello, this is a message of the mailroom benchmark. Your order has shipped and will arrive within three working days. Track it in your account; reply to this email if anything is missing. Thank you for shopping with us.',
          NULL, NULL)
  RETURNING email_id, created_at)
INSERT INTO email_deliveries (email_id, message_created_at) SELECT email_id, created_at FROM message
RETURNING email_id, status, (SELECT created_at FROM message);
