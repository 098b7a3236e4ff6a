-- The relay each delivery attempt went through (smtp.relays): the one that answered, or
-- the one tried last when none took the message. NULL for attempts made before relays
-- were recorded, and for attempts that reached no relay (every recipient suppressed).
ALTER TABLE email_attempts ADD COLUMN relay text;
